"""Reward-model win rates in task = "eval": policy and reference responses to eval.prompts_path,
scored by a sequence-classification checkpoint, give the rm_* figures that transformers' own
scores of the same conversations give; alongside the judge's for a diffusion policy; and the
reward model's config errors name the key."""
import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from pojax.config import ConfigError, validate
from pojax.eval import win_rates
from pojax.eval.generation import generate_texts
from pojax.eval.rewards import reward_preferences
from pojax.models import from_pretrained
from pojax.train.tasks import run_eval
from tests.data.tokenizer_fixture import WORDS, make_tokenizer
from tests.eval.diffusion_fixtures import WORDS as LLADA_WORDS
from tests.eval.diffusion_fixtures import save_llada
from tests.eval.diffusion_fixtures import tokenizer as llada_tokenizer
from tests.eval.test_diffusion_eval import _judge
from tests.train.helpers import recipe

PROMPTS = ["hi", "name a color", "2+2?", "hello hi", "go away", "good"]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def llama_dir(path, seed):
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(path)
    make_tokenizer(path)
    return str(path)


def reward_dir(path, vocab_size, tok, seed=2):
    torch.manual_seed(seed)
    hf = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)).eval()
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return hf, str(path)


def config_for(policy, reference, **overrides):
    return recipe("dpo", **{"task": "eval", "model.path": policy, "reference.path": reference, "model.dtype": "float32",
                            "train.batch_size": 4, "eval.max_new_tokens": 4, "eval.temperature": 0.0,
                            "logging.progress": False, **overrides})


def test_rm_win_rates_equal_transformers_scores(tmp_path):
    policy, reference = llama_dir(tmp_path / "policy", 0), llama_dir(tmp_path / "ref", 1)
    tok = make_tokenizer()
    hf_rm, rm = reward_dir(tmp_path / "rm", len(WORDS), tok)
    prompts = write(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    config = config_for(policy, reference, **{"eval.prompts_path": prompts, "eval.reward_model_path": rm})
    validate(config)
    results = run_eval(config, str(tmp_path / "run"))

    # the same responses, scored one conversation at a time by transformers
    kw = dict(max_new_tokens=4, temperature=0.0, batch_size=4, seed=config.train.seed)
    (out_p, len_p), (out_r, len_r) = (generate_texts(from_pretrained(d), tok, PROMPTS, **kw) for d in (policy, reference))

    def hf_score(prompt, completion):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}],
                                       tokenize=False)
        with torch.no_grad():
            return hf_rm(torch.as_tensor([tok(text, add_special_tokens=False)["input_ids"]])).logits[0, 0].item()

    s_p = np.asarray([hf_score(p, c) for p, c in zip(PROMPTS, out_p)])
    s_r = np.asarray([hf_score(p, c) for p, c in zip(PROMPTS, out_r)])
    assert np.all(np.abs(s_p - s_r) > 1e-4), "a near-tie would make the comparison fragile"
    want = win_rates(reward_preferences(s_p, s_r), len_p, len_r, seed=config.train.seed)
    assert results["rm_win_rate"] == want["win_rate"]
    assert results["rm_win_rate_ci"] == pytest.approx(want["win_rate_ci"])
    assert results["rm_lc_win_rate"] == pytest.approx(want["lc_win_rate"])
    assert results["rm_num_comparisons"] == len(PROMPTS)
    assert results["rm_reward_policy"] == pytest.approx(s_p.mean(), abs=1e-5)
    assert results["rm_reward_ref"] == pytest.approx(s_r.mean(), abs=1e-5)
    assert "win_rate" not in results  # no judge configured
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["rm_win_rate"] == results["rm_win_rate"]


def test_diffusion_policy_with_judge_and_reward_model(tmp_path):
    llada = save_llada(tmp_path / "llada")
    _, rm = reward_dir(tmp_path / "rm", len(LLADA_WORDS), llada_tokenizer(chat_template=True))
    prompts = write(tmp_path / "prompts.jsonl", [{"prompt": p} for p in ["hi", "2+2?", "what color", "go hi"]])
    config = recipe("elbo_kto", **{
        "task": "eval", "model.path": llada, "reference.path": llada, "model.dtype": "float32",
        "model.scan_layers": False, "model.remat": "none", "mesh.fsdp": 1, "mesh.data": -1, "train.batch_size": 4,
        "train.grad_accum_steps": 1, "eval.max_new_tokens": 4, "eval.diffusion_steps": 2, "eval.diffusion_block_length": 2,
        "eval.temperature": 0.0, "eval.prompts_path": prompts, "eval.judge_path": _judge(tmp_path / "judge"),
        "eval.reward_model_path": rm, "logging.progress": False})
    validate(config)
    results = run_eval(config, str(tmp_path / "run"))
    # the policy against itself: identical responses tie under both
    assert results["win_rate"] == 0.5 and results["rm_win_rate"] == 0.5
    assert results["rm_lc_win_rate"] == pytest.approx(0.5) and results["num_comparisons"] == 4


def test_reward_model_errors_name_the_key(tmp_path):
    policy = llama_dir(tmp_path / "policy", 0)
    prompts = write(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    with pytest.raises(ConfigError, match=r"config key eval.reward_model_path: reward model: .*model.safetensors: "
                                          r"tensor 'score.weight' is missing"):
        run_eval(config_for(policy, policy, **{"eval.prompts_path": prompts, "eval.reward_model_path": policy}),
                 str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="config key eval.prompts_path: eval.reward_model_path scores responses"):
        run_eval(config_for(policy, policy, **{"eval.reward_model_path": policy, "eval.gsm8k_path": prompts}),
                 str(tmp_path / "run"))
