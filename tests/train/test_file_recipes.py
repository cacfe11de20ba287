"""configs/dpo.py and configs/kto.py on a Hugging Face model directory (a tiny random Llama plus
a word-level tokenizer with a chat template, saved in the upstream layout) and JSONL rows in
TRL's columns: 2 steps each, starting at the reference loss, with a held-out evaluation."""
import importlib.util
import json
import math
import os

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pojax.config import validate
from pojax.train.run import run_train
from tests.data.tokenizer_fixture import WORDS, make_tokenizer
from tests.train.helpers import ROOT, read_jsonl


def recipe(name, **overrides):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_llama")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(path)
    make_tokenizer(path)
    return str(path)


def rows(kind, n=24):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        prompt = [{"role": "user", "content": " ".join(rng.choice(["hi", "name", "a", "color", "2+2?"], 3))}]
        if kind == "paired":
            out.append({"prompt": prompt, "chosen": "good yes", "rejected": "bad no go away"})
        else:
            out.append({"prompt": prompt, "completion": "good yes" if i % 2 else "bad no", "label": bool(i % 2)})
    return out


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
    assert results["num_eval_examples"] == 8 and "eval/loss" in results
    if kind == "paired":
        assert "eval/rewards/accuracies" in results
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

    with pytest.raises(ConfigError, match="config key data.path"):
        run_train(recipe("dpo", **SMALL, **{"model.path": hf_dir}), str(tmp_path))
    with pytest.raises(ConfigError, match="config key data.format: 'hh_rlhf' files cannot be read yet"):
        run_train(recipe("dpo", **SMALL, **{"model.path": hf_dir, "data.format": "hh_rlhf", "data.path": "x"}), str(tmp_path))
