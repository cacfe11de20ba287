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


# ---------------------------------------------------------------- CLLM's terms (label smoothing, mask)
# References written from hao-ai-lab/Consistency_LLM @ 2277536 (cllm/cllm_trainer_global.py,
# CllmTrainer.consistency_training_step and soft_cross_entropy) and the transformers LabelSmoother it
# calls, one example at a time (CLLM trains with one example per device), in float64 on full logits.

IGNORE = -100


def _np_label_smoothed_ar(logits_TV, labels_T, epsilon):
    """LabelSmoother(epsilon)(logits, labels, shift_labels=True) of one row: labels IGNORE are left out."""
    logits, labels = np.asarray(logits_TV, np.float64)[:-1], np.asarray(labels_T)[1:]
    neg_logp = -_np_log_softmax(logits)                       # [T-1, V]
    ignored = labels == IGNORE
    nll = np.where(ignored, 0.0, neg_logp[np.arange(labels.size), np.clip(labels, 0, None)])
    smoothed = np.where(ignored, 0.0, neg_logp.sum(-1))
    active = labels.size - ignored.sum()
    return (1 - epsilon) * nll.sum() / active + epsilon * smoothed.sum() / (active * neg_logp.shape[-1])


def _np_cllm_consistency(state_logits_TV, target_logits_TV, state_T, target_T, pad_id):
    """CLLM's global consistency loss of one row: soft cross-entropy of the target's softmax against the
    state's log-softmax at logit positions 0 .. T-2, leaving out the positions whose next state token is
    padding and every position before the first index where state[1:] and target[1:] differ."""
    state_T, target_T = np.asarray(state_T), np.asarray(target_T)
    left_out = state_T[1:] == pad_id
    differ = np.nonzero(state_T[1:] != target_T[1:])[0]
    if differ.size == 0:
        left_out[:] = True
    else:
        left_out[:differ[0]] = True
    if (~left_out).sum() == 0:
        return 0.0
    logq = _np_log_softmax(np.asarray(state_logits_TV)[:-1])
    p = np.exp(_np_log_softmax(np.asarray(target_logits_TV)[:-1]))
    ce = np.where(left_out[:, None], 0.0, -p * logq)
    return ce.sum() / (~left_out).sum()


def _cllm_rows(seed=6):
    """[prompt | N response tokens | PAD_TAIL pads] with pad id 0 in the padding only; the states agree
    with the target on 0, 3 and all N response tokens, then differ."""
    target, _, mask = _rows(seed)
    target = np.asarray(target)
    state = target.copy()
    rng = np.random.default_rng(seed)
    for b, agree in enumerate((0, 3, N)):
        for j in range(agree, N):
            state[b, P + j] = 3 + (target[b, P + j] - 3 + int(rng.integers(1, V - 3))) % (V - 3)  # != target
    return jnp.asarray(target), jnp.asarray(state), mask


def _peaked(model, target, state, scale=8.0):
    """(target hidden states, state hidden states, head × scale): a random aligner's near-uniform
    distributions made peaked, so that smoothing and masking move the loss well above rounding."""
    return model.hidden_states(target), model.hidden_states(state), model.lm_head_weight() * scale


def test_label_smoothed_ar_matches_the_label_smoother_reference():
    """L_AR with ε = 0.1 equals (1-ε)·NLL + ε·mean over positions and vocabulary of -log q on the response
    tokens; ε = 0 is the old plain NLL, which the reference at ε = 0.1 does not match."""
    model = _model(6)
    target, state, mask = _cllm_rows()
    h_t, h_s, w = _peaked(model, target, state)
    logits = np.einsum("btd,dv->btv", np.asarray(h_t, np.float64), np.asarray(w, np.float64))
    labels = np.where(np.asarray(mask), np.asarray(target), IGNORE)  # the response tokens are the labels
    ref = np.array([_np_label_smoothed_ar(logits[b], labels[b], 0.1) for b in range(labels.shape[0])])
    _, m = diffpo_loss(h_t, h_s, w, target, mask, label_smoothing=0.1, chunk_size=4)
    np.testing.assert_allclose(m["diffpo/ar"], ref, rtol=1e-5)
    plain = np.array([_np_label_smoothed_ar(logits[b], labels[b], 0.0) for b in range(labels.shape[0])])
    np.testing.assert_allclose(m["diffpo/nll"], plain, rtol=1e-5)
    _, old = diffpo_loss(h_t, h_s, w, target, mask, chunk_size=4)  # ε = 0: the behaviour before
    np.testing.assert_allclose(old["diffpo/ar"], plain, rtol=1e-5)
    assert np.all(np.abs(old["diffpo/ar"] - ref) > 1e-3 * ref)


