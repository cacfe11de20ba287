r"""Listwise losses over K ranked responses per prompt: Plackett-Luce DPO, LiPO-λ, TPO, IRPO.

Each takes ``RankedLogps`` (logps, ref_logps, scores, mask all [B, K]); r = logps - ref_logps
is the implicit reward of a response (``tpo``: divided by RankedLogps.length), s = β·r, and
ψ = ``scores`` the data's labels, higher-is-better (a reward, a grade, or minus a rank).
``mask`` makes K ragged: masked slots may hold any value and are ignored. How each loss treats
tied labels is in its docstring.

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
def tpo(logps: RankedLogps, *, beta=0.1, tpo_published_sign=False) -> LossOutput:
    r"""TPO, Tree Preference Optimization (Liao et al., arXiv 2410.12854), as its authors' code
    computes the loss (github.com/MrBlankness/TPO at ba87a23, loss.py: ``lambda_rank_loss``,
    ``TPOLoss.forward``): a pairwise logistic loss over every ordered pair of the K responses,
    without λ weights, averaged, then passed through DPO's -log σ(β ·):

    r_k = (log π(y_k) - log π_ref(y_k)) / |y_k|                      (token-mean log-ratio)
    ℓ   = 1/(K(K-1)) Σ_{i=1..K} Σ_{j=1..K} -log σ((r_i - r_j) · sign(ψ_i - ψ_j))
    L   = -log σ(-β ℓ)

    with ψ = ``scores`` (higher is better; the authors' trees score the reference answer 100).
    The double sum covers all K² ordered entries: i = j and tied labels have sign 0 and add
    log 2 each (no gradient), so at π = π_ref ℓ = K/(K-1) · log 2 and L = log(1 + 2^{βK/(K-1)}).
    Each strictly ordered pair counts twice (once per direction). β scales ℓ, not the rewards.
    The λ-weighted LambdaLoss this name ran before (an earlier reading of the paper) is ``lipo``.

    Departures from the published code, and why:
      1. Sign: the published ``TPOLoss`` returns -log σ(+β ℓ), which decreases as the ranking
         loss ℓ grows, so gradient descent orders the rewards against the labels (running
         its functions: the gradient on the best response's reward is positive). pojax
         negates the argument; ``tpo_published_sign=True`` gives the published -log σ(β ℓ).
      2. Reward: the authors' Adaptive Step Reward is Σ_s w_s m_s / Σ_s w_s, with m_s the mean
         token log-ratio of step s (steps 1..S, S the fewest steps among the K responses, later
         steps merged into step S) and w_s = 1 + cos(mean last-layer policy hidden state of
         step s, the same for the list's first response), with gradient through w. pojax's
         ranked rows carry no step boundaries and a loss never calls the model, so each
         completion is one step: w cancels and r_k is the token mean, exact for S = 1. To use
         step-weighted rewards, pass Σ_s w_s m_s / Σ_s w_s of the policy and of the reference
         as ``logps`` / ``ref_logps`` (the reward is linear in them) with ``length`` = 1.
      3. Token log-probs: the published ``compute_tpo_logprobs`` takes every token's log-prob
         from the first position's distribution (its gather index has shape [N, 1, T]) without
         shifting targets; pojax's are the usual log π(y_t | x, y_<t).
      4. Batch: the published code averages ℓ over the batch before -log σ(β ·); pojax applies
         it per prompt (the loss contract). Equal at the batch size 1 of their tpo_train.py.
      5. A prompt with fewer than 2 valid responses has loss 0 (published: division by zero).
    β: ``TPOLoss``'s default 0.1; their tpo_train.py trains with 0.5.

    Args:
      logps: RankedLogps [B, K] with ref_logps and length (completion token counts); scores
        are the labels ψ; mask for ragged K (K = the valid responses of each prompt).
      beta: β, the scale of ℓ inside the outer log-sigmoid.
      tpo_published_sign: True for the published code's -log σ(+β ℓ) (reproduction only).
    Returns:
      LossOutput with loss [B] float32, the listwise metrics (module docstring; r is the
      token-mean log-ratio) and ``loss/rank`` [B], ℓ.
    """
    r, scores, mask, policy = _cast(logps, "tpo")
    n = jnp.where(mask, terms.lengths(logps.length, "tpo", "RankedLogps.length"), 1.0)
    r = r / n
    valid = mask[:, :, None] & mask[:, None, :]
    sign = jnp.sign(scores[:, :, None] - scores[:, None, :])
    neg_log_sig = jax.nn.softplus(-(r[:, :, None] - r[:, None, :]) * sign)  # -log σ(x) = softplus(-x), stable
    k = jnp.sum(mask, axis=-1).astype(jnp.float32)
    rank = jnp.sum(jnp.where(valid, neg_log_sig, 0.0), axis=(1, 2)) / jnp.maximum(k * (k - 1.0), 1.0)
    z = beta * rank if tpo_published_sign else -beta * rank
    loss = jnp.where(k >= 2, -jax.nn.log_sigmoid(z), 0.0)
    metrics = _metrics(beta, r, scores, mask, policy)
    metrics["loss/rank"] = jax.lax.stop_gradient(rank)
    return LossOutput(loss=loss, metrics=metrics)


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
