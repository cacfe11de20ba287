r"""Losses of single completions labelled desirable / undesirable: KTO, APO-zero (unpaired), BCO.

r = log π(y|x) - log π_ref(y|x) is the implicit reward of a completion. Metrics are scalars
(means over the desirable or undesirable examples of the batch, NaN when there are none),
with TRL's names.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from pojax.losses import terms
from pojax.losses.registry import register
from pojax.losses.types import LossOutput, UnpairedLogps


def _cast(logps: UnpairedLogps, name: str, need_kl: bool) -> UnpairedLogps:
    if logps.ref_completion is None:
        raise ValueError(
            f"loss {name!r} needs reference log-probs, but UnpairedLogps.ref_completion is None; "
            "set reference.mode to 'copy', 'precomputed' or 'lora_base'"
        )
    if need_kl and (logps.kl is None or logps.ref_kl is None):
        raise ValueError(
            f"loss {name!r} estimates KTO's z0 from mismatched completions, but UnpairedLogps.kl / "
            "ref_kl are None; pass the log-likelihoods of each prompt paired with another row's completion"
        )
    return logps.replace(
        completion=terms.f32(logps.completion),
        ref_completion=terms.f32(logps.ref_completion),
        kl=terms.f32(logps.kl),
        ref_kl=terms.f32(logps.ref_kl),
        label=jnp.asarray(logps.label, bool),
    )


def _masked_mean(x, mask):
    count = jnp.sum(mask)
    return jnp.where(count > 0, jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(count, 1), jnp.nan)


def _metrics(logps: UnpairedLogps, rewards) -> dict:
    sg = jax.lax.stop_gradient
    rewards, label = sg(rewards), logps.label
    chosen, rejected = _masked_mean(rewards, label), _masked_mean(rewards, ~label)
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "logps/chosen": _masked_mean(sg(logps.completion), label),
        "logps/rejected": _masked_mean(sg(logps.completion), ~label),
    }


def kto_kl_estimate(logps: UnpairedLogps):
    """KTO's KL estimate before clamping: mean_B[log π(y'|x) - log π_ref(y'|x)], no gradient.

    y' is a mismatched completion (TRL pairs each prompt with the previous row's completion).
    The mean runs over the batch given (TRL: over all processes). Scalar float32. Unlike
    KL(π ‖ π_ref) it can be negative (y' is not drawn from π): once training lowers the
    likelihood of off-prompt completions it stays below 0 and the clamped z0 sits at 0.
    """
    return jax.lax.stop_gradient(jnp.mean(logps.kl - logps.ref_kl))


def kto_z0(logps: UnpairedLogps):
    """KTO's reference point z0 = max(0, ``kto_kl_estimate``) (Eq. 8), no gradient. Scalar float32."""
    return jnp.maximum(kto_kl_estimate(logps), 0.0)


RUNNING_REFERENCE_POINTS = ("running_global", "running_class_conditional")
KTO_REFERENCE_POINTS = ("kl", "batch_mean", "zero") + RUNNING_REFERENCE_POINTS


@struct.dataclass
class KTOBaselineState:
    """KTO's running reference points (the ELBO-KTO authors' running baselines): exponential
    moving averages of the batch's mean implicit reward r, all starting at 0.

    ``ema`` follows every row ("running_global"); ``ema_desirable`` / ``ema_undesirable``
    follow each label's rows ("running_class_conditional"). Scalars float32, without gradient.
    """

    ema: jax.Array = struct.field(default_factory=lambda: jnp.zeros((), jnp.float32))
    ema_desirable: jax.Array = struct.field(default_factory=lambda: jnp.zeros((), jnp.float32))
    ema_undesirable: jax.Array = struct.field(default_factory=lambda: jnp.zeros((), jnp.float32))

    def z0(self, label, kind: str):
        """The reference point of each row: the scalar EMA, or [B] by label."""
        if kind == "running_global":
            return self.ema
        return jnp.where(label, self.ema_desirable, self.ema_undesirable)

    def update(self, r, label, kind: str, decay) -> "KTOBaselineState":
        """b ← decay · b + (1 − decay) · mean(r) over the rows b follows; a label with no row
        in the batch keeps its EMA. ``r`` [B] and ``label`` [B] bool are the *global* batch
        (under a mesh XLA reduces the sharded rows), so every host computes the same EMAs."""
        r = jax.lax.stop_gradient(r)

        def step(ema, mask):
            n = jnp.sum(mask)
            mean = jnp.sum(jnp.where(mask, r, 0.0)) / jnp.maximum(n, 1)
            return jnp.where(n > 0, decay * ema + (1.0 - decay) * mean, ema)

        if kind == "running_global":
            return self.replace(ema=step(self.ema, jnp.ones_like(label)))
        return self.replace(ema_desirable=step(self.ema_desirable, label),
                            ema_undesirable=step(self.ema_undesirable, ~label))


def _group_mean(r, group_size: int):
    """[B] → the mean of r over the batch (scalar; ``group_size`` 0), or [B]: each row gets the
    mean over its contiguous group of ``group_size`` rows (a last, partial group when the
    batch does not divide: an evaluation's last batch). No gradient."""
    r = jax.lax.stop_gradient(r)
    if not group_size:
        return jnp.mean(r)
    group = jnp.arange(r.shape[0]) // group_size
    n = -(-r.shape[0] // group_size)
    sums = jax.ops.segment_sum(r, group, num_segments=n)
    counts = jax.ops.segment_sum(jnp.ones_like(r), group, num_segments=n)
    return (sums / counts)[group]


def _diagnostics(r, z0, beta, length):
    """ELBO-KTO's logged diagnostics (``ELBOKTOTrainer.compute_loss`` in the authors' train.py),
    scalar means over every row of the batch whatever its label, no gradient:

      abs_beta_r/mean     mean |β r|             (r = r̂ = B_θ − B_ref for ELBOs)
      abs_beta_s/mean     mean |s|, s = β(r − z0), the sigmoid's argument
      abs_r_hat_z0/mean   mean |r − z0|
      abs_beta_s/frac>6   fraction with |s| > 6 (σ′ < 2.5e-3: the row hardly trains)
      abs_beta_s/frac>8   fraction with |s| > 8 (σ′ < 3.4e-4)
      resp_len/mean       mean completion length in tokens (only when ``length`` is given; the
                          authors' window has no EOS: data.completion_end=none gives the same count)
    """
    sg = jax.lax.stop_gradient
    r, z0 = sg(r), sg(z0)
    s_abs = jnp.abs(beta * (r - z0))
    out = {"abs_beta_r/mean": jnp.mean(jnp.abs(beta * r)), "abs_beta_s/mean": jnp.mean(s_abs),
           "abs_r_hat_z0/mean": jnp.mean(jnp.abs(r - z0)),
           "abs_beta_s/frac>6": jnp.mean(s_abs > 6.0), "abs_beta_s/frac>8": jnp.mean(s_abs > 8.0)}
    if length is not None:
        out["resp_len/mean"] = jnp.mean(jnp.asarray(length, jnp.float32))
    return out


@register("kto")
def kto(logps: UnpairedLogps, *, beta=0.1, desirable_weight=1.0, undesirable_weight=1.0,
        kto_reference_point: str = "kl", kto_baseline_ema_decay=0.99, kto_centering_group_size: int = 0,
        state: KTOBaselineState | None = None) -> LossOutput:
    r"""KTO (Ethayarajh et al., arXiv 2402.01306, Eq. 7–8), as in TRL's KTOTrainer:

    L = λ_D (1 - σ(β(r - z0)))  for desirable y,
        λ_U (1 - σ(β(z0 - r)))  for undesirable y,

    λ_D = ``desirable_weight``, λ_U = ``undesirable_weight``. The reference point z0 (always
    without gradient; it couples the batch) is chosen by ``kto_reference_point``:

    - ``"kl"`` (default; the paper and TRL): ``kto_z0``, the mismatched completions' mean
      log-ratio clamped at 0; needs ``kl`` / ``ref_kl``.
    - ``"batch_mean"`` (ELBO-KTO, arXiv 2510.23658, the authors' default ``global_mean``):
      z0 = mean_B(r), detached. Under a mesh, ``jnp.mean`` over the batch sharded on
      ("data", "fsdp") is the mean over the *global* batch (XLA all-reduces it), as the
      authors' all_reduce does. With ``kto_centering_group_size`` = g > 0 each row's z0 is
      the mean over its contiguous group of g rows of the global batch instead.
    - ``"zero"``: z0 = 0.
    - ``"running_global"`` (the ELBO-KTO authors' running baseline): z0 = b, an EMA of the
      global batch's mean r, b ← d·b + (1 − d)·mean_B(r), d = ``kto_baseline_ema_decay``.
    - ``"running_class_conditional"``: one such EMA over the desirable rows and one over the
      undesirable rows; each row's z0 is its label's EMA, and a label absent from the batch
      keeps its EMA.

    The running EMAs live in ``state`` (``KTOBaselineState``; None: all 0) and are read
    *before* this batch updates them (so the first batch trains as with "zero"); the updated
    state is returned in ``LossOutput.state``. Training threads it through the train state
    (checkpointed); evaluation reads it and discards the update.

    Metrics: TRL's, ``kl`` (= z0 whatever its kind; TRL's clamped value for "kl"),
    ``kl/unclamped`` (``kto_kl_estimate``, whenever ``kl`` / ``ref_kl`` are given: it moves
    with the policy where the clamped z0 stays at 0), and ELBO-KTO's diagnostics
    (``_diagnostics``: ``abs_beta_r/mean``, ``abs_beta_s/mean``, ``abs_r_hat_z0/mean``, the
    saturation fractions ``abs_beta_s/frac>6`` / ``abs_beta_s/frac>8`` of |β(r - z0)|, and
    ``resp_len/mean`` when ``logps.length`` is given).
    """
    if kto_reference_point not in KTO_REFERENCE_POINTS:
        raise ValueError(f"unknown kto_reference_point {kto_reference_point!r}; "
                         f"known: {', '.join(KTO_REFERENCE_POINTS)}")
    if kto_centering_group_size and kto_reference_point != "batch_mean":
        raise ValueError(f"kto_centering_group_size={kto_centering_group_size} groups the batch mean; "
                         f"it needs kto_reference_point='batch_mean', not {kto_reference_point!r}")
    logps = _cast(logps, "kto", need_kl=kto_reference_point == "kl")
    r = logps.completion - logps.ref_completion
    running = kto_reference_point in RUNNING_REFERENCE_POINTS
    if running:
        state = KTOBaselineState() if state is None else state
        z0 = state.z0(logps.label, kto_reference_point)
    elif kto_reference_point == "kl":
        z0 = kto_z0(logps)
    elif kto_reference_point == "batch_mean":
        z0 = _group_mean(r, kto_centering_group_size)
    else:
        z0 = jnp.zeros((), jnp.float32)
    loss = jnp.where(
        logps.label,
        desirable_weight * (1.0 - jax.nn.sigmoid(beta * (r - z0))),
        undesirable_weight * (1.0 - jax.nn.sigmoid(beta * (z0 - r))),
    )
    metrics = _metrics(logps, beta * r)
    metrics["kl"] = z0
    if logps.kl is not None and logps.ref_kl is not None:
        metrics["kl/unclamped"] = kto_kl_estimate(logps)
    metrics.update(_diagnostics(r, z0, beta, logps.length))
    if running:
        state = state.update(r, logps.label, kto_reference_point, kto_baseline_ema_decay)
        if kto_reference_point == "running_global":
            metrics["baseline/ema_global"] = state.ema
        else:
            metrics["baseline/ema_D"], metrics["baseline/ema_U"] = state.ema_desirable, state.ema_undesirable
    return LossOutput(loss=loss, metrics=metrics, state=state)


@register("apo_zero_unpaired")
def apo_zero_unpaired(logps: UnpairedLogps, *, beta=0.1, desirable_weight=1.0, undesirable_weight=1.0) -> LossOutput:
    r"""APO-zero on unpaired data (D'Oosterlinck et al., arXiv 2408.06266, Eq. 7 per completion):
    L = λ_D (1 - σ(βr)) for desirable y, λ_U σ(βr) for undesirable y. No z0."""
    logps = _cast(logps, "apo_zero_unpaired", need_kl=False)
    r = logps.completion - logps.ref_completion
    loss = jnp.where(
        logps.label,
        desirable_weight * (1.0 - jax.nn.sigmoid(beta * r)),
        undesirable_weight * jax.nn.sigmoid(beta * r),
    )
    return LossOutput(loss=loss, metrics=_metrics(logps, beta * r))


@struct.dataclass
class BCOState:
    """BCO's running reward mean δ over every reward seen so far (Welford), and the count."""

    mean: jax.Array = struct.field(default_factory=lambda: jnp.zeros((), jnp.float32))
    count: jax.Array = struct.field(default_factory=lambda: jnp.zeros((), jnp.float32))

    def update(self, rewards) -> "BCOState":
        n = jnp.asarray(rewards.size, jnp.float32)
        total = self.count + n
        mean = self.mean + (jnp.mean(rewards) - self.mean) * n / total
        return BCOState(mean=mean, count=total)


@register("bco")
def bco(logps: UnpairedLogps, *, beta=0.1, state: BCOState | None = None) -> LossOutput:
    r"""BCO (Jung et al., arXiv 2404.04656, Eq. 7–8): a binary classifier whose logit is the
    implicit reward shifted by the running mean δ of all rewards seen so far:

    L = -log σ(βr - δ) for desirable y,  -log σ(-(βr - δ)) for undesirable y.

    ``state`` carries δ explicitly (None: a fresh δ = 0 with count 0). δ is first updated with
    this batch's rewards, then used (as TRL's BCOTrainer did before it was removed), and the
    new state is returned in ``LossOutput.state``. Couples the batch through δ. The paper's
    optional density-ratio matching (UDM) is not included.
    """
    logps = _cast(logps, "bco", need_kl=False)
    rewards = beta * (logps.completion - logps.ref_completion)
    new_state = (state or BCOState()).update(jax.lax.stop_gradient(rewards))
    delta = new_state.mean
    loss = jnp.where(logps.label, -jax.nn.log_sigmoid(rewards - delta), -jax.nn.log_sigmoid(-(rewards - delta)))
    metrics = _metrics(logps, rewards)
    metrics["delta"] = delta
    return LossOutput(loss=loss, metrics=metrics, state=new_state)
