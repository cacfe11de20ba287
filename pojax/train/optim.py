"""The optax optimizer of a run config: AdamW with warm-up then cosine / linear / constant,
global-norm clipping and gradient accumulation (optax.MultiSteps)."""
from __future__ import annotations

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


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
    o = config.optimizer
    parts = []
    if o.max_grad_norm and o.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(o.max_grad_norm))
    parts.append(optax.adamw(schedule(config, total_steps), b1=o.b1, b2=o.b2, eps=1e-8, weight_decay=o.weight_decay))
    tx = optax.chain(*parts)
    if config.train.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=config.train.grad_accum_steps)
    return tx
