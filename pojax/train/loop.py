"""One training stage: split the model, jit the step with explicit shardings, resume from the
latest checkpoint, run with a progress bar, log metrics, save checkpoints."""
from __future__ import annotations

import os
import time
from typing import Callable

import jax
import numpy as np
from absl import logging
from flax import nnx
from tqdm import tqdm

from pojax import sharding
from pojax.train.checkpoint import Checkpoints
from pojax.train.metrics import MetricsWriter
from pojax.train.step import init_state, make_train_step

_BAR_KEYS = (("loss", "loss"), ("rewards/accuracies", "acc"), ("tokens_per_s", "tok/s"))


def _batch_sharding(mesh, rules, batch):
    return {k: sharding.logical_to_sharding(("batch",) + (None,) * (np.ndim(v) - 1), mesh, rules, shape=np.shape(v))
            for k, v in batch.items()}


def run_stage(name: str, model, *, objective: Callable, batch_fn: Callable[[int], dict], steps: int, tx, workdir: str,
              config, mesh, rules, trainable=nnx.Param, reference=None, loss_state=None, metrics_file="metrics.jsonl"):
    """Trains ``model`` in place for ``steps`` optimizer steps and returns it.

    ``batch_fn(i)`` gives micro-batch i; with ``train.grad_accum_steps`` = k, optimizer step s
    runs micro-batches s·k … s·k + k - 1 (optax.MultiSteps averages their gradients) and logs
    the mean of their metrics.

    objective(model, reference, batch, loss_state) -> (loss, metrics, loss_state). The
    reference (a model or None) is passed to the jitted step as an argument, never baked in.
    Checkpoints go to workdir/checkpoints/<name>; a finished stage restores and returns.
    """
    graphdef, params, frozen = nnx.split(model, trainable, ...)
    ref_graphdef, ref_state = (None, None) if reference is None else nnx.split(reference)

    def obj(m, batch, ls, ref_state):
        ref = None if ref_state is None else nnx.merge(ref_graphdef, ref_state)
        return objective(m, ref, batch, ls)

    step_fn = make_train_step(graphdef, obj, tx)
    state = init_state(params, tx, loss_state)
    state_sh = sharding.param_shardings(state, mesh, rules)
    state = jax.device_put(state, state_sh)
    frozen_sh = sharding.param_shardings(frozen, mesh, rules)
    ref_sh = None if ref_state is None else sharding.param_shardings(ref_state, mesh, rules)
    example = batch_fn(0)
    batch_sh = _batch_sharding(mesh, rules, example)
    jitted = jax.jit(step_fn, in_shardings=(state_sh, batch_sh, frozen_sh, ref_sh), out_shardings=(state_sh, None),
                     donate_argnums=(0,))

    ckpt = Checkpoints(os.path.join(workdir, "checkpoints", name), keep=config.checkpoint.keep)
    writer = MetricsWriter(workdir, metrics_file)
    start = 0
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)
        state = jax.device_put(state, state_sh)
        start = int(meta["step"])
        logging.info("%s: resumed from step %d", name, start)
    writer.truncate_after(start)  # lines past the restored step (or of a run killed before any checkpoint)
    bar = tqdm(total=steps, initial=start, desc=name, disable=not config.logging.progress, dynamic_ncols=True)
    accum = config.train.grad_accum_steps  # micro-batches per optimizer step (optax.MultiSteps)
    with sharding.use_mesh(mesh, rules):
        for step in range(start, steps):
            t0, tokens, sums = time.perf_counter(), 0, {}
            for micro in range(step * accum, (step + 1) * accum):
                batch = jax.device_put(batch_fn(micro), batch_sh)
                state, m = jitted(state, batch, frozen, ref_state)
                for k, v in jax.device_get(m).items():
                    sums[k] = sums.get(k, 0.0) + float(v) / accum
                tokens += sum(int(np.sum(v)) for k, v in batch.items() if k.endswith("mask"))
            dt = time.perf_counter() - t0
            metrics = dict(sums, step_time_s=dt, tokens_per_s=tokens / dt)
            if (step + 1) % config.logging.every_steps == 0 or step + 1 == steps:
                writer.write(step + 1, metrics)
            bar.set_postfix({short: f"{float(metrics[k]):.3g}" for k, short in _BAR_KEYS if k in metrics})
            bar.update(1)
            if (step + 1) % config.checkpoint.every_steps == 0 or step + 1 == steps:
                ckpt.save(step + 1, state, {"step": step + 1})
    bar.close()
    ckpt.close()
    nnx.update(model, state.params)
    return model, state
