"""The pure train step: (state, batch) -> (state, metrics) under one jax.jit with explicit
shardings. Parameters travel as an nnx.State (a pytree); the model graph is static."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct


@struct.dataclass
class TrainState:
    """Everything a step changes: trainable params, optimizer state, step, loss state."""

    step: jax.Array
    params: Any  # nnx.State of the trainable variables
    opt_state: Any
    loss_state: Any = None  # e.g. BCO's running δ


def init_state(params, tx: optax.GradientTransformation, loss_state=None) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), loss_state=loss_state)


def make_train_step(graphdef, objective: Callable, tx: optax.GradientTransformation):
    """The pure step ``(state, batch, frozen, ref_state) -> (state, metrics)``.

    The model is ``nnx.merge(graphdef, state.params, frozen)``: trainable params in the state,
    frozen variables (a LoRA base, RoPE tables) as an argument. ``objective(model, batch,
    loss_state, ref_state) -> (loss, metrics, new_loss_state)``; the reference's variables are
    an argument too, so jit never bakes weights into the program.
    """

    def step(state: TrainState, batch, frozen, ref_state):
        def loss_fn(params):
            model = nnx.merge(graphdef, params, frozen)
            loss, metrics, loss_state = objective(model, batch, state.loss_state, ref_state)
            return loss, (metrics, loss_state)

        (loss, (metrics, loss_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
        new = TrainState(step=state.step + 1, params=params, opt_state=opt_state, loss_state=loss_state)
        return new, metrics

    return step
