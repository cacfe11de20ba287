r"""Reference-free pairwise losses: CPO (and its hinge / IPO forms), SimPO, ORPO, ASFT.

They read only the policy's log-likelihoods (``PairLogps.ref_*`` may be None). Names and
defaults follow ``trl.experimental.cpo.CPOConfig`` / ``trl.experimental.orpo.ORPOConfig``.
The NLL terms (``cpo_alpha``, ORPO's and ASFT's SFT term) are TRL's token-averaged NLL of the
batch's chosen completions, added to every example (``terms.chosen_nll``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pojax.losses import terms
from pojax.losses.modifiers import cast_pair
from pojax.losses.registry import register
from pojax.losses.types import LossOutput, PairLogps


def _avg(logps: PairLogps, name: str):
    n_w = terms.lengths(logps.chosen_len, name, "PairLogps.chosen_len")
    n_l = terms.lengths(logps.rejected_len, name, "PairLogps.rejected_len")
    return logps.chosen / n_w, logps.rejected / n_l


def _alphapo_reward(logp, alpha):
    """AlphaPO's reward shape r = (1 - p^{-α}) / α (α = 0: r = log p), exponent clamped at 80."""
    if alpha == 0.0:
        return logp
    return (1.0 - jnp.exp(jnp.minimum(-alpha * logp, 80.0))) / alpha


def _cpo_family(logps, name, *, normalize, beta, cpo_alpha, alpha, per_example):
    logps = cast_pair(logps)
    lw, ll = _avg(logps, name) if normalize else (logps.chosen, logps.rejected)
    r_w, r_l = _alphapo_reward(lw, alpha), _alphapo_reward(ll, alpha)
    loss = per_example(r_w - r_l)
    metrics = terms.pair_metrics(beta * r_w, beta * r_l, lw, ll)
    if cpo_alpha != 0.0:
        nll = terms.chosen_nll(logps, name)
        loss = loss + cpo_alpha * nll
        metrics["nll_loss"] = jax.lax.stop_gradient(nll)
    return LossOutput(loss=loss, metrics=metrics)


@register("cpo", reference_free=True)
def cpo(logps: PairLogps, *, beta=0.1, label_smoothing=0.0, cpo_alpha=1.0, alpha=0.0) -> LossOutput:
    r"""CPO (Xu et al., arXiv 2401.08417, Eq. 3 plus the BC regularizer of Eq. 5).

    L = -(1-ε) log σ(β(r_w - r_l)) - ε log σ(-β(r_w - r_l)) + cpo_alpha · NLL(y_w),
    r = log π(y|x) summed over tokens, or AlphaPO's (1 - p^{-α})/α when ``alpha`` ≠ 0
    (arXiv 2501.03884). As TRL's CPOTrainer, the BC term is on by default (cpo_alpha = 1).
    """
    return _cpo_family(
        logps, "cpo", normalize=False, beta=beta, cpo_alpha=cpo_alpha, alpha=alpha,
        per_example=lambda d: terms.smoothed_logistic(beta * d, label_smoothing),
    )


@register("cpo_hinge", reference_free=True)
def cpo_hinge(logps: PairLogps, *, beta=0.1, cpo_alpha=1.0, alpha=0.0) -> LossOutput:
    r"""CPO with TRL's ``loss_type="hinge"``: L = max(0, 1 - β(r_w - r_l)) + cpo_alpha · NLL(y_w)."""
    return _cpo_family(
        logps, "cpo_hinge", normalize=False, beta=beta, cpo_alpha=cpo_alpha, alpha=alpha,
        per_example=lambda d: jax.nn.relu(1.0 - beta * d),
    )


@register("cpo_ipo", reference_free=True)
def cpo_ipo(logps: PairLogps, *, beta=0.1, cpo_alpha=1.0, alpha=0.0) -> LossOutput:
    r"""CPO with TRL's ``loss_type="ipo"`` (arXiv 2310.12036, Eq. 17, no reference):
    L = (r̄_w - r̄_l - 1/(2β))² + cpo_alpha · NLL(y_w), r̄ from per-token average log-probs."""
    return _cpo_family(
        logps, "cpo_ipo", normalize=True, beta=beta, cpo_alpha=cpo_alpha, alpha=alpha,
        per_example=lambda d: (d - 1.0 / (2.0 * beta)) ** 2,
    )


