"""KV-cache decoding gives the same logits as the full forward, with the same weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pojax.models import from_pretrained
from tests.models.hf_fixtures import VOCAB, make_checkpoint


VARIANTS = ["llama-gqa", "mistral-window", "qwen3-qknorm", "qwen2-window", "gemma2-capped", "gemma3-text", "olmo2-bias",
            "phi3-partial-window"]
# scanned layers: the plain stack, and the families whose layers alternate sliding and global attention (the
# cache's per-layer window rides the scan); the others' layers are alike (CI time: 40 min on 2 cores)
SCANNED = ["llama-gqa", "gemma2-capped", "gemma3-text"]


@pytest.mark.parametrize(("variant", "scan_layers"), [(v, False) for v in VARIANTS] + [(v, True) for v in SCANNED])
def test_prefill_then_one_token_at_a_time_equals_full_forward(variant, scan_layers, tmp_path):
    make_checkpoint(variant, tmp_path)
    model = from_pretrained(str(tmp_path), scan_layers=scan_layers)
    x = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (2, 10)), jnp.int32)
    with jax.default_matmul_precision("highest"):
        full = model(x)
        cache = model.init_cache(2, 16)
        prompt = 4
        pos = jnp.broadcast_to(jnp.arange(10, dtype=jnp.int32), (2, 10))
        logits, cache = model.decode(x[:, :prompt], pos[:, :prompt], cache)
        steps = [logits]
        step = jax.jit(lambda m, t, p, c: m.decode(t, p, c))
        for t in range(prompt, 10):
            logits, cache = step(model, x[:, t:t + 1], pos[:, t:t + 1], cache)
            steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-5, rtol=0)
    assert int(cache["index"]) == 10


def test_left_padded_prompt_decodes_like_the_unpadded_one(tmp_path):
    make_checkpoint("llama-gqa", tmp_path)
    model = from_pretrained(str(tmp_path))
    x = jnp.asarray(np.random.default_rng(1).integers(0, VOCAB, (1, 6)), jnp.int32)
    with jax.default_matmul_precision("highest"):
        want = model(x)[:, -1]
        padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), x], 1)
        pos = jnp.concatenate([jnp.full((1, 3), -1, jnp.int32), jnp.arange(6, dtype=jnp.int32)[None]], 1)
        logits, _ = model.decode(padded, pos, model.init_cache(1, 12))
    np.testing.assert_allclose(logits[:, -1], want, atol=1e-5, rtol=0)