def test_label_smoothed_ar_matches_transformers_label_smoother():
    import torch
    from transformers.trainer_pt_utils import LabelSmoother

    model = _model(7)
    target, state, mask = _cllm_rows(7)
    h_t, h_s, w = _peaked(model, target, state)
    logits = np.einsum("btd,dv->btv", np.asarray(h_t), np.asarray(w)).astype(np.float32)
    labels = np.where(np.asarray(mask), np.asarray(target), IGNORE)
    smoother = LabelSmoother(epsilon=0.1, ignore_index=IGNORE)
    ref = [float(smoother({"logits": torch.as_tensor(logits[b:b + 1])}, torch.as_tensor(labels[b:b + 1]),
                          shift_labels=True)) for b in range(labels.shape[0])]
    _, m = diffpo_loss(h_t, h_s, w, target, mask, label_smoothing=0.1)
    np.testing.assert_allclose(m["diffpo/ar"], ref, rtol=1e-5)


@pytest.mark.parametrize("kind", ["soft_ce", "kl"])
def test_first_difference_mask_matches_cllm_consistency(kind):
    """With consistency_mask='first_difference' and soft_ce, L_cons is CLLM's consistency loss row by row
    (the state equal to its target scores 0); the old all-response mask does not match it. With kl the
    divergence is CLLM's minus the target's entropy on the same positions."""
    model = _model(8)
    target, state, mask = _cllm_rows(8)
    h_t, h_s, w = _peaked(model, target, state)
    lt, ls = (np.einsum("btd,dv->btv", np.asarray(h, np.float64), np.asarray(w, np.float64)) for h in (h_t, h_s))
    ref = np.array([_np_cllm_consistency(ls[b], lt[b], state[b], target[b], pad_id=0) for b in range(3)])
    if kind == "kl":
        logp = _np_log_softmax(lt)
        ent = -np.sum(np.exp(logp) * logp, -1)[:, :-1]  # [B, T-1]
        for b, agree in enumerate((0, 3, N)):
            if agree < N:
                kept = np.arange(P - 1 + agree, P + N - 1)  # logit positions from the first differing token on
                ref[b] -= ent[b, kept].mean()
    _, m = diffpo_loss(h_t, h_s, w, target, mask, kind=kind, consistency_mask="first_difference", state_ids_BT=state,
                       chunk_size=4)
    np.testing.assert_allclose(m["diffpo/consistency"], ref, rtol=1e-4, atol=1e-6)
    assert float(m["diffpo/consistency"][2]) == 0.0
    _, old = diffpo_loss(h_t, h_s, w, target, mask, kind=kind, chunk_size=4)  # every response position
    assert abs(float(old["diffpo/consistency"][1]) - ref[1]) > 0.05 * ref[1]  # row 1 agrees on 3 tokens first
    # the model path passes its state rows: the same mask
    _, via_model = diffpo_model_loss(model, target, state, mask, kind=kind, consistency_mask="first_difference")
    _, direct = diffpo_loss(h_t, h_s, w / 8.0, target, mask, kind=kind, consistency_mask="first_difference",
                            state_ids_BT=state)
    np.testing.assert_allclose(via_model["diffpo/consistency"], direct["diffpo/consistency"], rtol=1e-5, atol=1e-7)


def test_cllm_options_chunked_jitted_and_differentiable():
    model = _model(9)
    target, state, mask = _cllm_rows(9)
    h_t, h_s, w = model.hidden_states(target), model.hidden_states(state), model.lm_head_weight()
    kw = {"omega": 0.1, "kind": "soft_ce", "label_smoothing": 0.1, "consistency_mask": "first_difference"}
    ref = diffpo_loss(h_t, h_s, w, target, mask, state_ids_BT=state, chunk_size=1024, **kw)[0]
    for c in (1, 5):
        np.testing.assert_allclose(diffpo_loss(h_t, h_s, w, target, mask, state_ids_BT=state, chunk_size=c, **kw)[0],
                                   ref, rtol=1e-6)
    f = lambda a, b, c: jnp.sum(diffpo_loss(a, b, c, target, mask, state_ids_BT=state, chunk_size=3, **kw)[0])
    np.testing.assert_allclose(jax.jit(f)(h_t, h_s, w), jnp.sum(ref), rtol=1e-6)
    from jax.test_util import check_grads
    check_grads(lambda a, c: f(a, h_s, c), (h_t, w), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_bad_cllm_options_raise():
    h, w = jnp.zeros((1, 4, 8)), jnp.zeros((8, 5))
    ids, mask = jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), bool)
    with pytest.raises(ValueError, match="unknown consistency_mask 'prefix'; known: response, first_difference"):
        diffpo_loss(h, h, w, ids, mask, consistency_mask="prefix")
    with pytest.raises(ValueError, match="consistency_mask='first_difference' needs state_ids_BT"):
        diffpo_loss(h, h, w, ids, mask, consistency_mask="first_difference")
    with pytest.raises(ValueError, match="label_smoothing must be in \\[0, 1\\), got 1.0"):
        diffpo_loss(h, h, w, ids, mask, label_smoothing=1.0)
