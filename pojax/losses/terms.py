"""Shared mathematical terms of the loss library: casting, stable primitives, the NLL term
and TRL's reward metrics. Pure array functions; no loss is defined here."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pojax.losses.types import PairLogps

_TINY_LOG = -1e-6  # keeps log(1 - p) finite at p = exp(0) = 1


def f32(x):
    """Casts an array (or None) to float32: every loss computes in fp32, whatever its inputs."""
    return None if x is None else jnp.asarray(x, jnp.float32)


def require_ref(logps: PairLogps, loss_name: str) -> None:
    """Raises a clear error when a reference-based loss gets no reference log-probs."""
    if logps.ref_chosen is None or logps.ref_rejected is None:
        raise ValueError(
            f"loss {loss_name!r} needs reference log-probs, but PairLogps.ref_chosen / "
            "ref_rejected are None; set reference.mode to 'copy', 'precomputed' or 'lora_base', "
            "or use a reference-free loss (simpo, cpo, cpo_hinge, cpo_ipo, orpo, asft)"
        )


def lengths(length, loss_name: str, field: str):
    """Completion token counts as float32 clamped to ≥ 1 (the zero-length guard)."""
    if length is None:
        raise ValueError(
            f"loss {loss_name!r} normalizes by completion length, but {field} is None; "
            "pass the completion token counts"
        )
    return jnp.maximum(f32(length), 1.0)


def log1mexp(x):
    """log(1 - exp(x)) for x < 0, stable at both ends (Mächler 2012).

    Switches at -log 2 between log(-expm1(x)) and log1p(-exp(x)). Inputs are clamped to
    ≤ -1e-6 so that x = 0 (probability 1) gives a large finite value instead of -inf.
    """
    x = jnp.minimum(x, _TINY_LOG)
    near_zero = x > -jnp.log(2.0)
    # Double `where`: each branch only ever sees inputs where it is finite, so no NaN leaks
    # into the gradient of the branch that is not taken.
    a = jnp.where(near_zero, x, -1.0)
    b = jnp.where(near_zero, -1.0, x)
    return jnp.where(near_zero, jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(b)))


def log_odds(avg_logp):
    """log(p / (1 - p)) with p = exp(avg_logp): the odds of a length-normalized likelihood."""
    return avg_logp - log1mexp(avg_logp)


def smoothed_logistic(z, label_smoothing):
    """-(1 - ε) log σ(z) - ε log σ(-z): the logistic loss against a label flipped w.p. ε."""
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z) - label_smoothing * jax.nn.log_sigmoid(-z)


def chosen_token_logps(logps: PairLogps):
    """Σ_t log π(y_t) of the chosen completion before any LD-DPO reweighting.

    Uses the token-level log-probs when given (LD-DPO rewrites ``logps.chosen``, but the NLL
    term of TRL is computed from the raw tokens), else ``logps.chosen``.
    """
    tokens = logps.chosen_tokens
    if tokens is None:
        return f32(logps.chosen)
    return jnp.sum(jnp.where(tokens.mask, f32(tokens.policy), 0.0), axis=-1)


def chosen_nll(logps: PairLogps, loss_name: str):
    """TRL's token-averaged NLL of the chosen completions, broadcast to every example. [B]

    TRL (DPO's "sft" loss type, CPO's BC term, the old RPO term, ORPO's NLL) averages the
    cross-entropy over all chosen tokens of the batch, -Σ_i logp_i / Σ_i n_i, and adds that
    one scalar to every example's loss. pojax does the same, so per-example weights (WPO)
    multiply it exactly as in TRL. This couples the examples of a batch.
    """
    n = lengths(logps.chosen_len, loss_name, "PairLogps.chosen_len")
    nll = -jnp.sum(chosen_token_logps(logps)) / jnp.sum(n)
    return jnp.broadcast_to(nll, n.shape)


def pair_metrics(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> dict:
    """TRL's per-example metrics for a pair. All [B] float32, without gradient."""
    sg = jax.lax.stop_gradient
    chosen_rewards, rejected_rewards = sg(chosen_rewards), sg(rejected_rewards)
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).astype(jnp.float32),
        "rewards/margins": chosen_rewards - rejected_rewards,
        "logps/chosen": sg(chosen_logps),
        "logps/rejected": sg(rejected_logps),
    }
