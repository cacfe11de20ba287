"""Packed rows (segment ids) equal separate forwards; bf16 models stay close to fp32 ones."""
import jax
import jax.numpy as jnp
import numpy as np

from pojax.models import from_pretrained
from tests.models.hf_fixtures import VOCAB, make_checkpoint, torch_logits


def test_packed_documents_do_not_attend_to_each_other(tmp_path):
    make_checkpoint("mistral-window", tmp_path)
    model = from_pretrained(str(tmp_path))
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, VOCAB, 5), rng.integers(0, VOCAB, 4)
    packed = jnp.asarray(np.concatenate([a, b, [0, 0]])[None], jnp.int32)
    segments = jnp.asarray([[1] * 5 + [2] * 4 + [0, 0]])
    positions = jnp.asarray([list(range(5)) + list(range(4)) + [0, 0]])
    with jax.default_matmul_precision("highest"):
        got = model(packed, positions=positions, segment_ids=segments)
        want_a = model(jnp.asarray(a[None], jnp.int32))
        want_b = model(jnp.asarray(b[None], jnp.int32))
    np.testing.assert_allclose(got[0, :5], want_a[0], atol=1e-5)
    np.testing.assert_allclose(got[0, 5:9], want_b[0], atol=1e-5)


def test_bfloat16_model_is_close_to_transformers_fp32(tmp_path):
    ref = make_checkpoint("qwen3-qknorm", tmp_path)
    x = np.random.default_rng(1).integers(0, VOCAB, (2, 8)).astype(np.int32)
    model = from_pretrained(str(tmp_path), dtype=jnp.bfloat16)
    assert model.layers[0].mlp.up_proj.kernel[...].dtype == jnp.bfloat16
    got = np.asarray(model(jnp.asarray(x)))
    assert got.dtype == np.float32  # logits are accumulated in float32
    want = torch_logits(ref, x)
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel < 0.05, rel
