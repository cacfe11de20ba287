"""An export generates as its source checkpoint does: the special-token ids of config.json and
the source's generation_config.json travel through pojax (load → save_pretrained), and
transformers' generate() on the export stops where it stops on the source, token for token."""
import json

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM

from pojax.models import from_pretrained, save_pretrained
from pojax.models.hf_io import hf_config_files
from tests.models.hf_fixtures import randomize_

PROMPT = [[1, 17, 5, 33, 8]]


def _source(path, eos_ids):
    """A tiny random Llama (BOS 1, EOS 2, PAD 0) whose generation_config.json ends on
    ``eos_ids`` and decodes greedily for 12 new tokens."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = randomize_(LlamaForCausalLM(config).eval())
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=eos_ids, pad_token_id=0,
                                               max_new_tokens=12, do_sample=False)
    model.save_pretrained(path)
    return model


def _generate(model) -> list:
    with torch.no_grad():
        return model.generate(torch.as_tensor(PROMPT), attention_mask=torch.ones(1, len(PROMPT[0]), dtype=torch.long))[0].tolist()


def test_export_keeps_token_ids_and_generation_config_and_stops_at_eos(tmp_path):
    # the source's greedy continuation without a stop: its 4th token becomes a second EOS, so
    # a correct export stops after 4 new tokens and one that lost generation_config runs to 12
    free = _generate(_source(tmp_path / "probe", [2]))[len(PROMPT[0]):]
    stop = next(t for t in free[3:] if t not in free[:3] and t != 2)
    cut = free.index(stop) + 1
    src = _source(tmp_path / "src", [2, stop])
    save_pretrained(from_pretrained(str(tmp_path / "src")), str(tmp_path / "out"))

    out = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert out.generation_config.eos_token_id == src.generation_config.eos_token_id == [2, stop]
    assert out.generation_config.max_new_tokens == 12 and out.generation_config.do_sample is False
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(out.config, key) == getattr(src.config, key), key
    want = _generate(src)
    assert len(want) == len(PROMPT[0]) + cut < len(PROMPT[0]) + 12  # the source stops at the added EOS
    assert _generate(out) == want


def test_token_ids_without_generation_config_and_eos_lists():
    from pojax.models import ModelConfig

    mc = ModelConfig.from_hf_config(dict(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48,
                                                     num_hidden_layers=1, num_attention_heads=4,
                                                     eos_token_id=[7, 9], bos_token_id=3).to_dict()))
    assert mc.eos_token_id == (7, 9) and mc.bos_token_id == 3
    hf, gen = hf_config_files(mc)
    assert hf["eos_token_id"] == [7, 9] and gen == {"bos_token_id": 3, "eos_token_id": [7, 9]}
    # transformers reads the same ids back
    cfg = AutoConfig.for_model(hf.pop("model_type"), **hf)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (3, [7, 9], None)
    # a model without known ids (a random gym model) writes what it is told, null included:
    # transformers' Llama default EOS (2) must not appear
    hf, gen = hf_config_files(ModelConfig(), token_ids={"bos_token_id": 1, "eos_token_id": None, "pad_token_id": 0})
    cfg = AutoConfig.for_model(hf.pop("model_type"), **hf)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, None, 0)
    assert gen == {"bos_token_id": 1, "pad_token_id": 0}
    assert json.dumps(hf)  # JSON-serializable as written
    np.testing.assert_equal(ModelConfig().token_ids(), {})
