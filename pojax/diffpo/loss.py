r"""DiffPO's training loss: L = L_AR + ω · L_consistency (pure array math, no model inside).

DiffPO (Chen et al., "Diffusion-styled Preference Optimization for Efficient Inference-Time
Alignment", arXiv 2503.04240) trains an aligner on trajectories y(0) … y(T) of one prompt x whose
quality increases with t; y(T) is the target of every state. Following the consistency-LLM losses
it builds on (Kou et al., CLLMs, arXiv 2403.00835: global consistency + AR loss):

.. math::
    L_{AR} = -\frac{1}{N}\sum_{j} \log q_\theta(y^{(T)}_j \mid x, y^{(T)}_{<j})

    L_{cons} = \frac{1}{N}\sum_{j} D\big(\mathrm{sg}[q_\theta(\cdot \mid x, y^{(T)}_{<j})]
               \,\big\|\, q_\theta(\cdot \mid x, y^{(t)}_{<j})\big)

with N the response length, D the KL divergence (``kind="kl"``) or the soft cross-entropy
:math:`-\sum_v p(v) \log q(v)` (``kind="soft_ce"``, equal to the KL plus the target's entropy,
which has no gradient), over the full vocabulary, and sg the stop-gradient. Both sums run over
response positions only: prompt and padding positions never count. Departure: both terms are
per-token means per example (CLLMs average over the batch's tokens); the caller averages over the
batch.

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


def _masked_mean(values_BT, mask_BT):
    mask = jnp.asarray(mask_BT, bool)
    total = jnp.sum(jnp.where(mask, values_BT.astype(jnp.float32), 0.0), axis=-1)
    return total / jnp.maximum(jnp.sum(mask, axis=-1).astype(jnp.float32), 1.0)


def diffpo_loss(hidden_target_BTD, hidden_state_BTD, lm_head_DV, target_ids_BT, response_mask_BT, *,
                omega: float = 1.0, kind: str = "kl", chunk_size: int = 1024,
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
      chunk_size, logit_soft_cap: as in ``token_divergence_from_hidden``.

    Returns:
      (loss [B] float32, metrics {"diffpo/ar": [B], "diffpo/consistency": [B]}).
    """
    targets_BT, scored_BT = shift_targets(target_ids_BT, response_mask_BT)
    logps_BT = token_logps_from_hidden(hidden_target_BTD, lm_head_DV, targets_BT, chunk_size=chunk_size,
                                       logit_soft_cap=logit_soft_cap)
    ar_B = -_masked_mean(logps_BT, scored_BT)
    div_BT = token_divergence_from_hidden(hidden_target_BTD, hidden_state_BTD, lm_head_DV, kind=kind,
                                          chunk_size=chunk_size, logit_soft_cap=logit_soft_cap)
    cons_B = _masked_mean(div_BT, scored_BT)
    return ar_B + omega * cons_B, {"diffpo/ar": ar_B, "diffpo/consistency": cons_B}


def diffpo_model_loss(model, target_ids_BT, state_ids_BT, response_mask_BT, *, omega: float = 1.0,
                      kind: str = "kl", chunk_size: int = 1024):
    """``diffpo_loss`` of a pojax causal LM (anything with ``hidden_states`` and
    ``lm_head_weight``; its ``logit_soft_cap``, if any, applied): one forward on the target rows,
    one on the state rows.

    Args:
      model: the aligner.
      target_ids_BT: [B, T] int32 rows (x, y(T), padding).
      state_ids_BT: [B, T] int32 rows (x, y(t), padding), same layout.
      response_mask_BT: [B, T] bool response tokens of the target rows.

    Returns:
      as ``diffpo_loss``.
    """
    h_target = model.hidden_states(target_ids_BT)
    h_state = model.hidden_states(state_ids_BT)
    w_DV = model.lm_head_weight().astype(h_state.dtype)
    return diffpo_loss(h_target, h_state, w_DV, target_ids_BT, response_mask_BT, omega=omega, kind=kind,
                       chunk_size=chunk_size, logit_soft_cap=soft_cap_of(model))
