"""LoRA: starts at the base model, trains only the adapters, switches off to the base, merges
into kernels that transformers loads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from transformers import AutoModelForCausalLM

from pojax.models import from_pretrained, save_pretrained
from pojax.models.lora import apply_lora, merge_lora, without_adapters
from tests.models.hf_fixtures import VOCAB, make_checkpoint, torch_logits


def randomize_b(model):
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
        if path[-1] == "lora_b":
            var.set_value(0.05 * jax.random.normal(jax.random.key(len(path)), var.shape, var.dtype))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_lora_base_switch_and_merge(tmp_path, scan_layers):
    make_checkpoint("qwen2-tied", tmp_path / "base")
    x = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (2, 9)), jnp.int32)
    with jax.default_matmul_precision("highest"):
        model = from_pretrained(str(tmp_path / "base"), scan_layers=scan_layers)
        base = model(x)
        apply_lora(model, rank=4, alpha=8.0, rngs=nnx.Rngs(1))
        np.testing.assert_allclose(model(x), base, atol=1e-6)  # B = 0 at init
        randomize_b(model)
        adapted = model(x)
        assert float(jnp.max(jnp.abs(adapted - base))) > 1e-3
        np.testing.assert_allclose(without_adapters(model)(x), base, atol=1e-6)  # reference = base
        np.testing.assert_allclose(model(x), adapted, atol=0)  # the policy kept its adapters
        n_lora = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))
        assert n_lora > 0
        merge_lora(model)
        assert not jax.tree.leaves(nnx.state(model, nnx.LoRAParam))
        np.testing.assert_allclose(model(x), adapted, atol=1e-5)
    save_pretrained(model, str(tmp_path / "merged"))
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    np.testing.assert_allclose(torch_logits(hf, np.asarray(x)), adapted, atol=1e-5)


def test_only_adapters_get_gradients(tmp_path):
    make_checkpoint("llama-gqa", tmp_path)
    model = apply_lora(from_pretrained(str(tmp_path)), rank=2, rngs=nnx.Rngs(0), target_modules=("q_proj", "v_proj"))
    x = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (1, 5)), jnp.int32)
    graphdef, lora, rest = nnx.split(model, nnx.LoRAParam, ...)
    grads = jax.grad(lambda l: jnp.mean(nnx.merge(graphdef, l, rest)(x) ** 2))(lora)
    names = {p[-1] for p, _ in nnx.to_flat_state(grads)}
    assert names == {"lora_a", "lora_b"}
    paths = {p[-2] for p, _ in nnx.to_flat_state(grads)}
    assert paths == {"q_proj", "v_proj"}


def test_no_target_is_an_error(tmp_path):
    make_checkpoint("llama-gqa", tmp_path)
    with pytest.raises(ValueError, match="no module named any of \\('wq',\\)"):
        apply_lora(from_pretrained(str(tmp_path)), target_modules=("wq",), rngs=nnx.Rngs(0))
