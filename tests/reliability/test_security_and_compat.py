"""Loading never runs code from a checkpoint or dataset (safetensors only, no
trust_remote_code, sandboxed chat templates); checkpoints move between meshes and refuse a
model they do not fit with a message naming the tensor."""
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import jinja2
import numpy as np
import optax
import pytest
from flax import nnx

from pojax import sharding
from pojax.data import tokenize
from pojax.models import CausalLM, CheckpointError, ModelConfig, from_pretrained, save_pretrained
from pojax.train.checkpoint import Checkpoints
from pojax.train.step import init_state
from tests.data.tokenizer_fixture import make_tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = dict(model_type="llama", vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, dtype="float32", param_dtype="float32",
            max_position_embeddings=64)


def _tiny_checkpoint(path):
    save_pretrained(CausalLM(ModelConfig(**TINY), rngs=nnx.Rngs(0)), str(path))
    return path


def test_pickle_checkpoint_is_refused_with_how_to_convert(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path)
    os.remove(ckpt / "model.safetensors")
    marker = tmp_path / "pwned"
    # a pickle that would create `marker` if it were ever unpickled
    (ckpt / "pytorch_model.bin").write_bytes(
        b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(CheckpointError, match=r"only pytorch_model.bin \(a PyTorch pickle\).*"
                                              r"save_pretrained\(dir, safe_serialization=True\)"):
        from_pretrained(str(ckpt))
    assert not marker.exists()


def test_no_trust_remote_code_anywhere():
    """trust_remote_code appears only as an explicit False (which also keeps transformers from
    asking on a checkpoint whose config.json has an auto_map, as LLaDA's does)."""
    import re

    hits = []
    for sub in ("pojax", "configs", "experiments"):
        for f in (ROOT / sub).rglob("*.py"):
            for use in re.findall(r"trust_remote_code\s*=\s*[^,)\s]+", f.read_text(encoding="utf-8")):
                if not re.fullmatch(r"trust_remote_code\s*=\s*False", use):
                    hits.append(f"{f.relative_to(ROOT)}: {use}")
            text = f.read_text(encoding="utf-8").replace("trust_remote_code=False", "")
            text = text.replace('"trust_remote_code"', "")  # TRL's key of that name, refused unless False (pojax.trl_config)
            if re.search(r"trust_remote_code(?!\s*=)", text):
                hits.append(f"{f.relative_to(ROOT)}: trust_remote_code outside an explicit False")
    assert not hits, hits


def test_chat_template_runs_in_the_sandbox():
    tok = make_tokenizer()
    tok.chat_template = ("{{ ().__class__.__mro__[1].__subclasses__() }}"
                         "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        tokenize.prompt_ids(tok, {"prompt": [{"role": "user", "content": "hi"}]}, chat=True)
    tok.chat_template = "{{ cycler.__init__.__globals__.os.system('true') }}"
    with pytest.raises(jinja2.exceptions.SecurityError):
        tokenize.prompt_ids(tok, {"prompt": [{"role": "user", "content": "hi"}]}, chat=True)


def test_checkpoint_that_does_not_fit_the_config_names_the_tensor(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["hidden_size"] = 24
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"tensor 'model.embed_tokens.weight' in model.safetensors has shape "
                                              r"\(32, 16\) but config.json implies \(32, 24\) \(pojax parameter embed_tokens\)"):
        from_pretrained(str(ckpt))


def _train_state(mesh):
    model = CausalLM(ModelConfig(**TINY), rngs=nnx.Rngs(0))
    rules = sharding.DEFAULT_RULES
    if mesh is not None:
        model = sharding.shard_module(model, mesh, rules)
    _, params, _ = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(1e-3)
    state = init_state(params, tx)
    params = jax.tree.map(lambda p: p + 0.5, state.params)  # moved off the init values
    state = state.replace(params=params, opt_state=tx.init(params), step=jnp.asarray(7, jnp.int32))
    sh = sharding.param_shardings(state, mesh, rules) if mesh is not None else \
        jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.device_put(state, sh)


@pytest.mark.parametrize("save_on,load_on", [(8, 1), (1, 8)])
def test_train_checkpoint_moves_between_meshes(tmp_path, save_on, load_on):
    assert jax.device_count() == 8
    meshes = {8: jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor")), 1: None}
    saved = _train_state(meshes[save_on])
    if save_on == 8:
        assert any(len(x.sharding.device_set) > 1 for x in jax.tree.leaves(saved))
    ckpt = Checkpoints(str(tmp_path / "ck"), keep=1)
    ckpt.save(7, saved, {"step": 7})
    ckpt.close()
    like = jax.tree.map(jnp.zeros_like, _train_state(meshes[load_on]))
    ckpt = Checkpoints(str(tmp_path / "ck"), keep=1)
    restored, meta = ckpt.restore(like)
    ckpt.close()
    assert meta["step"] == 7 and int(restored.step) == 7
    for got, want, place in zip(jax.tree.leaves(restored), jax.tree.leaves(saved), jax.tree.leaves(like)):
        assert got.sharding == place.sharding
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
