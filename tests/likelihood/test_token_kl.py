"""The chunked per-token KL(π_ref ‖ π) equals a numpy reference from full softmaxes for any
chunk, its gradient equals jax.grad of the naive full-logits version (policy side only), and it
is 0 where policy = reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pojax.likelihood.token_kl import token_kl_from_hidden

kl_jit = jax.jit(token_kl_from_hidden, static_argnames=("chunk_size", "logit_soft_cap"))


def inputs(b=2, t=11, d=8, v=37, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    return f(b, t, d), f(d, v) / 2, f(b, t, d), f(d, v) / 2


def numpy_kl(h, w, r, wr):
    """Σ_v q (log q − log p) from full float64 softmaxes."""
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    log_p = log_softmax(np.einsum("btd,dv->btv", h.astype(np.float64), w.astype(np.float64)))
    log_q = log_softmax(np.einsum("btd,dv->btv", r.astype(np.float64), wr.astype(np.float64)))
    return (np.exp(log_q) * (log_q - log_p)).sum(-1)


def naive_kl(h, w, r, wr):
    hp = jax.lax.Precision.HIGHEST
    log_p = jax.nn.log_softmax(jnp.einsum("btd,dv->btv", h, w, precision=hp), -1)
    log_q = jax.lax.stop_gradient(jax.nn.log_softmax(jnp.einsum("btd,dv->btv", r, wr, precision=hp), -1))
    return jnp.sum(jnp.exp(log_q) * (log_q - log_p), -1)


@pytest.mark.parametrize("chunk", [1, 4, 11, 64])  # T = 11: non-divisor, T, > T
def test_equals_numpy_reference(chunk):
    h, w, r, wr = inputs()
    got = np.asarray(kl_jit(h, w, r, wr, chunk_size=chunk))
    assert got.shape == (2, 11) and got.dtype == np.float32
    np.testing.assert_allclose(got, numpy_kl(h, w, r, wr), rtol=1e-4, atol=1e-5)
    assert (got > 1e-3).all()  # distinct models: a real divergence everywhere


def test_zero_when_policy_is_reference():
    h, w, _, _ = inputs()
    np.testing.assert_allclose(kl_jit(h, w, h, w, chunk_size=4), 0.0, atol=1e-5)


def test_gradient_equals_naive_full_logits():
    h, w, r, wr = inputs(seed=1)
    weights = np.random.default_rng(2).standard_normal((2, 11)).astype(np.float32)

    def loss(fn):
        return lambda h, w, r, wr: jnp.sum(weights * fn(h, w, r, wr))

    chunked = lambda *a: token_kl_from_hidden(*a, chunk_size=3)
    got = jax.jit(jax.grad(loss(chunked), argnums=(0, 1, 2, 3)))(h, w, r, wr)
    want = jax.jit(jax.grad(loss(naive_kl), argnums=(0, 1, 2, 3)))(h, w, r, wr)
    for g, e in zip(got[:2], want[:2]):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
    assert np.abs(np.asarray(got[0])).max() > 1e-3
    for g in got[2:]:  # the reference gets no gradient
        np.testing.assert_array_equal(g, 0.0)


def test_mismatched_vocabularies_are_refused():
    h, w, r, _ = inputs()
    with pytest.raises(ValueError, match="vocabularies differ"):
        token_kl_from_hidden(h, w, r, np.zeros((8, 5), np.float32))


def test_backward_temp_memory_stays_below_one_full_logits_tensor():
    b, t, d, v, c = 2, 256, 16, 2048, 16
    h = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
    w = jax.ShapeDtypeStruct((d, v), jnp.float32)
    loss = lambda h, w, r, wr: jnp.sum(token_kl_from_hidden(h, w, r, wr, chunk_size=c))
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(h, w, h, w).compile()
    full_logits = b * t * v * 4  # one [B, T, V] fp32 tensor: 4 MiB here
    assert compiled.memory_analysis().temp_size_in_bytes < full_logits / 2
