"""configs/dpo.py and configs/kto.py on a Hugging Face model directory (a tiny random Llama plus
a word-level tokenizer with a chat template, saved in the upstream layout) and JSONL rows in
TRL's columns: 2 steps each, starting at the reference loss, with a held-out evaluation."""
import json
import math

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from pojax.config import validate
from pojax.train.run import run_train
from tests.data.tokenizer_fixture import WORDS
from tests.train.helpers import read_jsonl, recipe, rows


SMALL = {"model.dtype": "float32", "train.max_steps": 2, "train.batch_size": 8, "eval.num_examples": 8,
         "data.max_prompt_length": 16, "data.max_completion_length": 8, "logging.progress": False,
         "likelihood.chunk_size": 16}


@pytest.mark.parametrize(("name", "kind", "first_loss"), [("dpo", "paired", math.log(2)), ("kto", "unpaired", 0.5)])
def test_recipe_runs_two_steps_on_hf_model_and_jsonl(hf_dir, tmp_path, name, kind, first_loss):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(kind)))
    config = recipe(name, **SMALL, **{"model.path": hf_dir, "data.path": str(data)})
    validate(config)
    results = run_train(config, str(tmp_path / "run"))
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    np.testing.assert_allclose(metrics[0]["loss"], first_loss, atol=1e-5)
    assert results["eval_num_examples"] == 8 and "eval_loss" in results
    if kind == "paired":
        assert "eval_rewards/accuracies" in results
    # the final policy is a Hugging Face checkpoint (weights + tokenizer) that transformers loads
    final = tmp_path / "run" / "final"
    hf = LlamaForCausalLM.from_pretrained(final).eval()
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(final).convert_tokens_to_ids("good") == WORDS.index("good")
    from pojax.models import from_pretrained

    ids = np.arange(12, dtype=np.int32).reshape(2, 6) % len(WORDS)
    with torch.no_grad():
        want = hf(torch.as_tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(from_pretrained(str(final))(ids)), want, atol=1e-5)


def test_file_data_errors(hf_dir, tmp_path):
    from pojax.config import ConfigError
    from pojax.data.formats import DataError

    with pytest.raises(ConfigError, match="config key data.path"):
        run_train(recipe("dpo", **SMALL, **{"model.path": hf_dir}), str(tmp_path))
    with pytest.raises(DataError, match=r"missing_dir: no such file or directory$"):
        run_train(recipe("dpo", **SMALL, **{"model.path": hf_dir, "data.format": "hh_rlhf",
                                            "data.path": str(tmp_path / "missing_dir")}), str(tmp_path))


def test_step_level_pairs_train_like_paired_rows(hf_dir, tmp_path):
    """Step-level rows (shared prefix + chosen/rejected step) train as pairs whose prompt ends
    with the prefix; the first loss is log 2."""
    data = tmp_path / "steps.jsonl"
    step_rows = [{"prompt": "2+2?", "prefix": "hi" if i % 2 else "", "chosen_step": "4", "rejected_step": "5 no"}
                 for i in range(20)]
    data.write_text("".join(json.dumps(r) + "\n" for r in step_rows))
    config = recipe("dpo", **SMALL, **{"model.path": hf_dir, "data.path": str(data), "data.format": "step",
                                       "train.export_final": False})
    validate(config)
    run_train(config, str(tmp_path / "run"))
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    np.testing.assert_allclose(metrics[0]["loss"], math.log(2), atol=1e-5)


def test_ranked_rows_train_a_listwise_loss(hf_dir, tmp_path):
    """Ranked rows (K = 2 or 3 completions with scores: ragged, padded to 3 with rank_mask) train
    plackett_luce from configs/dpo.py. One batch holds every row, so the first loss (all implicit
    rewards 0 at policy = reference) is the mean of log 2! and log 3!, by hand."""
    data = tmp_path / "ranked.jsonl"
    ranked = [{"prompt": "2+2?", "completions": ["4", "5 no", "go away"][: 2 + i % 2], "scores": [3.0, 1.0, 0.0][: 2 + i % 2]}
              for i in range(20)]
    data.write_text("".join(json.dumps(r) + "\n" for r in ranked))
    config = recipe("dpo", **{**SMALL, "model.path": hf_dir, "data.path": str(data), "data.format": "ranked",
                              "loss.name": "plackett_luce", "train.export_final": False, "train.batch_size": 20,
                              "eval.num_examples": 0})
    validate(config)
    run_train(config, str(tmp_path / "run"))
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2] and all(math.isfinite(m["loss"]) for m in metrics)
    np.testing.assert_allclose(metrics[0]["loss"], (math.log(2) + math.log(6)) / 2, atol=1e-5)


