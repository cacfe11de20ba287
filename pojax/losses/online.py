r"""Losses of the online modes (pojax.train.online): the pairs are sampled during training and
labelled by a reward callable, then scored by these pure functions of PairLogps.

``online_dpo`` is DPO's sigmoid loss (TRL's OnlineDPOTrainer, loss_type="sigmoid") under its own
name, so that ``loss.name=online_dpo`` routes a run to the online loop. ``xpo`` adds XPO's
exploration term.
"""
from __future__ import annotations

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
