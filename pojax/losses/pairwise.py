r"""TRL's DPO loss types as pure functions of PairLogps.

Notation: for a pair (y_w, y_l) of prompt x, the log-ratios are
u_w = log π(y_w|x) - log π_ref(y_w|x) and u_l likewise; s_w = f'(e^{u_w}) are the f-DPO scores
(s = u for the default reverse KL) and Δ = s_w - s_l. Every function returns the per-example
loss [B] and TRL's metrics, with rewards β·u (no gradient).

Each loss also takes ``ld_alpha``, ``use_weighting`` and ``rpo_alpha`` (see
``pojax.losses.modifiers.pairwise_loss``). Names and defaults follow ``trl.DPOConfig`` 1.16.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pojax.losses import terms
from pojax.losses.modifiers import f_divergence_scores, pairwise_loss
from pojax.losses.registry import register
from pojax.losses.types import LossOutput, PairLogps


def _logratios(logps: PairLogps, name: str):
    terms.require_ref(logps, name)
    return logps.chosen - logps.ref_chosen, logps.rejected - logps.ref_rejected


def _output(loss, logps: PairLogps, beta, u_w, u_l, **extra) -> LossOutput:
    metrics = terms.pair_metrics(beta * u_w, beta * u_l, logps.chosen, logps.rejected)
    metrics.update(extra)
    return LossOutput(loss=loss, metrics=metrics)


def _delta(logps, name, f_divergence_type, f_alpha_divergence_coef):
    u_w, u_l = _logratios(logps, name)
    s_w = f_divergence_scores(u_w, f_divergence_type, f_alpha_divergence_coef)
    s_l = f_divergence_scores(u_l, f_divergence_type, f_alpha_divergence_coef)
    return u_w, u_l, s_w, s_l


@register("sigmoid", "dpo")
@pairwise_loss
def sigmoid(logps: PairLogps, *, beta=0.1, label_smoothing=0.0, f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0) -> LossOutput:
    r"""DPO (Rafailov et al., arXiv 2305.18290, Eq. 7), with cDPO label smoothing.

    L = -(1 - ε) log σ(βΔ) - ε log σ(-βΔ).

    ε = ``label_smoothing`` is the conservative DPO of Mitchell (2023), as in TRL < 1.0;
    TRL 1.16's "sigmoid" has no smoothing, which is ε = 0 here (the default).
    """
    u_w, u_l, s_w, s_l = _delta(logps, "sigmoid", f_divergence_type, f_alpha_divergence_coef)
    loss = terms.smoothed_logistic(beta * (s_w - s_l), label_smoothing)
    return _output(loss, logps, beta, u_w, u_l)


@register("hinge")
@pairwise_loss
def hinge(logps: PairLogps, *, beta=0.1, f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0) -> LossOutput:
    r"""SLiC hinge loss (Zhao et al., arXiv 2305.10425, Eq. 1 with δ = 1/β): L = max(0, 1 - βΔ)."""
    u_w, u_l, s_w, s_l = _delta(logps, "hinge", f_divergence_type, f_alpha_divergence_coef)
    return _output(jax.nn.relu(1.0 - beta * (s_w - s_l)), logps, beta, u_w, u_l)


@register("ipo")
@pairwise_loss
def ipo(logps: PairLogps, *, beta=0.1, f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0) -> LossOutput:
    r"""IPO (Azar et al., arXiv 2310.12036, Eq. 17), τ = β: L = (s_w/|y_w| - s_l/|y_l| - 1/(2β))².

    As TRL, the scores are divided by the completion token counts (per-token average), a
    normalization the IPO paper does not write but its authors confirmed to TRL.
    """
    u_w, u_l, s_w, s_l = _delta(logps, "ipo", f_divergence_type, f_alpha_divergence_coef)
    n_w = terms.lengths(logps.chosen_len, "ipo", "PairLogps.chosen_len")
    n_l = terms.lengths(logps.rejected_len, "ipo", "PairLogps.rejected_len")
    loss = (s_w / n_w - s_l / n_l - 1.0 / (2.0 * beta)) ** 2
    return _output(loss, logps, beta, u_w, u_l)


@register("sigmoid_norm")
@pairwise_loss
def sigmoid_norm(logps: PairLogps, *, beta=0.1, f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0) -> LossOutput:
    r"""Length-normalized DPO (TRL's "sigmoid_norm"; cf. SimPO, arXiv 2405.14734):
    L = -log σ(β (s_w/|y_w| - s_l/|y_l|))."""
    u_w, u_l, s_w, s_l = _delta(logps, "sigmoid_norm", f_divergence_type, f_alpha_divergence_coef)
    n_w = terms.lengths(logps.chosen_len, "sigmoid_norm", "PairLogps.chosen_len")
    n_l = terms.lengths(logps.rejected_len, "sigmoid_norm", "PairLogps.rejected_len")
    loss = -jax.nn.log_sigmoid(beta * (s_w / n_w - s_l / n_l))
    return _output(loss, logps, beta, u_w, u_l)


@register("exo_pair")
@pairwise_loss
def exo_pair(logps: PairLogps, *, beta=0.1, label_smoothing=1e-3, f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0) -> LossOutput:
    r"""EXO-pref (Ji et al., arXiv 2402.00856, Eq. 16): KL(p_θ ‖ p_rh) over {y_w, y_l} with
    p_θ = (σ(βΔ), σ(-βΔ)) and p_rh = (1 - ε, ε):

    L = σ(βΔ)(log σ(βΔ) - log(1-ε)) + σ(-βΔ)(log σ(-βΔ) - log ε).

    ε = ``label_smoothing`` must be > 0 (the paper uses 1e-3, the default here; TRL's default
    of 0 makes TRL raise).
    """
    if isinstance(label_smoothing, (int, float)) and not 0.0 < label_smoothing < 1.0:
        raise ValueError(f"exo_pair needs 0 < label_smoothing < 1 (the EXO paper uses 1e-3); got {label_smoothing}")
    u_w, u_l, s_w, s_l = _delta(logps, "exo_pair", f_divergence_type, f_alpha_divergence_coef)
    z = beta * (s_w - s_l)
    log_qw, log_ql = jax.nn.log_sigmoid(z), jax.nn.log_sigmoid(-z)
    loss = jnp.exp(log_qw) * (log_qw - jnp.log1p(-label_smoothing)) + jnp.exp(log_ql) * (
        log_ql - jnp.log(label_smoothing)
    )
    return _output(loss, logps, beta, u_w, u_l)


@register("robust")
@pairwise_loss
def robust(logps: PairLogps, *, beta=0.1, label_smoothing=0.0, f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0) -> LossOutput:
    r"""Robust DPO (Chowdhury et al., arXiv 2403.00409, Eq. 8), ε = flip probability in [0, 0.5):

    L = [-(1-ε) log σ(βΔ) + ε log σ(-βΔ)] / (1 - 2ε).
    """
    u_w, u_l, s_w, s_l = _delta(logps, "robust", f_divergence_type, f_alpha_divergence_coef)
    z = beta * (s_w - s_l)
    loss = (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(z) + label_smoothing * jax.nn.log_sigmoid(-z)) / (
        1.0 - 2.0 * label_smoothing
    )
    return _output(loss, logps, beta, u_w, u_l)


@register("discopop")
@pairwise_loss
def discopop(logps: PairLogps, *, beta=0.1, discopop_tau=0.05, f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0) -> LossOutput:
    r"""DiscoPOP's log-ratio modulated loss (Chris Lu et al., arXiv 2406.08414, Eq. 5), z = βΔ:

    L = (1 - σ(z/τ)) · (-log σ(z)) + σ(z/τ) · e^{-z}.

    The second term is evaluated as exp(-z + log σ(z/τ)) (clamped at e^80), which is finite
    where TRL's e^{-z} · σ(z/τ) gives inf · 0 = NaN (z < -88).
    """
    u_w, u_l, s_w, s_l = _delta(logps, "discopop", f_divergence_type, f_alpha_divergence_coef)
    z = beta * (s_w - s_l)
    mix = jax.nn.sigmoid(z / discopop_tau)
    exp_term = jnp.exp(jnp.minimum(-z + jax.nn.log_sigmoid(z / discopop_tau), 80.0))
    loss = (1.0 - mix) * -jax.nn.log_sigmoid(z) + exp_term
    return _output(loss, logps, beta, u_w, u_l)


@register("sft", reference_free=True)
@pairwise_loss
def sft(logps: PairLogps, *, beta=0.1, f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0) -> LossOutput:
    r"""Supervised NLL of the chosen completion (TRL's "sft" loss type, usually mixed in).

    L_i = -Σ_j log π(y_w,j|x_j) / Σ_j |y_w,j| for every i: TRL's token-averaged NLL of the
    batch, broadcast (couples the batch). β and the f-divergence
    are accepted, as in TRL, and only affect the reward metrics (none without a reference).
    """
    del f_divergence_type, f_alpha_divergence_coef
    loss = terms.chosen_nll(logps, "sft")
    if logps.ref_chosen is None or logps.ref_rejected is None:
        metrics = {"logps/chosen": jax.lax.stop_gradient(logps.chosen), "logps/rejected": jax.lax.stop_gradient(logps.rejected)}
        return LossOutput(loss=loss, metrics=metrics)
    u_w, u_l = _logratios(logps, "sft")
    return _output(loss, logps, beta, u_w, u_l)


@register("nca_pair")
@pairwise_loss
def nca_pair(logps: PairLogps, *, beta=0.1) -> LossOutput:
    r"""NCA (Chen et al., arXiv 2402.05369, Eq. 12, K = 2), r = βu:
    L = -log σ(r_w) - ½ log σ(-r_w) - ½ log σ(-r_l)."""
    u_w, u_l = _logratios(logps, "nca_pair")
    r_w, r_l = beta * u_w, beta * u_l
    loss = -jax.nn.log_sigmoid(r_w) - 0.5 * jax.nn.log_sigmoid(-r_w) - 0.5 * jax.nn.log_sigmoid(-r_l)
    return _output(loss, logps, beta, u_w, u_l)


@register("bco_pair")
@pairwise_loss
def bco_pair(logps: PairLogps, *, beta=0.1) -> LossOutput:
    r"""Paired BCO without the running shift (TRL's "bco_pair"; Jung et al., arXiv 2404.04656):
    L = -log σ(βu_w) - log σ(-βu_l)."""
    u_w, u_l = _logratios(logps, "bco_pair")
    loss = -jax.nn.log_sigmoid(beta * u_w) - jax.nn.log_sigmoid(-beta * u_l)
    return _output(loss, logps, beta, u_w, u_l)


@register("sppo_hard")
@pairwise_loss
def sppo_hard(logps: PairLogps, *, beta=0.1) -> LossOutput:
    r"""SPPO with hard win probabilities (Wu et al., arXiv 2405.00675, Eq. 4.7, P = 1 / 0):
    L = (u_w - 1/(2β))² + (u_l + 1/(2β))²."""
    u_w, u_l = _logratios(logps, "sppo_hard")
    loss = (u_w - 0.5 / beta) ** 2 + (u_l + 0.5 / beta) ** 2
    return _output(loss, logps, beta, u_w, u_l)


@register("aot")
@pairwise_loss(weighting=False)
def aot(logps: PairLogps, *, beta=0.1, label_smoothing=0.0) -> LossOutput:
    r"""AOT, paired (Melnyk et al., arXiv 2406.05882): distributional dominance via sorting.

    With ρ = sort_B(log π(y_w) - log π(y_l)) and ρ_ref = sort_B(ref likewise):
    L_k = smoothed_logistic(β(ρ_k - ρ_ref,k), ε). Couples the batch: the sort runs over the
    batch this function is given (TRL sorts each device's local batch). Entry k of the loss is
    the k-th sorted position, not example k.
    """
    terms.require_ref(logps, "aot")
    rho = jnp.sort(logps.chosen - logps.rejected)
    rho_ref = jnp.sort(logps.ref_chosen - logps.ref_rejected)
    loss = terms.smoothed_logistic(beta * (rho - rho_ref), label_smoothing)
    u_w, u_l = _logratios(logps, "aot")
    return _output(loss, logps, beta, u_w, u_l)


@register("aot_unpaired")
@pairwise_loss(weighting=False)
def aot_unpaired(logps: PairLogps, *, beta=0.1, label_smoothing=0.0) -> LossOutput:
    r"""AOT, unpaired (Melnyk et al., arXiv 2406.05882): sort u_w and u_l separately,
    L_k = smoothed_logistic(β(sort(u_w)_k - sort(u_l)_k), ε). Couples the batch (see ``aot``)."""
    u_w, u_l = _logratios(logps, "aot_unpaired")
    loss = terms.smoothed_logistic(beta * (jnp.sort(u_w) - jnp.sort(u_l)), label_smoothing)
    return _output(loss, logps, beta, u_w, u_l)


@register("apo_zero")
@pairwise_loss
def apo_zero(logps: PairLogps, *, beta=0.1) -> LossOutput:
    r"""APO-zero (D'Oosterlinck et al., arXiv 2408.06266, Eq. 7): raise y_w, lower y_l.
    L = 1 - σ(βu_w) + σ(βu_l)."""
    u_w, u_l = _logratios(logps, "apo_zero")
    loss = 1.0 - jax.nn.sigmoid(beta * u_w) + jax.nn.sigmoid(beta * u_l)
    return _output(loss, logps, beta, u_w, u_l)


@register("apo_down")
@pairwise_loss
def apo_down(logps: PairLogps, *, beta=0.1) -> LossOutput:
    r"""APO-down (D'Oosterlinck et al., arXiv 2408.06266, Eq. 8): lower both, y_l more.
    L = σ(βu_w) + 1 - σ(β(u_w - u_l))."""
    u_w, u_l = _logratios(logps, "apo_down")
    loss = jax.nn.sigmoid(beta * u_w) + 1.0 - jax.nn.sigmoid(beta * (u_w - u_l))
    return _output(loss, logps, beta, u_w, u_l)
