"""configs/diffpo_llama3_8b_ultrafeedback.py for 2 steps on a tiny random Llama in the Hugging Face
layout, with UltraFeedback rows in their upstream layout written here; held-out answers of every
base model are refined and scored by a tiny reward model (rm_win_rate of aligned vs base) and a
tiny pairwise judge (win_rate)."""
import json
import math

import numpy as np
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from pojax.config import validate
from pojax.train.diffpo import run_diffpo
from tests.data.tokenizer_fixture import WORDS, make_tokenizer
from tests.eval.test_reward_eval import reward_dir
from tests.models.hf_fixtures import tiny_judge
from tests.train.helpers import read_jsonl, recipe

CONTENT = WORDS[8:]
MODELS = ("alpaca-7b", "gpt-4", "llama-2-7b-chat", "wizardlm-13b")


def ultrafeedback_jsonl(path, n=20, seed=0):
    rng = np.random.default_rng(seed)
    words = lambda k: " ".join(rng.choice(CONTENT, k))
    rows = [{"source": "evol_instruct", "instruction": words(3), "models": list(MODELS), "completions": [
        {"model": m, "response": words(int(rng.integers(1, 6))), "overall_score": float(rng.integers(1, 11)),
         "fine-grained_score": float(rng.uniform(1, 5)), "custom_system_prompt": "", "principle": "helpfulness"}
        for m in MODELS]} for _ in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_diffpo_recipe_two_steps_on_tiny_llama_with_reward_model(tmp_path):
    tok = make_tokenizer(tmp_path / "model")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=64)).save_pretrained(tmp_path / "model")
    hf_rm, rm = reward_dir(tmp_path / "rm", len(tok), tok)
    judge = tiny_judge(tmp_path / "judge", WORDS + ["1", "2"])
    rows = ultrafeedback_jsonl(tmp_path / "uf.jsonl")
    config = recipe("diffpo_llama3_8b_ultrafeedback", **{
        "model.path": str(tmp_path / "model"), "data.path": str(tmp_path / "uf.jsonl"), "eval.reward_model_path": rm,
        "eval.judge_path": judge,
        "train.max_steps": 2, "train.batch_size": 8, "train.grad_accum_steps": 1, "data.max_prompt_length": 16,
        "data.max_completion_length": 8, "likelihood.chunk_size": 8, "eval.num_examples": 4,
        "diffpo.eval_steps": (1,), "logging.progress": False})
    validate(config)
    assert config.model.scan_layers and config.model.dtype == "bfloat16" and config.diffpo.omega == 0.1
    d = config.diffpo  # CLLM's loss terms and DiffPO's reserved prefix
    assert (d.label_smoothing, d.consistency_mask, d.divergence, d.reserve_tokens) == (0.1, "first_difference",
                                                                                        "soft_ce", 12)
    results = run_diffpo(config, str(tmp_path / "run"))

    metrics = read_jsonl(tmp_path / "run" / "metrics_diffpo.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) and m["diffpo/consistency"] >= 0 for m in metrics)
    assert results["num_trajectories"] == 16 and results["mean_states"] == 3.0
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(saved["base_policies"]) == set(MODELS)
    for name, entry in saved["base_policies"].items():
        assert entry["num_prompts"] == 4 and entry["forward_passes"] == {"k1": 1.0}
        assert 0.0 <= entry["rm_win_rate"]["k1"] <= 1.0 and 0.0 <= entry["rm_lc_win_rate"]["k1"] <= 1.0
        assert math.isfinite(entry["rm_reward_aligned"]["k1"])
        assert entry["num_comparisons"]["k1"] == 4 and entry["win_rate"]["k1"] in (0.0, 0.125, 0.25, 0.375, 0.5, 0.625,
                                                                                    0.75, 0.875, 1.0)
    # the base answers' mean reward, recomputed by transformers (fp32) on the held-out rows
    name = MODELS[1]
    held = np.random.default_rng(config.train.seed).permutation(len(rows))[-config.eval.num_examples:]
    scores = []
    for r in (rows[i] for i in held):
        answer = next(c["response"] for c in r["completions"] if c["model"] == name)
        text = tok.apply_chat_template([{"role": "user", "content": r["instruction"]},
                                        {"role": "assistant", "content": answer}], tokenize=False)
        with torch.no_grad():
            scores.append(hf_rm(torch.as_tensor([tok(text, add_special_tokens=False)["input_ids"]])).logits[0, 0].item())
    np.testing.assert_allclose(saved["base_policies"][name]["rm_reward_base"], np.mean(scores),
                               atol=0.03)  # the recipe's bf16 compute


def test_gemma2_aligner_recipe_two_steps_on_tiny_gemma2(tmp_path):
    """configs/diffpo_gemma2_9b_ultrafeedback.py (DiffPO-9B) for 2 steps on a tiny random Gemma 2
    whose soft caps bite at this size; the refined answers are scored by the reward model."""
    tok = make_tokenizer(tmp_path / "model")
    torch.manual_seed(0)
    Gemma2ForCausalLM(Gemma2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
                                   sliding_window=6, attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
                                   max_position_embeddings=64)).save_pretrained(tmp_path / "model")
    _, rm = reward_dir(tmp_path / "rm", len(tok), tok)
    ultrafeedback_jsonl(tmp_path / "uf.jsonl")
    config = recipe("diffpo_gemma2_9b_ultrafeedback", **{
        "model.path": str(tmp_path / "model"), "data.path": str(tmp_path / "uf.jsonl"), "eval.reward_model_path": rm,
        "train.max_steps": 2, "train.batch_size": 8, "train.grad_accum_steps": 1, "data.max_prompt_length": 16,
        "data.max_completion_length": 8, "likelihood.chunk_size": 8, "eval.num_examples": 4,
        "diffpo.eval_steps": (1,), "logging.progress": False})
    validate(config)
    assert config.model.attention_impl == "xla" and config.diffpo.omega == 0.1 and config.model.scan_layers
    assert (config.diffpo.label_smoothing, config.diffpo.consistency_mask, config.diffpo.reserve_tokens) == (
        0.1, "first_difference", 12)
    results = run_diffpo(config, str(tmp_path / "run"))
    metrics = read_jsonl(tmp_path / "run" / "metrics_diffpo.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) and m["diffpo/consistency"] >= 0 for m in metrics)
    assert metrics[0]["loss"] != metrics[1]["loss"]  # the first update moved the aligner
    assert results["num_trajectories"] == 16
    for entry in json.loads((tmp_path / "run" / "results.json").read_text())["base_policies"].values():
        assert 0.0 <= entry["rm_win_rate"]["k1"] <= 1.0 and math.isfinite(entry["rm_reward_aligned"]["k1"])


def test_tokenizer_larger_than_the_aligner_vocabulary_is_named(tmp_path):
    import pytest

    from pojax.config import ConfigError

    make_tokenizer(tmp_path / "tok")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=10, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path / "model")
    ultrafeedback_jsonl(tmp_path / "uf.jsonl", n=4)
    config = recipe("diffpo_llama3_8b_ultrafeedback", **{
        "model.path": str(tmp_path / "model"), "data.tokenizer": str(tmp_path / "tok"),
        "data.path": str(tmp_path / "uf.jsonl"), "eval.num_examples": 1, "data.max_prompt_length": 8,
        "data.max_completion_length": 4, "logging.progress": False})
    with pytest.raises(ConfigError, match=f"data.tokenizer: tokenizer mismatch: {len(WORDS)} tokens but the aligner's "
                                          "vocabulary has 10"):
        run_diffpo(config, str(tmp_path / "run"))
