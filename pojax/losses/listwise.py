r"""Listwise losses over K ranked responses per prompt: Plackett-Luce DPO, LiPO-λ, TPO, IRPO.

Each takes ``RankedLogps`` (logps, ref_logps, scores, mask all [B, K]); r = logps - ref_logps
is the implicit reward of a response, s = β·r, and ψ = ``scores`` the data's labels,
higher-is-better (a reward, a grade, or minus a rank). ``mask`` makes K ragged: masked slots may
hold any value and are ignored. How each loss treats tied labels is in its docstring.

Metrics, per prompt [B] (TRL's names where they apply, without gradient):
  rewards/chosen, rewards/rejected   β·r of the best- and the worst-scored valid response
  rewards/margins                    their difference
  rewards/accuracies                 fraction of strictly ordered valid pairs (s_i > s_j) with
                                     r_i > r_j; NaN when all scores tie (the caller's nanmean skips it)
  rewards/top1_accuracy              1 when the response of largest r has the largest score
  logps/chosen, logps/rejected       log π of the best- and the worst-scored response
For K = 2 these equal the pairwise metrics of DPO.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pojax.losses import terms
from pojax.losses.registry import register
from pojax.losses.types import LossOutput, RankedLogps


def _cast(logps: RankedLogps, name: str):
    """(r, scores, mask, policy logps): float32 [B, K] with masked slots zeroed; mask bool."""
    if logps.ref_logps is None:
        raise ValueError(
            f"loss {name!r} needs reference log-probs, but RankedLogps.ref_logps is None; set reference.mode "
            "to 'copy', 'precomputed' or 'lora_base'"
        )
    policy = terms.f32(logps.logps)
    mask = jnp.ones(policy.shape, bool) if logps.mask is None else jnp.asarray(logps.mask, bool)
    # Padded slots may hold anything (inf, NaN): zero them before any arithmetic.
    policy = jnp.where(mask, policy, 0.0)
    r = policy - jnp.where(mask, terms.f32(logps.ref_logps), 0.0)
    scores = jnp.where(mask, terms.f32(logps.scores), 0.0)
    return r, scores, mask, policy


def _neg_log_beats(s, rivals):
    r"""-log of the softmax probability that response i beats its rivals,
    log(1 + Σ_{j ∈ rivals(i), j ≠ i} e^{s_j - s_i}), as softplus(logsumexp(·)): log1p-accurate
    when the probability is near 1. rivals: [B, K, K] bool, row i. 0 where i has no rival.
    [B, K] float32."""
    k = s.shape[-1]
    eye = jnp.eye(k, dtype=bool)
    rivals = rivals & ~eye
    has_rival = jnp.any(rivals, axis=-1)
    # A row without rivals sees itself, so its logsumexp (and gradient) stays finite; dropped below.
    rivals = rivals | (eye & ~has_rival[:, :, None])
    lse = jax.nn.logsumexp(jnp.where(rivals, s[:, None, :] - s[:, :, None], -jnp.inf), axis=-1)
    return jnp.where(has_rival, jax.nn.softplus(lse), 0.0)


def _take(x, index):
    return jnp.take_along_axis(x, index[:, None], axis=-1)[:, 0]


def _metrics(beta, r, scores, mask, policy) -> dict:
    sg = jax.lax.stop_gradient
    r, policy = sg(r), sg(policy)
    best = jnp.argmax(jnp.where(mask, scores, -jnp.inf), axis=-1)
    worst = jnp.argmin(jnp.where(mask, scores, jnp.inf), axis=-1)
    chosen, rejected = beta * _take(r, best), beta * _take(r, worst)
    ordered = mask[:, :, None] & mask[:, None, :] & (scores[:, :, None] > scores[:, None, :])
    n_ordered = jnp.sum(ordered, axis=(1, 2))
    n_right = jnp.sum(ordered & (r[:, :, None] > r[:, None, :]), axis=(1, 2))
    top = jnp.argmax(jnp.where(mask, r, -jnp.inf), axis=-1)
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "rewards/accuracies": jnp.where(n_ordered > 0, n_right / jnp.maximum(n_ordered, 1), jnp.nan),
        "rewards/top1_accuracy": (_take(scores, top) == _take(scores, best)).astype(jnp.float32),
        "logps/chosen": _take(policy, best),
        "logps/rejected": _take(policy, worst),
    }


@register("plackett_luce")
def plackett_luce(logps: RankedLogps, *, beta=0.1) -> LossOutput:
    r"""DPO under the Plackett-Luce model (Rafailov et al., arXiv 2305.18290, Appendix A.3):
    the negative log-likelihood of the ranking τ (by score, best first) of K responses,

    L = -Σ_k log [ exp(β r_τ(k)) / Σ_{j ≥ k} exp(β r_τ(j)) ]
      =  Σ_k log(1 + Σ_{j ≠ τ(k): ψ_j ≤ ψ_τ(k)} exp(β r_j - β r_τ(k))).

    K = 2 is sigmoid DPO. Ties: Breslow's convention from survival analysis, every response
    tied with τ(k) stays in the denominator of position k, so tied responses are treated
    symmetrically (with all labels distinct this is exactly the first line).

    Args:
      logps: RankedLogps with ref_logps; [B, K] each.
      beta: β.
    Returns:
      LossOutput with loss [B] float32 and the listwise metrics (module docstring).
    """
    r, scores, mask, policy = _cast(logps, "plackett_luce")
    # Response j is still unplaced when k is placed: s_j ≤ s_k (ties included, Breslow).
    unplaced = mask[:, None, :] & (scores[:, None, :] <= scores[:, :, None])
    loss = jnp.sum(jnp.where(mask, _neg_log_beats(beta * r, unplaced), 0.0), axis=-1)
    return LossOutput(loss=loss, metrics=_metrics(beta, r, scores, mask, policy))


def _lambda_loss(s, psi, mask):
    r"""Σ_{ψ_i > ψ_j} Δ_ij log(1 + e^{-(s_i - s_j)}), Δ_ij = |G_i - G_j| |1/D(τ_i) - 1/D(τ_j)|,
    G = 2^ψ - 1, D(τ) = log2(1 + τ), τ the rank under s (1 = best; ties by position; no
    gradient). [B] float32."""
    key = jnp.where(mask, jax.lax.stop_gradient(s), -jnp.inf)
    k = s.shape[-1]
    earlier = jnp.arange(k)[None, :] < jnp.arange(k)[:, None]  # [i, j]: j comes before i
    ahead = mask[:, None, :] & ((key[:, None, :] > key[:, :, None]) | ((key[:, None, :] == key[:, :, None]) & earlier))
    rank = 1.0 + jnp.sum(ahead, axis=-1)
    gain = jnp.expm1(psi * jnp.log(2.0))
    discount = 1.0 / jnp.log2(1.0 + rank)
    delta = jnp.abs(gain[:, :, None] - gain[:, None, :]) * jnp.abs(discount[:, :, None] - discount[:, None, :])
    pairs = mask[:, :, None] & mask[:, None, :] & (psi[:, :, None] > psi[:, None, :])
    logistic = jax.nn.softplus(-(s[:, :, None] - s[:, None, :]))  # -log σ(s_i - s_j)
    return jnp.sum(jnp.where(pairs, delta * logistic, 0.0), axis=(1, 2))


def _lambda_output(logps: RankedLogps, beta, name: str) -> LossOutput:
    r, scores, mask, policy = _cast(logps, name)
    return LossOutput(loss=_lambda_loss(beta * r, scores, mask), metrics=_metrics(beta, r, scores, mask, policy))


@register("lipo")
def lipo(logps: RankedLogps, *, beta=0.1) -> LossOutput:
    r"""LiPO-λ (Liu et al., arXiv 2402.01878): the LambdaLoss over the list,

    L = Σ_{ψ_i > ψ_j} Δ_ij · -log σ(s_i - s_j),   s = β(log π - log π_ref),
    Δ_ij = |G_i - G_j| · |1/D(τ(i)) - 1/D(τ(j))|,  G_i = 2^{ψ_i} - 1,  D(τ) = log2(1 + τ),

    with ψ = ``scores`` the labels and τ(i) the rank of response i under the current s
    (1 = best, ties by position in the list, no gradient). D is the DCG discount; another log
    base scales L by a constant. For K = 2, L = (2^{ψ_1} - 2^{ψ_2})(1 - 1/log2 3) times the
    pairwise logistic (DPO) loss of the better-scored response. Tied labels form no pair.

    Args:
      logps: RankedLogps with ref_logps; scores are the labels ψ (gains 2^ψ - 1: keep ψ ≲ 100).
      beta: β.
    Returns:
      LossOutput with loss [B] float32 and the listwise metrics (module docstring).
    """
    return _lambda_output(logps, beta, "lipo")


@register("tpo")
def tpo(logps: RankedLogps, *, beta=0.1) -> LossOutput:
    r"""TPO's Preference List Ranking objective (Liao et al., "TPO: Aligning Large Language Models
    with Multi-branch & Multi-step Preference Trees", arXiv 2410.12854): the responses of a
    preference tree, with their scores v, as one ranked list under the lambda-weighted
    pairwise logistic loss (the LambdaLoss, as ``lipo``):

    L = Σ_{v_i > v_j} Δ_ij · -log σ(r̂_i - r̂_j),  r̂ = β(log π - log π_ref).

    TPO's Adaptive Step Reward (Eq. 10) reweights the step log-ratios of each response by the
    semantic similarity of its steps to the preferred response's, which needs step boundaries
    and hidden states: a trainer that implements it passes the adjusted log-likelihoods as
    ``RankedLogps.logps`` (with ``ref_logps`` to match). Without it, TPO is ``lipo`` on trees.

    Args:
      logps: RankedLogps with ref_logps; scores are the tree's values v.
      beta: β.
    Returns:
      LossOutput with loss [B] float32 and the listwise metrics (module docstring).
    """
    return _lambda_output(logps, beta, "tpo")


@register("irpo")
def irpo(logps: RankedLogps, *, beta=0.1) -> LossOutput:
    r"""IRPO, In-context Ranking Preference Optimization (Wu et al., arXiv 2504.15477): a
    positional preference model, the probability that the item at position i beats all others,

    p_i = σ(-log Σ_{j ≠ i} exp(s_j - s_i)),  s = β(log π - log π_ref),

    aggregated with graded relevance g_i = ``scores`` and the DCG position discount:

    L = -Σ_i g_i / log2(1 + i) · log p_i = Σ_i g_i / log2(1 + i) · softplus(logsumexp_{j≠i}(s_j - s_i)).

    Position i is the response's place in the list as given (1-based among the valid slots):
    IRPO's lists are the model's in-context rankings, so pass them in generated order. The
    relevance grades must be ≥ 0 (irrelevant responses: 0, they then act only as negatives).
    Ties need no convention. K = 2 with grades (1, 0) is sigmoid DPO.

    Args:
      logps: RankedLogps with ref_logps; scores are the relevance grades g ≥ 0.
      beta: β.
    Returns:
      LossOutput with loss [B] float32 and the listwise metrics (module docstring).
    """
    r, scores, mask, policy = _cast(logps, "irpo")
    position = jnp.cumsum(mask, axis=-1).astype(jnp.float32)
    weight = scores / jnp.log2(1.0 + position)
    others = jnp.broadcast_to(mask[:, None, :], mask.shape + mask.shape[-1:])
    loss = jnp.sum(jnp.where(mask, weight * _neg_log_beats(beta * r, others), 0.0), axis=-1)
    return LossOutput(loss=loss, metrics=_metrics(beta, r, scores, mask, policy))
