r"""Per-position KL divergence between a reference and a policy over the full vocabulary (TDPO).

    KL_t = KL(π_ref(·|x, y_<t) ‖ π(·|x, y_<t)) = Σ_v q_t(v) (log q_t(v) − log p_t(v)),
    q_t = softmax(h^ref_t W_ref),  p_t = softmax(h_t W)

Token-level DPO (Zeng et al., arXiv 2404.11999, Eq. 19: the sequential KL D_SeqKL is the sum of
these over the completion). Both full next-token distributions are needed, which is why this lives
next to the chunked log-probs of ``pojax.likelihood.autoregressive`` rather than in a loss.

Memory: the sequence is cut into chunks of C positions; each chunk builds its two [B, C, V] fp32
logit blocks inside ``jax.checkpoint`` under ``jax.lax.map``, so the backward pass recomputes them
chunk by chunk and no [B, T, V] tensor ever exists. The gradient flows to the policy's hidden states
and head only (the reference's are stopped): dKL_t/dz_t = p_t − q_t.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pojax.likelihood.autoregressive import chunked_map, head_logits


def _chunk_kl(h_BCD, w_DV, r_BCD, wr_DV, logit_soft_cap):
    """[B, C] float32 KL(q ‖ p) of one sequence chunk."""
    log_p = jax.nn.log_softmax(head_logits(h_BCD, w_DV, logit_soft_cap), axis=-1)
    log_q = jax.nn.log_softmax(head_logits(r_BCD, wr_DV, logit_soft_cap), axis=-1)
    # q·(log q − log p) with q = exp(log q): a zero-probability column contributes exactly 0.
    return jnp.sum(jnp.exp(log_q) * (log_q - log_p), axis=-1)


def token_kl_from_hidden(policy_hidden_BTD, policy_head_DV, ref_hidden_BTD, ref_head_DV, *,
                         chunk_size: int = 1024, logit_soft_cap: float | None = None):
    r"""KL(π_ref(·|h^ref_t) ‖ π(·|h_t)) at every position, chunked over the sequence.

    .. math:: \mathrm{KL}_{b,t} = \sum_v q_{b,t}(v)\,[\log q_{b,t}(v) - \log p_{b,t}(v)]

    with p = softmax(h W) (policy) and q = softmax(h^ref W_ref) (reference, no gradient).
    TDPO's per-token term (arXiv 2404.11999, Eq. 19). Positions are those of the hidden
    states: position t is the distribution of the token *after* it, aligned with
    ``autoregressive.shift_targets``. Temp memory ∝ B·C·V fp32 per chunk (twice: both models).

    Args:
      policy_hidden_BTD: [B, T, D] final hidden states of the policy (float32 or bfloat16).
      policy_head_DV: [D, V] the policy's LM-head weight.
      ref_hidden_BTD: [B, T, Dr] final hidden states of the reference (same tokens).
      ref_head_DV: [Dr, V] the reference's LM-head weight (same vocabulary V).
      chunk_size: C, sequence positions per chunk (clamped to T).
      logit_soft_cap: Gemma-2 style cap applied to both models' logits; None: no cap.

    Returns:
      [B, T] float32, ≥ 0 up to rounding; differentiable w.r.t. the policy's arguments.
    """
    b, t, _ = policy_hidden_BTD.shape
    if ref_hidden_BTD.shape[:2] != (b, t):
        raise ValueError(f"token_kl_from_hidden: reference hidden states {ref_hidden_BTD.shape} do not match the "
                         f"policy's {policy_hidden_BTD.shape} in [B, T]")
    if policy_head_DV.shape[1] != ref_head_DV.shape[1]:
        raise ValueError(f"token_kl_from_hidden: vocabularies differ (policy {policy_head_DV.shape[1]}, "
                         f"reference {ref_head_DV.shape[1]})")
    ref_hidden_BTD = jax.lax.stop_gradient(ref_hidden_BTD)
    ref_head_DV = jax.lax.stop_gradient(ref_head_DV)
    # checkpoint: the backward pass keeps only each chunk's inputs and rebuilds its logits.
    chunk = jax.checkpoint(lambda h, w, r, wr: _chunk_kl(h, w, r, wr, logit_soft_cap))
    return chunked_map(lambda h, r: chunk(h, policy_head_DV, r, ref_head_DV), (policy_hidden_BTD, ref_hidden_BTD),
                       chunk_size)


def token_kl(policy, reference, input_ids_BT, *, chunk_size: int = 1024):
    """Per-position KL(π_ref ‖ π) [B, T] float32 of two pojax causal LMs on the same tokens
    (``model.hidden_states`` + ``model.lm_head_weight()``, duck-typed as in
    ``autoregressive.token_logps``)."""
    h = policy.hidden_states(input_ids_BT)
    r = reference.hidden_states(input_ids_BT)
    return token_kl_from_hidden(h, policy.lm_head_weight().astype(h.dtype), r,
                                reference.lm_head_weight().astype(r.dtype), chunk_size=chunk_size)
