"""DiffPO loss: zero at y(t) = y(T), stop-gradient target, masking, numpy parity, chunking."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pojax.diffpo.loss import (
    diffpo_loss,
    diffpo_model_loss,
    token_divergence_from_hidden,
)
from pojax.models import CausalLM, ModelConfig

V, P, N, PAD_TAIL = 19, 5, 6, 3  # vocab, prompt length (BOS..SEP), response length, padding


def _model(seed=0):
    return CausalLM(ModelConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=1), rngs=nnx.Rngs(seed))


def _rows(seed=0, b=3):
    rng = np.random.default_rng(seed)
    t = P + N + PAD_TAIL
    target = rng.integers(3, V, (b, t)).astype(np.int32)
    target[:, P + N:] = 0
    state = target.copy()
    state[:, P:P + N] = rng.integers(3, V, (b, N))
    mask = np.zeros((b, t), bool)
    mask[:, P:P + N] = True
    return jnp.asarray(target), jnp.asarray(state), jnp.asarray(mask)


def _np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_consistency_is_zero_when_state_is_target():
    model = _model()
    target, _, mask = _rows()
    loss, m = diffpo_model_loss(model, target, target, mask, omega=1.0, chunk_size=4)
    np.testing.assert_allclose(m["diffpo/consistency"], 0.0, atol=1e-6)
    np.testing.assert_allclose(loss, m["diffpo/ar"], atol=1e-6)


def test_no_gradient_through_target_branch():
    model = _model(1)
    target, state, _ = _rows(1)
    h_t, h_s, w = model.hidden_states(target), model.hidden_states(state), model.lm_head_weight()

    def cons(h_t, h_s, w):
        return jnp.sum(token_divergence_from_hidden(h_t, h_s, w, chunk_size=4))

    g_ht, g_hs, g_w = jax.grad(cons, argnums=(0, 1, 2))(h_t, h_s, w)
    assert float(jnp.max(jnp.abs(g_ht))) == 0.0
    assert float(jnp.max(jnp.abs(g_hs))) > 0.0
    # The head's gradient is the student branch's only: the target distribution is a constant.
    logp_const = jax.nn.log_softmax(jnp.einsum("btd,dv->btv", h_t, w), axis=-1)

    def cons_const_target(w):
        logq = jax.nn.log_softmax(jnp.einsum("btd,dv->btv", h_s, w), axis=-1)
        return jnp.sum(jnp.exp(logp_const) * (logp_const - logq))

    np.testing.assert_allclose(g_w, jax.grad(cons_const_target)(w), rtol=1e-5, atol=1e-6)


def test_model_gradient_of_consistency_is_the_state_branch_only():
    """Through the whole aligner: d/dθ L_cons equals the gradient with the target rows' forward
    replaced by constants."""
    model = _model(2)
    target, state, mask = _rows(2)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        m = nnx.merge(graphdef, params, rest)
        return jnp.mean(diffpo_model_loss(m, target, state, mask, omega=1.0)[1]["diffpo/consistency"])

    h_t_const = model.hidden_states(target)

    def loss_const(params):
        m = nnx.merge(graphdef, params, rest)
        h_s, w = m.hidden_states(state), m.lm_head_weight()
        return jnp.mean(diffpo_loss(jax.lax.stop_gradient(h_t_const), h_s, w, target, mask)[1]["diffpo/consistency"])

    g1, g2 = jax.grad(loss)(params), jax.grad(loss_const)(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_padding_after_the_response_does_not_change_the_loss():
    model = _model(3)
    target, state, mask = _rows(3)
    rng = np.random.default_rng(7)
    noise = rng.integers(3, V, (target.shape[0], PAD_TAIL)).astype(np.int32)
    target2 = target.at[:, P + N:].set(noise)
    state2 = state.at[:, P + N:].set(noise[::-1])
    l1, m1 = diffpo_model_loss(model, target, state, mask, omega=0.7)
    l2, m2 = diffpo_model_loss(model, target2, state2, mask, omega=0.7)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for k in m1:
        np.testing.assert_allclose(m1[k], m2[k], rtol=1e-6)


@pytest.mark.parametrize("kind", ["kl", "soft_ce"])
def test_parity_with_numpy_reference_from_full_logits(kind):
    """Per-position divergence and the masked loss against float64 numpy on the model's own
    full logits; prompt and padding positions are not scored."""
    model = _model(4)
    target, state, mask = _rows(4)
    omega = 0.5
    logp = _np_log_softmax(model(target))   # [B, T, V]
    logq = _np_log_softmax(model(state))
    if kind == "kl":
        div_ref = np.sum(np.exp(logp) * (logp - logq), -1)
    else:
        div_ref = -np.sum(np.exp(logp) * logq, -1)
    h_t, h_s, w = model.hidden_states(target), model.hidden_states(state), model.lm_head_weight()
    div = token_divergence_from_hidden(h_t, h_s, w, kind=kind, chunk_size=4)  # T = 14: a ragged last chunk
    np.testing.assert_allclose(div, div_ref, rtol=1e-4, atol=1e-5)

    # Position i predicts token i + 1: positions P-1 .. P+N-2 are scored, nothing else.
    scored = np.zeros(mask.shape, bool)
    scored[:, P - 1:P + N - 1] = True
    tgt = np.asarray(target)
    ar_ref = -np.array([np.mean([logp[b, i, tgt[b, i + 1]] for i in range(P - 1, P + N - 1)])
                        for b in range(tgt.shape[0])])
    cons_ref = np.sum(np.where(scored, div_ref, 0.0), -1) / N
    loss, m = diffpo_loss(h_t, h_s, w, target, mask, omega=omega, kind=kind, chunk_size=4)
    np.testing.assert_allclose(m["diffpo/ar"], ar_ref, rtol=1e-5)
    np.testing.assert_allclose(m["diffpo/consistency"], cons_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(loss, ar_ref + omega * cons_ref, rtol=1e-4, atol=1e-6)
    # The mask matters: scoring the prompt too gives another number.
    _, m_all = diffpo_loss(h_t, h_s, w, target, jnp.ones_like(mask), omega=omega, kind=kind)
    assert not np.allclose(m_all["diffpo/consistency"], cons_ref, rtol=1e-3)


def test_chunk_size_and_jit_do_not_change_the_loss():
    model = _model(5)
    target, state, mask = _rows(5)
    h_t, h_s, w = model.hidden_states(target), model.hidden_states(state), model.lm_head_weight()
    ref = diffpo_loss(h_t, h_s, w, target, mask, omega=2.0, chunk_size=1024)[0]
    for c in (1, 3, 5):
        np.testing.assert_allclose(diffpo_loss(h_t, h_s, w, target, mask, omega=2.0, chunk_size=c)[0], ref, rtol=1e-6)
    jitted = jax.jit(lambda a, b, c, d, e: diffpo_loss(a, b, c, d, e, omega=2.0, chunk_size=3)[0])
    np.testing.assert_allclose(jitted(h_t, h_s, w, target, mask), ref, rtol=1e-6)


def test_bad_divergence_and_shapes_raise():
    h = jnp.zeros((1, 4, 8))
    w = jnp.zeros((8, 5))
    with pytest.raises(ValueError, match="unknown divergence 'js'"):
        token_divergence_from_hidden(h, h, w, kind="js")
    with pytest.raises(ValueError, match="differ in shape"):
        token_divergence_from_hidden(h, jnp.zeros((1, 5, 8)), w)
