"""Chunked log-probs equal the naive full-logits ones (values and gradients), and their
compiled peak memory scales with the chunk size, not the vocabulary."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pojax.likelihood import autoregressive as ar


def naive(hidden, w, targets, with_sq=False):
    logits = jnp.einsum("btd,dv->btv", hidden.astype(jnp.float32), w.astype(jnp.float32))
    logp = jax.nn.log_softmax(logits, -1)
    picked = jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    if with_sq:
        return picked, jax.nn.logsumexp(2 * logp, -1)
    return picked


def inputs(b=3, t=13, d=16, v=50, seed=0, dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(k1, (b, t, d)).astype(dtype), jax.random.normal(k2, (d, v)).astype(dtype),
            jax.random.randint(k3, (b, t), 0, v))


@pytest.mark.parametrize("chunk", [1, 7, 16, 39, 1000])
def test_equals_naive(chunk):
    h, w, tg = inputs()
    got, sq = ar.token_logps_from_hidden(h, w, tg, chunk_size=chunk, return_log_sum_sq=True)
    want, want_sq = naive(h, w, tg, with_sq=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(sq, want_sq, atol=1e-5)
    assert got.dtype == jnp.float32


def test_bf16_inputs():
    h, w, tg = inputs(dtype=jnp.bfloat16)
    got = ar.token_logps_from_hidden(h, w, tg, chunk_size=8)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, naive(h, w, tg), atol=2e-2)


def test_gradients_equal_naive():
    h, w, tg = inputs(seed=1)
    weights = jax.random.normal(jax.random.key(9), tg.shape)
    f_chunk = lambda h, w: jnp.sum(weights * ar.token_logps_from_hidden(h, w, tg, chunk_size=5))
    f_naive = lambda h, w: jnp.sum(weights * naive(h, w, tg))
    g1 = jax.jit(jax.grad(f_chunk, argnums=(0, 1)))(h, w)
    g2 = jax.grad(f_naive, argnums=(0, 1))(h, w)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_sequence_and_segment_sums_by_hand():
    lp = jnp.array([[-1.0, -2.0, -3.0, -4.0, -5.0]])
    mask = jnp.array([[False, True, True, True, False]])
    assert float(ar.sequence_logps(lp, mask)[0]) == -9.0
    seg = jnp.array([[1, 1, 2, 2, 0]])
    np.testing.assert_array_equal(ar.segment_logps(lp, seg, mask, 2), [[-2.0, -7.0]])


def test_shift_targets():
    ids = jnp.array([[5, 6, 7, 8]])
    completion = jnp.array([[0, 0, 1, 1]])
    tg, m = ar.shift_targets(ids, completion)
    np.testing.assert_array_equal(tg, [[6, 7, 8, 0]])
    np.testing.assert_array_equal(m, [[False, True, True, False]])


def compiled_temp_bytes(fn, *args):
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_peak_memory_scales_with_chunk_not_vocab():
    b, t, d, v = 1, 2048, 64, 128 * 1024
    h = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
    w = jax.ShapeDtypeStruct((d, v), jnp.float32)
    tg = jax.ShapeDtypeStruct((b, t), jnp.int32)

    def loss(fn):
        return jax.value_and_grad(lambda h, w: jnp.sum(fn(h, w)), argnums=(0, 1))

    naive_bytes = compiled_temp_bytes(loss(lambda h, w: naive(h, w, jnp.zeros((b, t), jnp.int32))), h, w)
    chunked = {c: compiled_temp_bytes(loss(lambda h, w, c=c: ar.token_logps_from_hidden(h, w, jnp.zeros((b, t), jnp.int32), chunk_size=c)), h, w)
               for c in (128, 512)}
    print(f"temp bytes: naive {naive_bytes:,}; chunked {', '.join(f'C={c}: {n:,}' for c, n in chunked.items())}")
    assert naive_bytes >= b * t * v * 4  # the full fp32 logits
    assert chunked[512] < naive_bytes / 4
    assert chunked[128] < chunked[512]  # grows with the chunk
    assert chunked[512] < 2 * 512 * v * 4 * 4  # a few [C, V] buffers, independent of T


@pytest.mark.parametrize("tied", [False, True])
def test_model_token_logps_equal_log_softmax_of_its_logits(tied):
    from flax import nnx

    from pojax.models import CausalLM, ModelConfig

    model = CausalLM(ModelConfig(vocab_size=61, tie_word_embeddings=tied), rngs=nnx.Rngs(0))
    ids = jax.random.randint(jax.random.key(0), (2, 9), 0, 61)
    tg, mask = ar.shift_targets(ids, jnp.ones_like(ids))
    with jax.default_matmul_precision("highest"):
        got = ar.token_logps(model, ids, tg, chunk_size=4)
        want = jnp.take_along_axis(jax.nn.log_softmax(model(ids), -1), tg[..., None], -1)[..., 0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(ar.sequence_logps(got, mask), jnp.sum(jnp.where(mask, want, 0), -1), atol=1e-4)
