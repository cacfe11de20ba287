"""One training stage: split the model, jit the step with explicit shardings, resume from the
latest checkpoint, run with a progress bar, log metrics, save checkpoints.

Batches come from a *batch source*: ``DatasetBatches`` reads a grain pipeline through a
checkpointable iterator (offline data); pojax.train.online builds each step's batch from the
current policy's samples. Anything with the same four members works."""
from __future__ import annotations

import functools
import os
import time
from typing import Callable, Protocol

import jax
import numpy as np
from absl import logging
from flax import nnx
from tqdm import tqdm

from pojax import sharding
from pojax.config import ConfigError
from pojax.data.pipeline import make_iterator, restore_iterator
from pojax.train import memory
from pojax.train.checkpoint import Checkpoints
from pojax.train.metrics import MetricsWriter
from pojax.train.optim import current_learning_rate
from pojax.train.preemption import Preempted, Watchdog, current
from pojax.train.step import NonFiniteError, init_state, make_train_step, sync_reference

_BAR_KEYS = (("loss", "loss"), ("rewards/accuracies", "acc"), ("tokens_per_s", "tok/s"))


def _batch_sharding(mesh, rules, shapes: dict):
    return {k: sharding.logical_to_sharding(("batch",) + (None,) * (len(s) - 1), mesh, rules, shape=s)
            for k, s in shapes.items()}


def tokens_in(batch: dict) -> int:
    """Non-padding tokens (prompt + completion) of a right-padded batch: per row, everything up
    to its last completion token, for every *_mask array of the batch."""
    total = 0
    for k, mask in batch.items():
        if k.endswith("mask") and np.ndim(mask) >= 2:
            m = np.asarray(mask).reshape(-1, np.shape(mask)[-1])
            width = m.shape[1]
            total += int(np.where(m.any(1), width - np.argmax(m[:, ::-1], 1), 0).sum())
    return total


