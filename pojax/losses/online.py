r"""Losses of the online modes (pojax.train.online): the pairs are sampled during training and
labelled by a reward callable, then scored by these pure functions of PairLogps.

``online_dpo`` is DPO's sigmoid loss (TRL's OnlineDPOTrainer, loss_type="sigmoid") under its own
name, so that ``loss.name=online_dpo`` routes a run to the online loop. ``xpo`` adds XPO's
exploration term; ``ofs_dpo`` trains two LoRA modules that chase each other (OFS-DPO).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pojax.losses import pairwise, terms
from pojax.losses.registry import register
from pojax.losses.types import LossOutput, PairLogps

register("online_dpo")(pairwise.sigmoid)


@register("xpo")
def xpo(logps: PairLogps, *, beta=0.1, alpha=0.05, ref_sample_chosen=None) -> LossOutput:
    r"""XPO: online DPO plus an exploration bonus (Xie et al., arXiv 2405.21046, Eq. 7 / Alg. 1).

    Each pair holds one completion y sampled from the policy and one ỹ sampled from the
    reference, ordered by the reward (y_w, y_l). Then

        L = -log σ(β[(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))]) + α log π(ỹ)

    Minimizing α log π(ỹ) lowers the policy's likelihood of the reference's own samples, which
    pushes it to explore outside the reference's support. This follows TRL's XPOTrainer
    (``alpha`` = 0.05 by default; the term is α times the summed log-likelihood of ỹ).

    Args:
      logps: PairLogps [B] with reference log-likelihoods.
      beta: DPO's β.
      alpha: weight α ≥ 0 of the exploration term; 0 gives the sigmoid DPO loss exactly.
      ref_sample_chosen: [B] bool, True where ỹ (the reference's sample) is the chosen side of
        the pair. Runtime input (a batch column, not a config key); None = no reference sample
        in the batch, so no exploration term.
    Returns:
      LossOutput: loss [B] float32; TRL's DPO metrics plus ``loss/dpo`` and ``loss/xpo`` [B].
    """
    dpo = pairwise.sigmoid(logps, beta=beta)
    if ref_sample_chosen is None:
        explore = jnp.zeros_like(dpo.loss)
    else:
        explore = jnp.where(ref_sample_chosen, terms.f32(logps.chosen), terms.f32(logps.rejected))
    xpo_term = alpha * explore
    return LossOutput(loss=dpo.loss + xpo_term, metrics=dict(dpo.metrics, **{"loss/dpo": dpo.loss, "loss/xpo": xpo_term}))


@register("ofs_dpo")
def ofs_dpo(logps: PairLogps, *, beta=0.1, ofs_alpha=1.0, slow_logps: PairLogps | None = None) -> LossOutput:
    r"""OFS-DPO: online fast-slow chasing DPO (Qi et al., arXiv 2406.05534, Sec. 4).

    Two LoRA modules over one frozen base score the same pair: the fast module π_F (``logps``,
    the higher learning rate) and the slow module π_S (``slow_logps``, the lower one). With the
    DPO margins of each against the shared reference,

        h_F = (log π_F(y_w) - log π_ref(y_w)) - (log π_F(y_l) - log π_ref(y_l)),  h_S likewise,

    the per-pair loss is

        L = -log σ(β h_F) + α · -log σ(β (h_F - sg[h_S]))     (fast module: DPO + regularizer)
            + -log σ(β h_S)                                     (slow module: DPO)

    The regularizer is the DPO loss of the fast module with the slow one as its reference
    (h_F - h_S = log π_F/π_S (y_w) - log π_F/π_S (y_l): π_ref cancels). It acts on the gap
    between the modules' preference probabilities σ(β h_F) and σ(β h_S): its gradient,
    β σ(-β(h_F - h_S)), stays near β/2 while the slow module keeps up, where the DPO term's
    β σ(-β h_F) vanishes once the fast module is confident — the paper's reason for it. sg is
    a stop-gradient: the slow module learns by DPO alone and is chased, never pushed back.
    The modules have disjoint parameters, so one backward pass of the sum gives each its own
    gradient. The learning rates and the swap of roles live in the trainer (pojax.train.ofs).

    Departures: the paper's text was read through summaries (its method section was not
    retrievable here); the stop-gradient and the slow module's plain DPO loss are this
    library's reading of "the slow module chases". α is written ``ofs_alpha`` (TRL has no
    OFS-DPO; named like ``rpo_alpha``, ``ld_alpha``).

    Args:
      logps: PairLogps [B] of the fast module, with the reference log-likelihoods.
      beta: DPO's β (both modules and the regularizer).
      ofs_alpha: weight α ≥ 0 of the regularizer; 0 makes the fast module's loss sigmoid DPO.
      slow_logps: PairLogps [B] of the slow module (chosen, rejected; its ref fields are not
        read: the reference is the fast struct's). Runtime input, not a config key; None = no
        slow module, which gives the sigmoid DPO loss exactly.
    Returns:
      LossOutput: loss [B] float32; TRL's DPO metrics of the fast module, plus ``loss/fast_dpo``,
      ``loss/slow_dpo``, ``loss/ofs_reg`` [B] (the regularizer before α) and
      ``rewards/slow_margins`` [B] (β h_S).
    """
    fast = pairwise.sigmoid(logps, beta=beta)
    if slow_logps is None:
        return LossOutput(loss=fast.loss, metrics=dict(fast.metrics, **{"loss/fast_dpo": fast.loss}))
    h_fast = _margin(logps.chosen, logps.rejected, logps)
    h_slow = _margin(slow_logps.chosen, slow_logps.rejected, logps)
    slow = -jax.nn.log_sigmoid(beta * h_slow)  # log_sigmoid: stable for large |βh|
    reg = -jax.nn.log_sigmoid(beta * (h_fast - jax.lax.stop_gradient(h_slow)))
    metrics = dict(fast.metrics, **{"loss/fast_dpo": fast.loss, "loss/slow_dpo": slow, "loss/ofs_reg": reg,
                                    "rewards/slow_margins": jax.lax.stop_gradient(beta * h_slow)})
    return LossOutput(loss=fast.loss + ofs_alpha * reg + slow, metrics=metrics)


def _margin(chosen, rejected, ref: PairLogps):
    """[B] float32 DPO margin (log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))."""
    terms.require_ref(ref, "ofs_dpo")
    f = terms.f32
    return (f(chosen) - f(ref.ref_chosen)) - (f(rejected) - f(ref.ref_rejected))
