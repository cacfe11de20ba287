r"""Adaptive and soft-label DPO losses: beta-DPO, MADPO, soft-label DPO, ADPO, Curry-DPO.

Notation as in ``pairwise``: u = log π(y|x) - log π_ref(y|x) per completion and
Δ = u_w - u_l. Every loss takes ``PairLogps`` with reference log-probs, returns the per-example
loss [B] and TRL's reward metrics (rewards β·u, without gradient), and accepts the DPOConfig
modifiers ``ld_alpha`` / ``use_weighting`` / ``rpo_alpha`` (``modifiers.pairwise_loss``).

Some of these losses read per-batch arrays that are not hyperparameters (``preference``,
``reward_margin``) or carry running state (``state``, ``key``); ``registry.RUNTIME_ARGS``
lists those names.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from pojax.losses import terms
from pojax.losses.modifiers import pairwise_loss
from pojax.losses.pairwise import _logratios, _output, sigmoid
from pojax.losses.registry import register
from pojax.losses.types import LossOutput, PairLogps

_MIN_STD = 1e-6  # keeps beta-DPO's Gaussian weights finite when every margin of a batch is equal
_MIN_BETA = 1e-3  # the authors' clamp on beta-DPO's batch β (their code, trainers.py)


def _per_example(x, logps: PairLogps, name: str, field: str, default: float):
    """A [B] float32 runtime array, or ``default`` everywhere when it is None."""
    if x is None:
        return jnp.full(jnp.shape(logps.chosen), default, jnp.float32)
    x = terms.f32(x)
    if x.shape != jnp.shape(logps.chosen):
        raise ValueError(f"loss {name!r}: {field} has shape {x.shape}, expected {jnp.shape(logps.chosen)} (one per pair)")
    return jax.lax.stop_gradient(x)


@register("soft_dpo")
@pairwise_loss
def soft_dpo(logps: PairLogps, *, beta=0.1, preference=None) -> LossOutput:
    r"""DPO against a soft preference label p = P(y_w ≻ y_l) instead of the hard label 1:

    L = -p log σ(βΔ) - (1 - p) log σ(-βΔ).

    The cross-entropy form of the Bradley-Terry likelihood (DPO, arXiv 2305.18290, Eq. 7) with a
    per-example target; cDPO's label smoothing ε is the constant case p = 1 - ε. Soft labels
    from reward-model scores are the smoothed preferences of SmPO (arXiv 2506.02698),
    here applied as the target of the logistic loss rather than SmPO's rescaled logit (its Eq. 9).

    Args:
      logps: PairLogps with ref_chosen / ref_rejected.
      beta: β.
      preference: [B] p in [0, 1] (runtime data, no gradient); None: p = 1 (sigmoid DPO).
    Returns:
      LossOutput with loss [B] float32.
    """
    u_w, u_l = _logratios(logps, "soft_dpo")
    p = _per_example(preference, logps, "soft_dpo", "preference", 1.0)
    loss = terms.smoothed_logistic(beta * (u_w - u_l), 1.0 - p)
    return _output(loss, logps, beta, u_w, u_l)


@register("adpo")
@pairwise_loss
def adpo(logps: PairLogps, *, beta=0.1, preference=None) -> LossOutput:
    r"""Pairwise ADPO, Anchored DPO (Zixian Wang, arXiv 2510.18913): the KL divergence from the
    soft target q to the anchored preference distribution over the two completions,

    L = KL(q ‖ softmax((s - s_ref)/τ)) = p log(p/σ(βΔ)) + (1-p) log((1-p)/σ(-βΔ)),

    with s = log π(y|x), the anchor s_ref = log π_ref(y|x), τ = 1/β and q = (p, 1 - p)
    (the objective the paper states in its abstract, v5, for K = 2). It differs from
    ``soft_dpo`` by the entropy of q, a constant: same gradients, but the loss is 0 when the
    policy matches q. The listwise ADPO over K > 2 responses is not implemented here.

    Args:
      logps: PairLogps with ref_chosen / ref_rejected (the anchor).
      beta: 1/τ, the inverse anchoring temperature.
      preference: [B] p in [0, 1] (runtime data); None: p = 1, where ADPO is sigmoid DPO.
    Returns:
      LossOutput with loss [B] float32.
    """
    u_w, u_l = _logratios(logps, "adpo")
    p = _per_example(preference, logps, "adpo", "preference", 1.0)
    z = beta * (u_w - u_l)
    # xlogy: 0 log 0 = 0 at hard labels.
    loss = (jax.scipy.special.xlogy(p, p) - p * jax.nn.log_sigmoid(z)
            + jax.scipy.special.xlogy(1.0 - p, 1.0 - p) - (1.0 - p) * jax.nn.log_sigmoid(-z))
    return _output(loss, logps, beta, u_w, u_l)


def madpo_weight(reward_margin, *, madpo_c_max=2.0, madpo_c_min=0.5, madpo_lambda=1.0, madpo_tau=2.0):
    r"""MADPO's instance weight w(h) of a reward-model margin h = r(y_w) - r(y_l).

    c(|h|) = c_min + (c_max - c_min) / (1 + (c_max - 1)/(1 - c_min) · e^{λ(|h| - τ)}) runs from
    ≈ c_max at small margins (hard pairs, amplified) through c(τ) = 1 to c_min at large margins
    (easy pairs, dampened); w(h) = σ(c h)/σ(h) for h > -τ and 1 for h ≤ -τ (likely mislabeled
    pairs are left at DPO's weight). The form of the author's code (MADPOLoss.coef).

    Args:
      reward_margin: [B] float32 h.
    Returns:
      [B] float32 w > 0.
    """
    if isinstance(madpo_c_min, (int, float)) and isinstance(madpo_c_max, (int, float)) and not madpo_c_min < 1.0 < madpo_c_max:
        raise ValueError(f"madpo needs madpo_c_min < 1 < madpo_c_max; got {madpo_c_min}, {madpo_c_max}")
    h = terms.f32(reward_margin)
    log_ratio = jnp.log((madpo_c_max - 1.0) / (1.0 - madpo_c_min))
    # 1/(1 + ratio·e^{λ(|h|-τ)}) as a sigmoid: finite for any margin.
    c = madpo_c_min + (madpo_c_max - madpo_c_min) * jax.nn.sigmoid(-(madpo_lambda * (jnp.abs(h) - madpo_tau) + log_ratio))
    w = jnp.exp(jax.nn.log_sigmoid(c * h) - jax.nn.log_sigmoid(h))
    return jnp.where(h > -madpo_tau, w, 1.0)


@register("madpo")
@pairwise_loss
def madpo(logps: PairLogps, *, beta=0.1, madpo_c_max=2.0, madpo_c_min=0.5, madpo_lambda=1.0, madpo_tau=2.0,
          reward_margin=None) -> LossOutput:
    r"""MADPO, Margin-Adaptive DPO (Hyung Gyu Rho, arXiv 2510.05342): DPO reweighted per
    example by a reward model's margin h_φ = r_φ(x, y_w) - r_φ(x, y_l),

    L = -w(h_φ) log σ(βΔ),  w from ``madpo_weight``.

    The reward model is trained beforehand (Bradley-Terry on the same pairs); its margins are
    runtime data. Defaults are the author's (c_max 2, c_min 0.5, λ 1, τ 2).

    Args:
      logps: PairLogps with ref_chosen / ref_rejected.
      beta: β.
      madpo_c_max, madpo_c_min: the amplification / dampening limits (c_min < 1 < c_max).
      madpo_lambda: steepness λ of the transition; madpo_tau: its margin τ (and the cut-off -τ).
      reward_margin: [B] h_φ, required (runtime data, no gradient).
    Returns:
      LossOutput with loss [B] float32 and metric ``madpo/weight``.
    """
    if reward_margin is None:
        raise ValueError("loss 'madpo' needs reward_margin: the [B] reward-model margins r(x, y_w) - r(x, y_l) of the pairs")
    u_w, u_l = _logratios(logps, "madpo")
    w = madpo_weight(_per_example(reward_margin, logps, "madpo", "reward_margin", 0.0), madpo_c_max=madpo_c_max,
                     madpo_c_min=madpo_c_min, madpo_lambda=madpo_lambda, madpo_tau=madpo_tau)
    loss = -w * jax.nn.log_sigmoid(beta * (u_w - u_l))
    return _output(loss, logps, beta, u_w, u_l, **{"madpo/weight": w})


@struct.dataclass
class BetaDPOState:
    """beta-DPO's moving statistics of the implicit reward margin: M_0 (mean) and σ (std)."""

    mean: jax.Array = struct.field(default_factory=lambda: jnp.zeros((), jnp.float32))
    std: jax.Array = struct.field(default_factory=lambda: jnp.zeros((), jnp.float32))

    def update(self, margins, momentum) -> BetaDPOState:
        n = margins.shape[0]
        batch_std = jnp.std(margins, ddof=1) if n > 1 else jnp.zeros((), jnp.float32)
        return BetaDPOState(mean=momentum * self.mean + (1.0 - momentum) * jnp.mean(margins),
                            std=momentum * self.std + (1.0 - momentum) * batch_std)


def _keep_mask(margins, state: BetaDPOState, rho, key):
    """β-guided filtering: keep ⌊B(1-ρ)⌋ ≥ 1 pairs, drawn without replacement with probability
    ∝ exp(-(M_i - M_0)²/(2σ²)) (Gumbel top-k; key None: the k largest weights). [B] bool."""
    b = margins.shape[0]
    log_w = -0.5 * jnp.square((margins - state.mean) / jnp.maximum(state.std, _MIN_STD))
    if key is not None:
        log_w = log_w + jax.random.gumbel(key, (b,), jnp.float32)
    k = jnp.maximum(jnp.floor(b * (1.0 - rho)), 1.0)
    rank = jnp.argsort(jnp.argsort(-log_w))
    return rank < k


@register("beta_dpo")
@pairwise_loss
def beta_dpo(logps: PairLogps, *, beta=0.1, beta_dpo_alpha=0.6, beta_dpo_filter=True, beta_dpo_rho=0.2,
             beta_dpo_momentum=0.9, state: BetaDPOState | None = None, key=None) -> LossOutput:
    r"""β-DPO (Wu et al., arXiv 2407.08639): DPO with a batch-level β calibrated by the
    implicit reward margins M_i = u_w,i - u_l,i, and β-guided data filtering.

      M_0, σ ← m·(M_0, σ) + (1-m)·(mean_B M, std_B M)       (moving statistics, momentum m)
      keep ⌊B(1-ρ)⌋ pairs, sampled w.p. ∝ exp(-(M_i - M_0)²/(2σ²)) without replacement
      β_batch = β·(1 + α(mean_kept M - M_0)),  clamped at ≥ 1e-3
      L_i = 1[i kept] · (B/k) · -log σ(β_batch Δ_i)

    The B/k factor makes the caller's mean over B the paper's mean over the kept pairs. As the
    authors' code, M is unscaled by β (it absorbs into α), the statistics are updated with this
    batch before use, and neither M nor β_batch carries gradient. With α = 0 and no filtering
    this is sigmoid DPO. Couples the batch (filtering, mean margin) and carries state.

    Args:
      logps: PairLogps with ref_chosen / ref_rejected.
      beta: β_0. beta_dpo_alpha: α. beta_dpo_filter: filter pairs. beta_dpo_rho: fraction ρ
        filtered out. beta_dpo_momentum: m.
      state: BetaDPOState of the moving statistics (None: zeros, as the authors' code).
      key: PRNG key of the filter's sampling; None: keep the pairs of largest weight instead.
    Returns:
      LossOutput with loss [B] float32, the new BetaDPOState in ``state`` and scalar metrics
      ``beta_dpo/beta``, ``beta_dpo/margin_mean``, ``beta_dpo/margin_std``, ``beta_dpo/kept``.
    """
    u_w, u_l = _logratios(logps, "beta_dpo")
    margins = jax.lax.stop_gradient(u_w - u_l)
    new_state = (state or BetaDPOState()).update(margins, beta_dpo_momentum)
    b = margins.shape[0]
    keep = _keep_mask(margins, new_state, beta_dpo_rho, key) if beta_dpo_filter else jnp.ones((b,), bool)
    kept = jnp.sum(keep.astype(jnp.float32))
    mean_kept = jnp.sum(jnp.where(keep, margins, 0.0)) / kept
    beta_batch = beta * (1.0 + beta_dpo_alpha * (mean_kept - new_state.mean))
    beta_batch = jax.lax.stop_gradient(jnp.maximum(beta_batch, min(beta, _MIN_BETA)))
    loss = jnp.where(keep, -jax.nn.log_sigmoid(beta_batch * (u_w - u_l)), 0.0) * (b / kept)
    out = _output(loss, logps, beta, u_w, u_l, **{
        "beta_dpo/beta": beta_batch, "beta_dpo/margin_mean": new_state.mean,
        "beta_dpo/margin_std": new_state.std, "beta_dpo/kept": kept / b,
    })
    return out.replace(state=new_state)


@register("curry_dpo")
@pairwise_loss
def curry_dpo(logps: PairLogps, *, beta=0.1, label_smoothing=0.0, f_divergence_type="reverse_kl",
              f_alpha_divergence_coef=1.0) -> LossOutput:
    r"""Curry-DPO (Pattnaik et al., arXiv 2403.07230): sigmoid DPO (Eq. 7 of arXiv 2305.18290)
    trained over a curriculum of pairs, easy to hard (pairs built from K ranked responses,
    ordered by their score gap). The curriculum is the order of the data, which the data
    pipeline selects by this name; the loss is exactly ``sigmoid``."""
    terms.require_ref(logps, "curry_dpo")
    return sigmoid.raw(logps, beta=beta, label_smoothing=label_smoothing, f_divergence_type=f_divergence_type,
                       f_alpha_divergence_coef=f_alpha_divergence_coef)