class _Mean:
    """Running per-key means of micro-batch metrics that skip non-finite values (e.g. KTO's
    rewards/chosen of a micro-batch without a desirable example)."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def add(self, metrics: dict) -> None:
        for k, v in metrics.items():
            v = float(v)
            self.counts.setdefault(k, 0)
            self.sums.setdefault(k, 0.0)
            if np.isfinite(v):
                self.sums[k] += v
                self.counts[k] += 1

    def result(self) -> dict:
        return {k: (self.sums[k] / c if c else float("nan")) for k, c in self.counts.items()}


class BatchSource(Protocol):
    """Where a stage's host micro-batches come from.

    ``example`` is a host batch with the shapes of every batch (numpy arrays; nothing consumed);
    ``next(step, policy)`` returns the next host micro-batch of optimizer step ``step`` and
    extra metrics for that step's line (``policy()`` builds the current model, for sources that
    sample from it); ``iterator`` is a grain iterator saved in checkpoints, or None for a source
    whose batches are a pure function of the step; ``seek(index)`` moves to micro-batch
    ``index`` after a resume from a checkpoint without iterator state."""

    iterator: object

    def example(self) -> dict: ...

    def next(self, step: int, policy: Callable) -> tuple[dict, dict]: ...

    def seek(self, index: int) -> None: ...

    def close(self) -> None: ...


def batches_per_epoch(dataset) -> float | None:
    """Global micro-batches per pass over the source of ``dataset`` (a pipeline of
    pojax.data.pipeline.make_dataset): the source's length over the source items in one global
    micro-batch, or None where that count is not plain (a transform that reshapes the items, a
    mix of sources).

    The items in a host micro-batch are its array sizes over those of one source item, key by
    key: B/H for rows batched by make_dataset, 1 for packed batches (pojax.train.run's
    packed_dataset stacks whole batches, so there an epoch is one pass over the packed batches,
    i.e. over the pairs, which each appear once in them)."""
    root = dataset
    while root.parents:
        if len(root.parents) > 1:
            return None
        root = root.parents[0]
    item, batch = root[0], dataset[0]
    if not isinstance(item, dict):
        return None
    ratios = {np.size(batch[k]) / np.size(item[k]) for k in batch.keys() & item.keys() if np.size(item[k])}
    if len(ratios) != 1:
        return None
    per_batch = ratios.pop()
    return len(root) / (per_batch * jax.process_count()) if per_batch.is_integer() else None


class DatasetBatches:
    """The micro-batches of a grain pipeline (pojax.data.pipeline.make_dataset), read through a
    prefetching iterator whose position is saved in every checkpoint. Each batch comes with the
    metric ``epoch``: passes over the source read so far, a float (TRL's ``epoch``)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.iterator = make_iterator(dataset)
        self.batches_per_epoch = batches_per_epoch(dataset)

    def example(self) -> dict:
        return self.dataset[0]  # random access: does not move the iterator

    def next(self, step: int, policy: Callable) -> tuple[dict, dict]:
        batch = next(self.iterator)
        if self.batches_per_epoch is None:
            return batch, {}
        # the iterator's position (batches returned, restored on resume): (step + 1)·k after the
        # last micro-batch of step ``step``
        return batch, {"epoch": self.iterator.get_state()["next_index"] / self.batches_per_epoch}

    def seek(self, index: int) -> None:
        restore_iterator(self.iterator, {"next_index": index})

    def close(self) -> None:
        self.iterator.close()


def _close(bar, source, ckpt, best, writer) -> None:
    bar.close()
    source.close()
    ckpt.close()  # waits for the async saves in flight
    if best is not None:
        best.close()
    writer.close()  # uploads the metrics of a remote workdir


def run_stage(name: str, model, *, objective: Callable, steps: int, tx, workdir: str, config, mesh, rules,
              dataset=None, source: BatchSource | None = None, trainable=nnx.Param, reference=None, loss_state=None,
              metrics_file="metrics.jsonl", eval_fn: Callable | None = None, on_step: Callable | None = None,
              ref_sync: tuple[float, int] | None = None):
    """Trains ``model`` in place for ``steps`` optimizer steps and returns (model, final
    TrainState, the last step's evaluation figures or None when no evaluation ran in this call).

    ``dataset`` is a grain pipeline (pojax.data.pipeline.make_dataset) of this host's
    micro-batches, read through a prefetching iterator whose position is saved in every
    checkpoint (``DatasetBatches``); or pass any other ``source`` (a BatchSource). With ``train.grad_accum_steps`` = k, optimizer step s runs micro-batches
    s·k … s·k + k - 1 (optax.MultiSteps averages their gradients) and logs the mean of their
    metrics. Host batches become global arrays with jax.make_array_from_process_local_data.

    objective(model, reference, batch, loss_state) -> (loss, metrics, loss_state). The
    reference (a model or None) is passed to the jitted step as an argument, never baked in.
    Checkpoints go to workdir/checkpoints/<name>; a finished stage restores and returns.

    A micro-batch with a non-finite loss or gradient changes nothing (pojax.train.step) and is
    counted in the step's ``skipped`` metric; with ``train.nan_policy`` = "stop" the stage
    raises NonFiniteError naming the step instead, before that step is logged or saved.

    ``eval_fn(model, loss_state) -> {eval_*: value}`` runs every ``eval.every_steps`` steps and
    at the last step; its figures join that step's metrics line, and with
    ``checkpoint.best_metric`` set the best ``checkpoint.keep_best`` parameter sets by that
    metric are kept in workdir/checkpoints/<name>_best.

    ``on_step(step, state, metrics) -> (state, extra metrics)`` runs after each optimizer step,
    before it is logged or saved (OFS-DPO's swap of its fast and slow modules, pojax.train.ofs).

    ``ref_sync = (α, τ)``: TR-DPO (pojax.train.step.sync_reference) mixes the policy into the
    ``reference`` model after every τ-th optimizer step, under jit, and updates ``reference`` in
    place (so ``eval_fn`` sees the synced reference, as TRL's evaluation does); the reference's
    state is saved with each checkpoint and restored on resume.

    Each logged line carries TRL's ``learning_rate`` (of the step's update, read from the
    optimizer state of pojax.train.optim.make_optimizer; absent for an optimizer without one)
    and, for a ``dataset``, ``epoch`` (passes over its rows, ``batches_per_epoch``). Both come
    from checkpointed state, so a resumed run logs the values of an uninterrupted one.
    """
    graphdef, params, frozen = nnx.split(model, trainable, ...)
    ref_graphdef, ref_state = (None, None) if reference is None else nnx.split(reference)

    def obj(m, batch, ls, ref_state):
        # fresh arrays at this trace level: merging the jit-level reference variables inside
        # value_and_grad would hand nnx.scan (scan_layers) variables of an outer trace
        ref = None if ref_state is None else nnx.merge(ref_graphdef, jax.tree.map(lambda x: x, ref_state))
        return objective(m, ref, batch, ls)

    offload = bool(config.optimizer.get("offload", False))
    step_fn = make_train_step(graphdef, obj, tx, offload=offload)
    state = init_state(params, tx, loss_state)
    state_sh = sharding.param_shardings(state, mesh, rules)
    if offload:  # optimizer.offload: the optimizer state lives in host memory between steps
        kinds = {m.kind for m in mesh.devices.flat[0].addressable_memories()}
        if "pinned_host" not in kinds:
            raise ConfigError("optimizer.offload", f"needs host memory the devices can address (memory kind "
                              f"'pinned_host'); {mesh.devices.flat[0].platform} devices offer {', '.join(sorted(kinds))}")
        state_sh = state_sh.replace(opt_state=sharding.with_memory_kind(state_sh.opt_state, "pinned_host"))
    state = jax.device_put(state, state_sh)
    frozen_sh = sharding.param_shardings(frozen, mesh, rules)
    ref_sh = None if ref_state is None else sharding.param_shardings(ref_state, mesh, rules)
    sync_fn, sync_every = None, 0
    if ref_sync is not None:
        if reference is None:
            raise ValueError("run_stage: ref_sync needs a reference model")
        alpha, sync_every = ref_sync
        sync_fn = jax.jit(functools.partial(sync_reference, alpha=float(alpha)), in_shardings=(ref_sh, state_sh.params),
                          out_shardings=ref_sh, donate_argnums=(0,))
    if (dataset is None) == (source is None):
        raise ValueError("run_stage takes a dataset or a batch source (exactly one)")
    source = source if source is not None else DatasetBatches(dataset)
    example = source.example()
    hosts = jax.process_count()
    global_shapes = {k: (np.shape(v)[0] * hosts,) + np.shape(v)[1:] for k, v in example.items()}
    batch_sh = _batch_sharding(mesh, rules, global_shapes)
    accum = config.train.grad_accum_steps  # micro-batches per optimizer step (optax.MultiSteps)

    def to_global(host_batch):
        return {k: jax.make_array_from_process_local_data(batch_sh[k], v, global_shapes[k]) for k, v in host_batch.items()}

    jitted = memory.CompiledStep(jax.jit(step_fn, in_shardings=(state_sh, batch_sh, frozen_sh, ref_sh),
                                         out_shardings=(state_sh, None), donate_argnums=(0,)))

    ckpt = Checkpoints(os.path.join(workdir, "checkpoints", name), keep=config.checkpoint.keep)
    best_metric = config.checkpoint.best_metric if eval_fn is not None else ""
    best = None if not best_metric else Checkpoints(os.path.join(workdir, "checkpoints", f"{name}_best"),
                                                    keep=config.checkpoint.keep_best, best_metric=best_metric,
                                                    best_mode=config.checkpoint.best_mode)
    from pojax.train import wandb_log

    writer = MetricsWriter(workdir, metrics_file, tensorboard=name, wandb_run=wandb_log.run_for(config, workdir))
    nan_policy = config.train.nan_policy  # skip | stop: what a step with a non-finite loss or gradient does
    start, eval_metrics = 0, None
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state, data_iter=source.iterator, reference_like=ref_state if sync_fn else None)
        state = jax.device_put(state, state_sh)
        if meta["reference"] is not None:  # TR-DPO: the reference as synced up to this step
            ref_state = jax.device_put(meta["reference"], ref_sh)
            nnx.update(reference, ref_state)
        start = int(meta["step"])
        if not meta["data_restored"]:  # a checkpoint without the iterator: its position is the step
            source.seek(start * accum)
        logging.info("%s: resumed from step %d", name, start)
    writer.truncate_after(start)  # lines past the restored step (or of a run killed before any checkpoint)
    bar = tqdm(total=steps, initial=start, desc=name, disable=not config.logging.progress, dynamic_ncols=True)
    notice = current()  # pojax.train.preemption: SIGTERM / SIGUSR1 → checkpoint this step and stop
    watchdog = Watchdog(config.train.get("step_timeout_s", 0.0), what=f"{name} step")
    with sharding.use_mesh(mesh, rules), watchdog:
        for step in range(start, steps):
            t0, tokens, mean = time.perf_counter(), 0, _Mean()
            skipped, extra = 0, {}
            for _ in range(accum):
                host_batch, more = source.next(step, lambda params=state.params: nnx.merge(graphdef, params, frozen))
                extra.update(more)
                tokens += tokens_in(host_batch) * hosts
                state, m = jitted(state, to_global(host_batch), frozen, ref_state)
                m = jax.device_get(m)  # the one fetch per micro-batch; the non-finite flag rides along
                skipped += int(m.pop("skipped"))
                mean.add(m)
                if skipped and nan_policy == "stop":
                    _close(bar, source, ckpt, best, writer)  # in-flight saves of earlier (good) steps complete
                    raise NonFiniteError(name, step + 1, mean.result())
            if step == start:  # the first step of this call: where the memory goes (workdir/memory.json)
                report = memory.report(jitted.compiled, state, frozen, ref_state)
                logging.info(memory.summary(name, report))
                memory.write(workdir, name, report)
            if on_step is not None:
                state, more = on_step(step, state, mean.result())
                extra.update(more)
            if sync_fn is not None and (step + 1) % sync_every == 0:  # TRL: on_step_end, global_step % τ == 0
                ref_state = sync_fn(ref_state, state.params)
                nnx.update(reference, ref_state)
            dt = time.perf_counter() - t0
            metrics = dict(mean.result(), **extra, skipped=skipped, step_time_s=dt, tokens_per_s=tokens / dt)
            if skipped:
                logging.warning("%s: step %d: %d micro-batch(es) with a non-finite loss or gradients skipped "
                                "(train.nan_policy=skip)", name, step + 1, skipped)
            last = step + 1 == steps
            evaluated = eval_fn is not None and ((step + 1) % config.eval.every_steps == 0 or last)
            if evaluated:
                eval_metrics = eval_fn(nnx.merge(graphdef, state.params, frozen), state.loss_state)
                metrics.update(eval_metrics)
            if (step + 1) % config.logging.every_steps == 0 or last or evaluated:
                lr = current_learning_rate(state.opt_state)
                if lr is not None:
                    metrics["learning_rate"] = float(jax.device_get(lr))
                writer.write(step + 1, metrics)
            if best is not None and evaluated:
                if best_metric not in eval_metrics:
                    raise ConfigError("checkpoint.best_metric", f"{best_metric!r} is not an evaluation metric; "
                                      f"this run has {', '.join(sorted(eval_metrics))}")
                best.save(step + 1, state.params, {"step": step + 1}, metrics={best_metric: eval_metrics[best_metric]})
            bar.set_postfix({short: f"{float(metrics[k]):.3g}" for k, short in _BAR_KEYS if k in metrics})
            bar.update(1)
            received = notice.agreed()  # every process asks after the same step (a collective on several)
            if (step + 1) % config.checkpoint.every_steps == 0 or last or received:
                ckpt.save(step + 1, state, {"step": step + 1}, data_iter=source.iterator,
                          reference=ref_state if sync_fn is not None else None)
                writer.flush()  # a remote metrics file holds every line up to the latest checkpoint
            watchdog.beat()
            if received:
                _close(bar, source, ckpt, best, writer)  # the checkpoint of this step is complete on return
                raise Preempted(name, step + 1, received, ckpt.directory)
    _close(bar, source, ckpt, best, writer)
    nnx.update(model, state.params)
    return model, state, eval_metrics
