"""experiments/bench: the workload is what it says, the FLOP count matches XLA's own count of the
model's forward, and pojax and TRL do the same work (identical losses for three optimizer steps
from the same checkpoint and pairs) — what makes their timings comparable."""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.bench import compare, flops, workload

MICRO = workload.Workload("micro", hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64, vocab=64, pairs=2,
                          prompt_len=8, completion_len=8, learning_rate=1e-3)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return workload.prepare(MICRO, str(tmp_path_factory.mktemp("bench")))


def test_workload_files(files):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(files["model"])
    assert sum(p.numel() for p in model.parameters()) == MICRO.params()
    tok = AutoTokenizer.from_pretrained(files["model"])
    rows = [json.loads(line) for line in open(files["data"])]
    assert len(rows) == MICRO.pairs
    for row in rows:
        assert len(tok(row["prompt"])["input_ids"]) == MICRO.prompt_len
        for side in ("chosen", "rejected"):  # + the EOS every trainer appends
            assert len(tok(row[side], add_special_tokens=False)["input_ids"]) + 1 == MICRO.completion_len


def test_forward_flops_match_xla_cost_analysis(files):
    """2·P_mm·N + A (flops.py's forward terms) against XLA's count of the compiled forward."""
    from pojax.models.hf_io import from_pretrained

    model = from_pretrained(files["model"])
    seqs = 2 * MICRO.pairs
    ids = jnp.zeros((seqs, MICRO.seq_len), jnp.int32)
    from flax import nnx

    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    counted = fwd.lower(state, ids).compile().cost_analysis()
    counted = counted[0] if isinstance(counted, list) else counted
    attention = MICRO.layers * 4 * MICRO.seq_len ** 2 * MICRO.hidden * seqs
    ours = 2 * flops.matmul_params(MICRO) * seqs * MICRO.seq_len + attention
    # XLA also counts the elementwise work (norms, SiLU, softmax, RoPE): a few percent more
    assert ours <= counted["flops"] <= 1.25 * ours, (ours, counted["flops"])
    assert flops.dpo_step_flops(MICRO) == pytest.approx(4 * ours)


def test_pojax_step_flops_match_xla_cost_analysis():
    """pojax's own step (shared-prompt rows, head on completion slots, tiled-head recompute,
    attention in parts) against XLA's count of the compiled value_and_grad + reference forward."""
    from flax import nnx

    from pojax.models.config import ModelConfig
    from pojax.models.transformer import CausalLM
    from pojax.objectives import preference_loss

    w = MICRO
    cfg = ModelConfig(vocab_size=w.vocab, hidden_size=w.hidden, intermediate_size=w.intermediate,
                      num_hidden_layers=w.layers, num_attention_heads=w.heads, num_key_value_heads=w.kv_heads)
    policy, reference = CausalLM(cfg, rngs=nnx.Rngs(0)), CausalLM(cfg, rngs=nnx.Rngs(1))
    t = w.prompt_len + w.completion_len
    ids = jnp.asarray(np.random.default_rng(0).integers(4, w.vocab, (w.pairs, t)), jnp.int32)
    mask = jnp.broadcast_to(jnp.arange(t) >= w.prompt_len, (w.pairs, t))
    batch = {"chosen_ids": ids, "rejected_ids": ids.at[:, w.prompt_len:].add(1), "chosen_mask": mask,
             "rejected_mask": mask}
    graphdef, params, rest = nnx.split(policy, nnx.Param, ...)

    def loss(p, ref, b):
        return preference_loss(nnx.merge(graphdef, p, rest), ref, b, loss_name="sigmoid", hparams={"beta": 0.1},
                               completion_width=w.completion_len)[0]

    step = nnx.jit(jax.value_and_grad(loss))
    counted = step.lower(params, reference, batch).compile().cost_analysis()
    counted = counted[0] if isinstance(counted, list) else counted
    ours = flops.pojax_step_flops(w)
    assert ours <= counted["flops"] <= 1.3 * ours, (ours, counted["flops"])
    assert ours < 0.9 * flops.dpo_step_flops(w)


def test_pojax_and_trl_do_the_same_work(files, tmp_path):
    runs = {}
    for name in ("pojax", "trl"):
        out = str(tmp_path / f"{name}.json")
        r = compare.run_one(compare.command(name, sys.executable, MICRO, files, 3, out), out)
        assert "error" not in r, r.get("error")
        assert len(r["step_times"]) == 3 and r["peak_rss_gib"] > 0
        assert len(r["rss_between_steps_gib"]) == 2 and 0 < min(r["rss_between_steps_gib"]) <= r["peak_rss_gib"]
        if name == "pojax":  # its peak as the checkpoint save after the last step begins
            assert 0 < r["peak_rss_steps_gib"] <= r["peak_rss_gib"]
        runs[name] = r["losses"]
    np.testing.assert_allclose(runs["pojax"][0], np.log(2), atol=1e-6)  # policy = reference
    assert runs["pojax"][2] < runs["pojax"][0] - 0.01  # it trains
    np.testing.assert_allclose(runs["pojax"], runs["trl"], atol=2e-4)


