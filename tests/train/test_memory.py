"""Where a stage's memory goes (pojax.train.memory, workdir/memory.json): the train state's bytes
equal the parameter count (counted here from the Llama layout) times 4 bytes, times 2 more for
AdamW's moments; and the compiled step's temporaries stay within the gradients plus the saved
activations plus a small constant, i.e. the optimizer update, the gradient clip and the
non-finite guard write the donated state in place."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pojax.data import gym as gym_lib
from pojax.train.memory import CompiledStep, compiled_memory, tree_bytes
from pojax.train.run import run_train
from tests.train.helpers import quick_config

D, L, F, H = 512, 4, 1376, 8  # wide layers, short rows: the parameters dominate the step's memory
MiB = 2**20


def llama_params(vocab: int, d: int, layers: int, f: int) -> int:
    """Parameters of a Llama with as many key/value heads as query heads, untied head."""
    per_layer = 4 * d * d + 3 * d * f + 2 * d  # q, k, v, o; gate, up, down; two RMSNorms
    return 2 * vocab * d + layers * per_layer + d


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("memory")
    config = quick_config(**{"train.sft_steps": 0, "train.max_steps": 1, "model.hidden_size": D, "model.num_layers": L,
                             "model.intermediate_size": F, "model.num_heads": H, "model.num_kv_heads": H,
                             "train.batch_size": 2, "eval.num_examples": 0, "logging.plots": False,
                             "train.export_final": False, "data.gym.num_eval": 8, "eval.num_samples": 0})
    run_train(config, str(workdir))
    gym = gym_lib.from_config(config)
    rows = gym_lib.training_rows(gym, "paired", 0, 2)
    with open(workdir / "memory.json") as f:
        return json.load(f)["train"], config, gym.vocab_size, rows["chosen_ids"].shape


def test_state_bytes_are_the_parameter_count(report):
    rep, _, vocab, _ = report
    d = rep["device"]
    params = 4 * llama_params(vocab, D, L, F)
    assert d["params"] == params and d["reference"] >= params
    assert 2 * params <= d["opt_state"] <= 2 * params + 1024  # mu, nu (+ the step counter, the learning rate)
    assert d["step_arguments"] >= d["params"] + d["opt_state"] + d["reference"]
    assert 0 <= d["step_aliased"] - d["params"] - d["opt_state"] <= 64  # the whole state (+ its step counter) in place
    assert d["step_peak"] == d["step_arguments"] + d["step_outputs"] - d["step_aliased"] + d["step_temporaries"]
    assert rep["host"]["rss"] > 0 and rep["host"]["live_arrays"] >= d["params"] + d["opt_state"] + d["reference"]


def test_step_temporaries_are_gradients_plus_activations(report):
    rep, config, vocab, (batch, length) = report
    d = rep["device"]
    grads = d["params"]
    rows = 2 * batch  # chosen and rejected rows through the policy (the reference saves nothing)
    per_token = L * (12 * D + 3 * F + 2 * H * length) + 2 * vocab  # saved per layer (generous), logits
    activations = 4 * rows * length * per_token
    bound = grads + activations + 4 * MiB
    # before the in-place update: gradients + a copy of both moments (+ the clipped gradients)
    assert d["step_temporaries"] <= bound, (d["step_temporaries"] / MiB, grads / MiB, activations / MiB)
    assert activations + 4 * MiB < grads  # the bound could catch one more parameter-sized buffer


def test_compiled_step_compiles_once_per_shape_and_computes_what_jit_computes():
    f = jax.jit(lambda x, y: (x * 2 + y.sum(), y.mean()))
    step = CompiledStep(f)
    a, b = jnp.ones((3,)), jnp.arange(4.0)
    for x, y in ((a, b), (a + 1, b), (jnp.ones((5,)), b)):
        got, want = step(x, y), f(x, y)
        assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert len(step.executables) == 2
    mem = compiled_memory(step.compiled)
    assert mem["arguments"] == 4 * (3 + 4)
    assert 4 * (3 + 1) <= mem["outputs"] <= 4 * (3 + 1) + 2 * 8  # (+ XLA:CPU's table of the 2 output pointers)
    assert tree_bytes({"a": a, "b": [b, 1.0]}) == 4 * 7


def test_bfloat16_reference_and_first_moment_halve_their_bytes(tmp_path):
    config = quick_config(**{"train.sft_steps": 0, "train.max_steps": 1, "eval.num_examples": 0, "logging.plots": False,
                             "train.export_final": False, "data.gym.num_eval": 8, "eval.num_samples": 0,
                             "reference.dtype": "bfloat16", "optimizer.mu_dtype": "bfloat16"})
    run_train(config, str(tmp_path))
    d = json.loads((tmp_path / "memory.json").read_text())["train"]["device"]
    params = d["params"]
    assert params // 2 <= d["reference"] <= params // 2 + 64 * 1024  # (+ the RoPE tables, kept as they are)
    assert params * 3 // 2 <= d["opt_state"] <= params * 3 // 2 + 1024  # mu in bfloat16, nu in float32
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(np.log(2), abs=2e-3)  # policy = reference up to bfloat16 rounding


@pytest.mark.parametrize("key,value,mode", [("reference.dtype", "bfloat16", "precomputed"),
                                            ("reference.dtype", "int8", "copy"), ("optimizer.mu_dtype", "fp8", "copy")])
def test_memory_options_are_checked(key, value, mode):
    from pojax.config import ConfigError, validate

    config = quick_config(**{key: value, "reference.mode": mode})
    with pytest.raises(ConfigError, match=key):
        validate(config)


def test_offloaded_optimizer_state_resumes_and_trains_like_the_device_one(tmp_path):
    """optimizer.offload: a run checkpointed with its optimizer state on the device resumes with the
    state in host memory (pinned_host) and computes the same step as the uninterrupted run."""
    import shutil

    base = {"train.sft_steps": 0, "train.max_steps": 3, "eval.num_examples": 0, "logging.plots": False,
            "train.export_final": False, "data.gym.num_eval": 8, "eval.num_samples": 0, "checkpoint.every_steps": 1,
            "checkpoint.keep": 5, "optimizer.schedule": "constant"}
    run_train(quick_config(**base), str(tmp_path))
    first = (tmp_path / "metrics.jsonl").read_text().splitlines()
    shutil.rmtree(tmp_path / "checkpoints" / "train" / "3")  # as if killed after step 2's checkpoint
    run_train(quick_config(**dict(base, **{"optimizer.offload": True})), str(tmp_path))
    again = (tmp_path / "metrics.jsonl").read_text().splitlines()
    drop = lambda line: {k: v for k, v in json.loads(line).items() if k not in ("step_time_s", "tokens_per_s")}
    assert [drop(x) for x in again] == [drop(x) for x in first]
    d = json.loads((tmp_path / "memory.json").read_text())["train"]["device"]
    assert d["opt_state_memory_kind"] == "pinned_host"


def test_remat_without_scan_recomputes_one_layer_at_a_time(tmp_path):
    """model.remat=full on unrolled layers (pojax.models.remat): XLA must not run every layer's
    recomputation (or keep every layer's activations for the weight gradients) before the backward
    pass reaches it. The step's temporaries stay within the gradients, each layer's saved input and
    ONE layer's activations; nnx.remat alone measured 46.6 MiB here, all six layers' activations."""
    d_model, layers, f, heads, prompt, response = 64, 6, 256, 4, 96, 96
    config = quick_config(**{"train.sft_steps": 0, "train.max_steps": 1, "model.hidden_size": d_model,
                             "model.num_layers": layers, "model.intermediate_size": f, "model.num_heads": heads,
                             "model.num_kv_heads": 2, "train.batch_size": 2, "eval.num_examples": 0,
                             "logging.plots": False, "train.export_final": False, "data.gym.num_eval": 8,
                             "eval.num_samples": 0, "data.gym.prompt_len": prompt, "data.gym.response_len": response,
                             "model.remat": "full"})
    results = run_train(config, str(tmp_path))
    assert not [k for k in results if k.startswith("gold_")]  # eval.num_samples = 0: nothing sampled
    d = json.loads((tmp_path / "memory.json").read_text())["train"]["device"]
    rows, length = 2 * 2, 2 * (prompt + response)  # chosen and rejected rows (generous: a prompt and both answers)
    vocab = gym_lib.from_config(config).vocab_size
    saved_inputs = 4 * layers * rows * length * d_model
    one_layer = 4 * rows * length * (12 * d_model + 3 * f + 2 * heads * length)
    bound = d["params"] + saved_inputs + one_layer + 4 * rows * length * 2 * vocab + 4 * MiB
    assert d["step_temporaries"] <= bound, (d["step_temporaries"] / MiB, bound / MiB)
    assert bound < d["params"] + saved_inputs + 2 * one_layer  # and the bound excludes a second layer's activations
