"""The pure train step: (state, batch) -> (state, metrics) under one jax.jit with explicit
shardings. Parameters travel as an nnx.State (a pytree); the model graph is static.

Non-finite guard: the step checks ``isfinite(loss) & all(isfinite(grads))`` on the device and,
when it fails, returns the input state unchanged except for ``step``, with the metric
``skipped`` = 1. No value is fetched to the host for this: the loop reads ``skipped`` with the
step's other metrics and applies ``train.nan_policy`` (skip: carry on; stop: raise
NonFiniteError).

The guard costs no memory: the optimizer update runs under ``lax.cond`` on the flag, so XLA
updates the donated parameters and moments in place, and the step's temporaries are the
gradients plus the saved activations. Selecting the new state against the old one with
``jnp.where`` instead (computing both, then choosing) makes XLA copy both Adam moments before
the update, because the old ones are still read after the new ones are written: on an 8 × 4 MiB
test tree, 88 MiB of temporaries instead of 33 (gradients: 32). With gradient accumulation
optax.MultiSteps already computes both of its branches; there the select is kept, which
compiles to fewer temporaries than a cond around MultiSteps (88 vs 128 MiB on the same tree).

With gradient accumulation (optax.MultiSteps, ``train.grad_accum_steps`` = k) the step is one
micro-batch: a non-finite micro-batch is dropped whole, MultiSteps' accumulator and its
micro-step counter included, so that optimizer update averages the next k finite micro-batches
(its boundary moves one micro-batch later; the optimizer state in checkpoints records where).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct


class NonFiniteError(RuntimeError):
    """A step whose loss or gradients were NaN/inf under ``train.nan_policy = "stop"``."""

    def __init__(self, stage: str, step: int, metrics: dict):
        shown = ", ".join(f"{k}={metrics[k]:.4g}" for k in ("loss", "grad_norm") if k in metrics)
        super().__init__(f"{stage}: step {step}: non-finite loss or gradients ({shown}); train.nan_policy=stop, so "
                         "training stopped without saving this step (the latest checkpoint is the last good one)")
        self.stage, self.step = stage, step


@struct.dataclass
class TrainState:
    """Everything a step changes: trainable params, optimizer state, step, loss state."""

    step: jax.Array
    params: Any  # nnx.State of the trainable variables
    opt_state: Any
    loss_state: Any = None  # e.g. BCO's running δ


def init_state(params, tx: optax.GradientTransformation, loss_state=None) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), loss_state=loss_state)


def all_finite(loss, grads) -> jax.Array:
    """() bool: the loss and every gradient entry are finite (a device value, no host sync)."""
    leaves = [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]
    return jnp.logical_and(jnp.isfinite(loss), jnp.all(jnp.stack(leaves)) if leaves else True)


def _keep_if(ok, new, old):
    """``new`` where ``ok`` else ``old``, leaf by leaf (both trees of the same structure)."""
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def sync_reference(ref_state, params, *, alpha: float):
    """TR-DPO's soft update of the reference: its parameters become a mix of the policy's and
    their own,

    θ_ref ← α·θ + (1 − α)·θ_ref

    (α = 1: hard update, the reference becomes a copy of the policy). Pure; the trainer applies it
    under jit after every ``reference.ref_model_sync_steps``-th optimizer step, as TRL's
    SyncRefModelCallback does at ``on_step_end`` (``global_step % ref_model_sync_steps == 0``).

    Args:
      ref_state: nnx.State of the reference model (every variable); only its ``nnx.Param``
        variables change, others (e.g. RoPE tables) are returned as they are.
      params: nnx.State of the policy's ``nnx.Param`` variables (same paths and shapes as the
        reference's parameters: the reference is a copy of the starting policy).
      alpha: the mix-up weight α in [0, 1] (TRL's ``ref_model_mixup_alpha``).

    Returns:
      The reference's new nnx.State, each parameter in its own dtype (mixed in float32).

    References:
      Gorbatovski et al., Learn Your Reference Model for Real Good Alignment, arXiv 2404.09656 (the soft update).
    """
    ref_params, rest = nnx.split_state(ref_state, nnx.Param, ...)
    mix = lambda r, p: (alpha * p.astype(jnp.float32) + (1.0 - alpha) * r.astype(jnp.float32)).astype(r.dtype)
    return nnx.merge_state(jax.tree.map(mix, ref_params, params), rest)


def make_train_step(graphdef, objective: Callable, tx: optax.GradientTransformation, *, offload: bool = False):
    """The pure step ``(state, batch, frozen, ref_state) -> (state, metrics)``.

    The model is ``nnx.merge(graphdef, state.params, frozen)``: trainable params in the state,
    frozen variables (a LoRA base, RoPE tables) as an argument. ``objective(model, batch,
    loss_state, ref_state) -> (loss, metrics, new_loss_state)``; the reference's variables are
    an argument too, so jit never bakes weights into the program.

    A step whose loss or gradients are not all finite changes nothing but ``step`` and reports
    ``skipped`` = 1 (else 0) in its metrics; see the module docstring.

    ``offload``: the optimizer state arrives in host memory (its in/out shardings have memory
    kind "pinned_host", set by the caller); the step moves it to the device for the update, and
    the out shardings move the new state back (``optimizer.offload``).
    """

    def step(state: TrainState, batch, frozen, ref_state):
        def loss_fn(params):
            model = nnx.merge(graphdef, params, frozen)
            loss, metrics, loss_state = objective(model, batch, state.loss_state, ref_state)
            return loss, (metrics, loss_state)

        (loss, (metrics, loss_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        finite = all_finite(loss, grads)

        def update(params, opt_state, grads):
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        old_opt = jax.device_put(state.opt_state, jax.memory.Space.Device) if offload else state.opt_state
        if isinstance(old_opt, optax.MultiStepsState):  # see the module docstring
            params, opt_state = _keep_if(finite, update(state.params, old_opt, grads), (state.params, old_opt))
        else:
            params, opt_state = jax.lax.cond(finite, update, lambda params, opt_state, grads: (params, opt_state),
                                             state.params, old_opt, grads)
        loss_state = _keep_if(finite, loss_state, state.loss_state)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                       skipped=jnp.logical_not(finite).astype(jnp.int32))
        new = TrainState(step=state.step + 1, params=params, opt_state=opt_state, loss_state=loss_state)
        return new, metrics

    return step