@register("simpo", reference_free=True)
def simpo(logps: PairLogps, *, beta=0.1, simpo_gamma=0.5, label_smoothing=0.0, cpo_alpha=0.0, alpha=0.0) -> LossOutput:
    r"""SimPO (Meng et al., arXiv 2405.14734, Eq. 6): length-normalized, reference-free, margin γ.

    L = -(1-ε) log σ(β(r̄_w - r̄_l) - γ) - ε log σ(-(β(r̄_w - r̄_l) - γ)) + cpo_alpha · NLL(y_w),
    r̄ = (1/|y|) log π(y|x). TRL's defaults (β = 0.1, γ = 0.5); the paper uses β ≈ 2–2.5.
    Unlike TRL's CPOTrainer (cpo_alpha = 1 by default, i.e. CPO-SimPO), the BC term is off by
    default, as in the SimPO paper; set ``cpo_alpha`` for CPO-SimPO.
    """
    return _cpo_family(
        logps, "simpo", normalize=True, beta=beta, cpo_alpha=cpo_alpha, alpha=alpha,
        per_example=lambda d: terms.smoothed_logistic(beta * (d - simpo_gamma / beta), label_smoothing),
    )


@register("orpo", reference_free=True)
def orpo(logps: PairLogps, *, beta=0.1) -> LossOutput:
    r"""ORPO (Hong et al., arXiv 2403.07691, Eqs. 4–7), λ = β as in TRL:

    L = NLL(y_w) - β log σ(log odds(y_w) - log odds(y_l)),  odds(y) = p̄ / (1 - p̄),
    p̄ = exp((1/|y|) log π(y|x)).

    Departure from TRL's experimental ORPOTrainer: its NLL also covers the prompt tokens;
    pojax's covers the completion only (PairLogps holds completion log-likelihoods), as the
    paper's L_SFT on the response.
    """
    logps = cast_pair(logps)
    lw, ll = _avg(logps, "orpo")
    lo = (lw - ll) - (terms.log1mexp(lw) - terms.log1mexp(ll))
    ratio = jax.nn.log_sigmoid(lo)
    nll = terms.chosen_nll(logps, "orpo")
    metrics = terms.pair_metrics(beta * lw, beta * ll, lw, ll)
    sg = jax.lax.stop_gradient
    metrics.update({"nll_loss": sg(nll), "log_odds_ratio": sg(ratio), "log_odds_chosen": sg(lo)})
    return LossOutput(loss=nll - beta * ratio, metrics=metrics)


@register("asft", reference_free=True)
def asft(logps: PairLogps, *, beta=1.0, asft_lambda=1.0) -> LossOutput:
    r"""ASFT (Wang et al., arXiv 2409.10571): SFT plus a pointwise, reference-free alignment term
    on the absolute (length-normalized) likelihood of each response:

    L = NLL(y_w) - λ [log σ(β · log odds(y_w)) + log σ(-β · log odds(y_l))],
    odds(y) = p̄ / (1 - p̄), p̄ = exp((1/|y|) log π(y|x)).

    β = 1 is the original ASFT, where σ(log odds) = p̄ and the term is -log p̄_w - log(1 - p̄_l);
    β ≠ 1 is the unified β of Gorbatovski et al. (arXiv 2502.01237). λ = ``asft_lambda``.
    """
    logps = cast_pair(logps)
    lw, ll = _avg(logps, "asft")
    lo_w, lo_l = terms.log_odds(lw), terms.log_odds(ll)
    align = -jax.nn.log_sigmoid(beta * lo_w) - jax.nn.log_sigmoid(-beta * lo_l)
    nll = terms.chosen_nll(logps, "asft")
    metrics = terms.pair_metrics(beta * lw, beta * ll, lw, ll)
    metrics["nll_loss"] = jax.lax.stop_gradient(nll)
    return LossOutput(loss=nll + asft_lambda * align, metrics=metrics)
