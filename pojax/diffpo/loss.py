r"""DiffPO's training loss: L = L_AR + ω · L_consistency (pure array math, no model inside).

DiffPO (Chen et al., "Diffusion-styled Preference Optimization for Efficient Inference-Time
Alignment", arXiv 2503.04240) trains an aligner on trajectories y(0) … y(T) of one prompt x whose
quality increases with t; y(T) is the target of every state. Following the consistency-LLM losses
it builds on (Kou et al., CLLMs, arXiv 2403.00835: global consistency + AR loss):

.. math::
    L_{AR} = \frac{1}{|S|}\sum_{j \in S} \Big[-(1-\varepsilon) \log q_\theta(y^{(T)}_j \mid x, y^{(T)}_{<j})
             - \frac{\varepsilon}{V} \sum_{v} \log q_\theta(v \mid x, y^{(T)}_{<j})\Big]

    L_{cons} = \frac{1}{|S_c|}\sum_{j \in S_c} D\big(\mathrm{sg}[q_\theta(\cdot \mid x, y^{(T)}_{<j})]
               \,\big\|\, q_\theta(\cdot \mid x, y^{(t)}_{<j})\big)

with S the response positions, ε the label smoothing (Hugging Face's ``LabelSmoother``, which
CLLM's trainer applies with ε = 0.1; ε = 0 is the plain cross-entropy), D the KL divergence
(``kind="kl"``) or the soft cross-entropy :math:`-\sum_v p(v) \log q(v)` (``kind="soft_ce"``,
CLLM's ``soft_cross_entropy``: the KL plus the target's entropy, the same gradient), over the full
vocabulary at temperature 1, and sg the stop-gradient. S_c is S (``consistency_mask="response"``)
or, as CLLM's trainer has it (``"first_difference"``), the response positions from the first token
where y(t) and y(T) differ on: the agreeing prefix is left out (its contexts are identical: zero
KL and no gradient, so it only dilutes the mean), and a state equal to its target scores 0. Prompt and padding positions
never count.

Departures from CLLM's trainer (``cllm/cllm_trainer_global.py``, hao-ai-lab/Consistency_LLM): both
terms are per-token means per example (CLLM averages over the batch's tokens; it trains with one
example per device); L_AR scores the response tokens only (CLLM's labels are the whole row, the
prompt included); S_c is cut to the target's response tokens (CLLM drops the positions whose next
*state* token is padding, which is the same set when, as in its Jacobi trajectories, every state
fills the same block); CLLM weighs 10·L_AR + L_cons (ω = 0.1 here up to an overall scale).

Inputs are final hidden states and the LM-head weight (see pojax.likelihood.autoregressive): the
[B, C, V] float32 logits of both branches exist one sequence chunk at a time, under
``jax.checkpoint``, so memory grows with B·C·V, never B·T·V.

Conventions: row position i holds the distribution over the token at i + 1 (causal LM), so a
response token mask ``response_mask_BT`` is shifted with ``shift_targets`` before scoring.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pojax.likelihood.autoregressive import (chunked_map, head_logits, shift_targets, soft_cap_of,
                                             token_logps_from_hidden)

DIVERGENCES = ("kl", "soft_ce")
CONSISTENCY_MASKS = ("response", "first_difference")


def _chunk_divergence(h_target_BCD, h_state_BCD, w_DV, *, kind: str, logit_soft_cap):
    """Per-position D(p_target || q_state) [B, C] float32 of one chunk; the target branch is
    stop-gradient (its hidden states *and* its view of the shared head)."""
    w_target = jax.lax.stop_gradient(w_DV)
    h_target = jax.lax.stop_gradient(h_target_BCD)
    z_t = head_logits(h_target, w_target, logit_soft_cap)
    z_s = head_logits(h_state_BCD, w_DV, logit_soft_cap)
    # log-softmax via logsumexp: exact where probabilities underflow.
    logp_t = z_t - jax.nn.logsumexp(z_t, axis=-1, keepdims=True)
    logq_s = z_s - jax.nn.logsumexp(z_s, axis=-1, keepdims=True)
    p_t = jnp.exp(logp_t)
    if kind == "kl":
        return jnp.sum(p_t * (logp_t - logq_s), axis=-1)
    return -jnp.sum(p_t * logq_s, axis=-1)


def token_divergence_from_hidden(hidden_target_BTD, hidden_state_BTD, lm_head_DV, *, kind: str = "kl",
                                 chunk_size: int = 1024, logit_soft_cap: float | None = None):
    r"""Per-position :math:`D(\mathrm{sg}[p_{b,i}] \| q_{b,i})` over the full vocabulary, chunked.

    p = softmax(sg(h_target) · sg(W)), q = softmax(h_state · W); D is the KL or the soft
    cross-entropy (see the module docstring). No gradient reaches ``hidden_target_BTD`` or, through
    the target branch, ``lm_head_DV``.

    Args:
      hidden_target_BTD: [B, T, D] final hidden states of (x, y(T)), any float dtype.
      hidden_state_BTD: [B, T, D] final hidden states of (x, y(t)), same shape.
      lm_head_DV: [D, V] LM-head weight.
      kind: "kl" | "soft_ce".
      chunk_size: C sequence positions per chunk (clamped to T); temp memory ∝ B·C·V.
      logit_soft_cap: Gemma-2 style cap applied to both branches, or None.

    Returns:
      [B, T] float32, unmasked (every position, prompt and padding included).
    """
    if kind not in DIVERGENCES:
        raise ValueError(f"diffpo: unknown divergence {kind!r}; known: {', '.join(DIVERGENCES)}")
    if hidden_target_BTD.shape != hidden_state_BTD.shape:
        raise ValueError(f"diffpo: target and state hidden states differ in shape: "
                         f"{hidden_target_BTD.shape} vs {hidden_state_BTD.shape}")
    body = functools.partial(_chunk_divergence, kind=kind, logit_soft_cap=logit_soft_cap)
    body = jax.checkpoint(body, prevent_cse=False)  # backward recomputes a chunk's logits
    return chunked_map(lambda target, state: body(target, state, lm_head_DV), (hidden_target_BTD, hidden_state_BTD),
                       chunk_size)


def _chunk_uniform_nll(h_BCD, w_DV, *, logit_soft_cap):
    """Per-position -1/V · Σ_v log q(v) [B, C] float32 of one chunk: the cross-entropy against the
    uniform distribution that label smoothing mixes in (lse(z) - mean_v z, exact in float32)."""
    z = head_logits(h_BCD, w_DV, logit_soft_cap)
    return jax.nn.logsumexp(z, axis=-1) - jnp.mean(z, axis=-1)


def uniform_nll_from_hidden(hidden_BTD, lm_head_DV, *, chunk_size: int = 1024, logit_soft_cap: float | None = None):
    r"""Per-position :math:`-\frac{1}{V}\sum_v \log q_{b,i}(v)` with q = softmax(h · W), chunked:
    the smoothing part of a label-smoothed cross-entropy (Hugging Face ``LabelSmoother``'s
    ``smoothed_loss`` before its mean). Gradients reach ``hidden_BTD`` and ``lm_head_DV``.

    Args:
      hidden_BTD: [B, T, D] final hidden states, any float dtype.
      lm_head_DV: [D, V] LM-head weight.
      chunk_size: C sequence positions per chunk (clamped to T); temp memory ∝ B·C·V.
      logit_soft_cap: Gemma-2 style cap, or None.

    Returns:
      [B, T] float32, unmasked.
    """
    body = jax.checkpoint(functools.partial(_chunk_uniform_nll, logit_soft_cap=logit_soft_cap), prevent_cse=False)
    return chunked_map(lambda h: body(h, lm_head_DV), (hidden_BTD,), chunk_size)


def first_difference_mask(target_ids_BT, state_ids_BT):
    """[B, T] bool: True on the tokens at and after the first position where the state row and
    the target row differ (all False where they are equal), CLLM's consistency mask before the
    causal shift."""
    return jnp.cumsum(jnp.asarray(target_ids_BT) != jnp.asarray(state_ids_BT), axis=1) > 0


def _masked_mean(values_BT, mask_BT):
    mask = jnp.asarray(mask_BT, bool)
    total = jnp.sum(jnp.where(mask, values_BT.astype(jnp.float32), 0.0), axis=-1)
    return total / jnp.maximum(jnp.sum(mask, axis=-1).astype(jnp.float32), 1.0)


def diffpo_loss(hidden_target_BTD, hidden_state_BTD, lm_head_DV, target_ids_BT, response_mask_BT, *,
                omega: float = 1.0, kind: str = "kl", label_smoothing: float = 0.0,
                consistency_mask: str = "response", state_ids_BT=None, chunk_size: int = 1024,
                logit_soft_cap: float | None = None):
    r"""Per-example DiffPO loss :math:`L_{AR} + \omega L_{cons}` and its parts.

    Args:
      hidden_target_BTD: [B, T, D] hidden states of the target rows (x, y(T)); the AR term takes
        gradients through them, the consistency term does not.
      hidden_state_BTD: [B, T, D] hidden states of the state rows (x, y(t)), the same layout
        (prompt, then the response block, then padding, at the same positions).
      lm_head_DV: [D, V] LM-head weight.
      target_ids_BT: [B, T] int token ids of the target rows.
      response_mask_BT: [B, T] bool, True on response *tokens* (prompt and padding False); the
        scored positions are the ones predicting them (shifted by one).
      omega: ω, the weight of the consistency term (0 = plain SFT on y(T), the control).
      kind: "kl" | "soft_ce" divergence of the consistency term.
      label_smoothing: ε of L_AR, in [0, 1) (CLLM: 0.1; 0 = plain cross-entropy).
      consistency_mask: "response" (every response position) | "first_difference" (CLLM: from
        the first token where the state and the target rows differ on; needs ``state_ids_BT``).
      state_ids_BT: [B, T] int token ids of the state rows (only read by "first_difference").
      chunk_size, logit_soft_cap: as in ``token_divergence_from_hidden``.

    Returns:
      (loss [B] float32, metrics {"diffpo/ar": [B] (label-smoothed when ε > 0), "diffpo/nll": [B]
      (L_AR's plain cross-entropy), "diffpo/consistency": [B]}).

    Raises:
      ValueError: an unknown ``consistency_mask``, "first_difference" without ``state_ids_BT``,
        or ε outside [0, 1).
    """
    if consistency_mask not in CONSISTENCY_MASKS:
        raise ValueError(f"diffpo: unknown consistency_mask {consistency_mask!r}; "
                         f"known: {', '.join(CONSISTENCY_MASKS)}")
    if consistency_mask == "first_difference" and state_ids_BT is None:
        raise ValueError("diffpo: consistency_mask='first_difference' needs state_ids_BT")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"diffpo: label_smoothing must be in [0, 1), got {label_smoothing!r}")
    targets_BT, scored_BT = shift_targets(target_ids_BT, response_mask_BT)
    logps_BT = token_logps_from_hidden(hidden_target_BTD, lm_head_DV, targets_BT, chunk_size=chunk_size,
                                       logit_soft_cap=logit_soft_cap)
    nll_B = -_masked_mean(logps_BT, scored_BT)
    ar_B = nll_B
    if label_smoothing:  # a Python float: ε = 0 builds no second pass over the head
        smooth_B = _masked_mean(uniform_nll_from_hidden(hidden_target_BTD, lm_head_DV, chunk_size=chunk_size,
                                                        logit_soft_cap=logit_soft_cap), scored_BT)
        ar_B = (1.0 - label_smoothing) * nll_B + label_smoothing * smooth_B
    cons_tokens_BT = jnp.asarray(response_mask_BT, bool)
    if consistency_mask == "first_difference":
        cons_tokens_BT = cons_tokens_BT & first_difference_mask(target_ids_BT, state_ids_BT)
    _, cons_scored_BT = shift_targets(target_ids_BT, cons_tokens_BT)
    div_BT = token_divergence_from_hidden(hidden_target_BTD, hidden_state_BTD, lm_head_DV, kind=kind,
                                          chunk_size=chunk_size, logit_soft_cap=logit_soft_cap)
    cons_B = _masked_mean(div_BT, cons_scored_BT)
    return ar_B + omega * cons_B, {"diffpo/ar": ar_B, "diffpo/nll": nll_B, "diffpo/consistency": cons_B}


def diffpo_model_loss(model, target_ids_BT, state_ids_BT, response_mask_BT, *, omega: float = 1.0,
                      kind: str = "kl", label_smoothing: float = 0.0, consistency_mask: str = "response",
                      chunk_size: int = 1024):
    """``diffpo_loss`` of a pojax causal LM (anything with ``hidden_states`` and
    ``lm_head_weight``; its ``logit_soft_cap``, if any, applied): one forward on the target rows,
    one on the state rows.

    Args:
      model: the aligner.
      target_ids_BT: [B, T] int32 rows (x, y(T), padding).
      state_ids_BT: [B, T] int32 rows (x, y(t), padding), same layout.
      response_mask_BT: [B, T] bool response tokens of the target rows.
      omega, kind, label_smoothing, consistency_mask, chunk_size: as in ``diffpo_loss``.

    Returns:
      as ``diffpo_loss``.
    """
    h_target = model.hidden_states(target_ids_BT)
    h_state = model.hidden_states(state_ids_BT)
    w_DV = model.lm_head_weight().astype(h_state.dtype)
    return diffpo_loss(h_target, h_state, w_DV, target_ids_BT, response_mask_BT, omega=omega, kind=kind,
                       label_smoothing=label_smoothing, consistency_mask=consistency_mask,
                       state_ids_BT=state_ids_BT, chunk_size=chunk_size, logit_soft_cap=soft_cap_of(model))