def test_paired_rows_train_an_unpaired_loss(hf_dir, tmp_path):
    """configs/kto.py on paired rows (the ELBO-KTO paper's UltraFeedback-binarized setting): each
    pair becomes a desirable chosen row and an undesirable rejected row (TRL's
    unpair_preference_dataset), so there are twice as many rows, half of them desirable, and
    the first KTO loss is 0.5 (policy = reference, z0 = 0)."""
    from pojax.data.formats import unpair
    from pojax.train.data import file_data, row_format
    from transformers import AutoTokenizer

    pairs = rows("paired", n=20)
    got = unpair([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs])
    assert [r["label"] for r in got] == [True] * 20 + [False] * 20  # TRL's order: every chosen, then every rejected
    assert got[0]["completion"] == "good yes" and got[20]["completion"] == "bad no go away"
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pairs))
    config = recipe("kto", **SMALL, **{"model.path": hf_dir, "data.path": str(data), "data.format": "paired",
                                       "train.export_final": False})
    validate(config)
    assert row_format(config) == "unpaired"
    d = file_data(config, AutoTokenizer.from_pretrained(hf_dir))
    labels = np.concatenate([d.preference["label"], d.held_out["label"]])
    assert len(labels) == 40 and labels.sum() == 20 and "kl_ids" in d.preference
    run_train(config, str(tmp_path / "run"))
    np.testing.assert_allclose(read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]["loss"], 0.5, atol=1e-5)


def _gemma3(vocab):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=6, max_position_embeddings=64,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}))


def _olmo2(vocab):
    from transformers import Olmo2Config, Olmo2ForCausalLM

    return Olmo2ForCausalLM(Olmo2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def _phi3(vocab):
    from transformers import Phi3Config, Phi3ForCausalLM

    return Phi3ForCausalLM(Phi3Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      pad_token_id=0, partial_rotary_factor=0.75))


# Gemma 3 and Phi-3 (fused tensors written back by the export); OLMo 2 (_olmo2) is covered by the
# parity tests alone: its training path is the same code (CI time)
@pytest.mark.parametrize("family", [_gemma3, _phi3], ids=["gemma3_text", "phi3"])
def test_dpo_two_steps_on_a_tiny_model_of_each_newer_family(tmp_path, family):
    """configs/dpo.py on a random Gemma 3 text decoder (q/k norms, local and global RoPE bases,
    sandwich norms) and a random Phi-3 (fused qkv / gate_up tensors, partial rotary), saved by
    transformers: starts at log 2, exports the family's transformers class with pojax's logits."""
    from transformers import AutoTokenizer

    from pojax.models import from_pretrained
    from tests.data.tokenizer_fixture import make_tokenizer

    model_dir = tmp_path / "model"
    tok = make_tokenizer(model_dir)
    torch.manual_seed(0)
    source = family(len(tok))
    hf_cls = type(source)
    source.save_pretrained(model_dir)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows("paired")))
    config = recipe("dpo", **SMALL, **{"model.path": str(model_dir), "data.path": str(data)})
    run_train(config, str(tmp_path / "run"))
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    np.testing.assert_allclose(metrics[0]["loss"], math.log(2), atol=1e-5)
    final = tmp_path / "run" / "final"
    hf = hf_cls.from_pretrained(final).eval()
    assert len(AutoTokenizer.from_pretrained(final)) == len(tok)
    ids = np.arange(12, dtype=np.int32).reshape(2, 6) % len(tok)
    with torch.no_grad():
        want = hf(torch.as_tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(from_pretrained(str(final))(ids)), want, atol=1e-5)
