"""The optax optimizer of a run config: AdamW with warm-up then cosine / linear / constant,
global-norm clipping and gradient accumulation (optax.MultiSteps). The learning rate of the
latest update rides in the optimizer state (optax.inject_hyperparams), where the training loop
reads it for its ``learning_rate`` metric: it is checkpointed with the rest, so a resumed run
logs the same values."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def schedule(config, total_steps: int) -> optax.Schedule:
    o = config.optimizer
    peak, warmup = o.learning_rate, min(o.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    if o.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps)
    elif o.schedule == "linear":
        after = optax.linear_schedule(peak, 0.0, decay_steps)
    elif o.schedule == "constant":
        after = optax.constant_schedule(peak)
    else:
        raise ValueError(f"config key optimizer.schedule: {o.schedule!r} is not one of cosine, linear, constant")
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """optax.clip_by_global_norm's rule, g ← g · min(1, max_norm / ‖g‖₂) over the whole tree, as
    one scalar factor multiplied into each element.

    optax divides every element by the norm instead (``t / ‖g‖ · max_norm``). XLA counts a
    divide as too costly to recompute in each consumer, so it writes the clipped gradients to
    a buffer of their own, read by Adam's two moment updates: one more parameter-sized temporary
    in the step (0.5B fp32: 1.8 GiB). With a multiply the clip fuses into those updates. The two
    differ by rounding only (≤ 1 ulp per element).
    """

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        factor = jnp.where(norm < max_norm, 1.0, max_norm / norm)
        return jax.tree.map(lambda t: t * factor.astype(t.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def _adamw(learning_rate, *, b1: float, b2: float, weight_decay: float, mu_dtype=None) -> optax.GradientTransformation:
    # learning_rate is the injected float32 value of this update; handing it to adamw as a
    # schedule keeps optax's scale_by_schedule path, which casts it to each update's dtype (a
    # bare array would promote bfloat16 updates to float32)
    return optax.adamw(lambda count: learning_rate, b1=b1, b2=b2, eps=1e-8, weight_decay=weight_decay,
                       mu_dtype=mu_dtype)



def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
    o = config.optimizer
    parts = []
    if o.max_grad_norm and o.max_grad_norm > 0:
        parts.append(clip_by_global_norm(o.max_grad_norm))
    adamw = optax.inject_hyperparams(_adamw, static_args=("b1", "b2", "weight_decay", "mu_dtype"),
                                     hyperparam_dtype=jnp.float32)
    mu_dtype = o.get("mu_dtype", "")  # checked by pojax.config.validate
    parts.append(adamw(schedule(config, total_steps), b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                       mu_dtype=jnp.dtype(mu_dtype) if mu_dtype else None))
    tx = optax.chain(*parts)
    if config.train.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=config.train.grad_accum_steps)
    return tx


def current_learning_rate(opt_state) -> jax.Array | None:
    """The learning rate of the latest update in a state of ``make_optimizer``'s optimizer
    (possibly inside a larger chain), or None for a state without an injected one.

    optax.inject_hyperparams stores the value it used at each update, so this is
    schedule(updates applied - 1), and schedule(0) before the first update. A step that skipped
    its update (non-finite gradients, pojax.train.step) keeps the previous value, as it keeps
    the update count."""
    is_injected = lambda x: isinstance(x, (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState))
    for node in jax.tree.leaves(opt_state, is_leaf=is_injected):
        if is_injected(node) and "learning_rate" in node.hyperparams:
            return node.hyperparams["learning_rate"]
    return None
