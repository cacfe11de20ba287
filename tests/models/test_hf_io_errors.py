"""Broken checkpoints give one clear error naming the tensor / file; nothing half-loads."""
import json
import os

import pytest
from safetensors.numpy import load_file, save_file

from pojax.models import CheckpointError, ModelConfig, from_pretrained, save_pretrained
from tests.models.hf_fixtures import make_checkpoint


@pytest.fixture()
def ckpt(tmp_path):
    make_checkpoint("llama-gqa", tmp_path)
    return tmp_path


def test_shape_disagreeing_with_config(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["intermediate_size"] = 64
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"tensor 'model.layers.0.mlp.gate_proj.weight' in model.safetensors has shape \(48, 32\) but config.json implies \(64, 32\)"):
        from_pretrained(str(ckpt))


def test_missing_tensor(ckpt):
    tensors = load_file(str(ckpt / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match="tensor 'model.layers.1.self_attn.k_proj.weight' is missing"):
        from_pretrained(str(ckpt))


def test_missing_shard_file(tmp_path):
    model = from_pretrained(str(make_checkpoint("llama-gqa", tmp_path / "src") and tmp_path / "src"))
    save_pretrained(model, str(tmp_path / "sharded"), max_shard_bytes=20_000)
    files = sorted(f for f in os.listdir(tmp_path / "sharded") if f.endswith(".safetensors"))
    assert len(files) > 1 and (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    from_pretrained(str(tmp_path / "sharded"))  # the sharded set loads
    os.remove(tmp_path / "sharded" / files[-1])
    with pytest.raises(CheckpointError, match=f"shard file '{files[-1]}' is missing"):
        from_pretrained(str(tmp_path / "sharded"))


def test_unsupported_model_type(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'; pojax supports llama, mistral, qwen2, qwen3, "
                                         "gemma2, gemma3_text, olmo2, phi3, mixtral, qwen3_moe, llada, Dream$"):
        from_pretrained(str(ckpt))


def test_no_weights_and_no_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(ModelConfig().to_hf_dict()))
    with pytest.raises(CheckpointError, match="no model.safetensors or model.safetensors.index.json"):
        from_pretrained(str(tmp_path))


def test_unsupported_rope_type():
    with pytest.raises(ValueError, match="unsupported rope_type 'yarn'"):
        ModelConfig(rope_scaling=(("factor", 2.0), ("rope_type", "yarn")))


def test_unimplemented_switches_are_refused_by_name():
    """A RoPE type pojax lacks (dynamic NTK) is refused, never read as plain RoPE; so are a Gemma
    decoder with bidirectional attention, an MLP activation pojax lacks, and LongRoPE factor
    lists that do not fit the rotary dims."""
    phi3 = dict(model_type="phi3", vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=2)
    with pytest.raises(ValueError, match="unsupported rope_type 'dynamic'"):
        ModelConfig.from_hf_config(dict(phi3, rope_parameters={"rope_type": "dynamic", "factor": 2.0}))
    longrope = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 3, "long_factor": [2.0] * 3,
                "original_max_position_embeddings": 4096}
    from flax import nnx

    from pojax.models import CausalLM

    with pytest.raises(ValueError, match="longrope short_factor has 3 entries; the rotary dims need 4"):
        CausalLM(ModelConfig.from_hf_config(dict(phi3, rope_parameters=longrope)), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="'use_bidirectional_attention' = True is not supported"):
        ModelConfig.from_hf_config(dict(phi3, model_type="gemma3_text", use_bidirectional_attention=True))
    with pytest.raises(ValueError, match="unsupported hidden_act 'gelu_new'"):
        ModelConfig.from_hf_config(dict(phi3, hidden_act="gelu_new"))