def test_summary_and_table():
    runs = [{"step_times": [9.0, 1.0, 2.0, 3.0], "losses": [0.69, 0.5], "peak_rss_gib": 1.0},
            {"step_times": [9.0, 2.0, 4.0, 6.0], "losses": [0.69, 0.5], "peak_rss_gib": 2.0}]
    s = compare.summarize(runs, MICRO, warmup=1)
    assert s["rounds"] == [2.0, 4.0] and s["s_per_step"] == 3.0 and s["peak_rss_gib"] == 2.0
    assert s["tokens_per_s"] == pytest.approx(2 * MICRO.pairs * MICRO.seq_len / 3.0)
    assert "error" in compare.summarize([{"error": "boom"}], MICRO, warmup=1)
    s["pojax_speedup"] = 1.0
    result = {"workload": MICRO.__dict__, "hardware": "cpu", "rounds": 2, "steps": 4, "warmup": 1, "step_gflop": 1.0,
              "matmul_gflops": 10.0, "floor_s_per_step": 0.1, "pojax_step_gflop": 0.75,
              "frameworks": {"pojax": s, "trl": {"error": "x\nno"}}}
    table = compare.markdown(result)
    assert "| pojax | 3.000 |" in table and "30.00" in table and "failed: no" in table
    assert "0.8 GFLOP/step, 75% of the model FLOPs" in table and "floor 0.075 s/step" in table


def test_unknown_peer_is_a_usage_error():
    from absl import app

    with pytest.raises(app.UsageError, match="--peer=vllm"):
        compare.parse_peer("vllm")
    assert compare.parse_peer("tunix:/opt/py") == ("tunix", "/opt/py")
    assert os.path.exists(compare.PEER_SCRIPTS["trl"])


def test_tied_workload_counts_the_embedding_once(tmp_path):
    from transformers import AutoModelForCausalLM

    tied = workload.Workload("micro_tied", hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64, vocab=64, pairs=2,
                             prompt_len=8, completion_len=8, tied=True)
    paths = workload.prepare(tied, str(tmp_path))
    model = AutoModelForCausalLM.from_pretrained(paths["model"])
    assert model.config.tie_word_embeddings and sum(p.numel() for p in model.parameters()) == tied.params()
    assert tied.params() == MICRO.params() - 64 * 32


def test_memory_bench_run_specs_and_summary():
    from experiments.bench import memory

    assert memory.parse_run("pojax@/opt/py:--config.model.remat=full,--config.reference.dtype=bfloat16") == (
        "pojax", "/opt/py", ["--config.model.remat=full", "--config.reference.dtype=bfloat16"])
    assert memory.parse_run("trl") == ("trl", sys.executable, [])
    g = 2**30
    # the sampled peak (5 GiB) beats the runner's own (4.5); between steps: the runner's readings
    run = {"step_times": [2.0, 1.0, 1.0], "losses": [0.69, 0.5, 0.4], "peak_rss_gib": 4.5,
           "rss": [(1.0, 1 * g), (7.0, 2 * g), (8.5, 3 * g), (9.0, 5 * g), (10.0, 4 * g)],
           "rss_between_steps_gib": [3.5, 3.25]}
    s = memory.summarize(run)
    assert s == {"s_per_step": 1.0, "loss_first": 0.69, "peak_rss_gib": 5.0, "peak_rss_steps_gib": 5.0,
                 "idle_rss_gib": 3.25}
    # pojax's runner reports its peak before the final checkpoint save: training's peak
    s = memory.summarize(dict(run, peak_rss_steps_gib=4.0, rss_between_steps_gib=[]))
    assert s["peak_rss_steps_gib"] == 4.0 and s["peak_rss_gib"] == 5.0 and s["idle_rss_gib"] is None
    mem = {"device": {"params": 4 * g, "opt_state": 8 * g, "reference": 4 * g, "step_temporaries": 5 * g,
                      "step_peak": 21 * g}, "host": {"live_arrays": 16 * g, "rss": 18 * g}}
    rows = dict(memory.accounting(mem))
    assert rows["activations and other step temporaries"] == 1.0 and rows["host-side (RSS − live arrays)"] == 2.0
