"""orbax checkpoints of a training stage: the TrainState (params, optimizer state, step, loss
state), JSON metadata, and the grain data iterator's position (grain's own orbax handler writes
one small JSON file per process, so each host resumes its own shard). orbax writes each step to a temporary directory
and renames it when complete, so a crash mid-save never leaves a corrupt "latest" checkpoint."""
from __future__ import annotations

import grain
import jax
import orbax.checkpoint as ocp


class Checkpoints:
    """Keep-N checkpoints of one stage under ``directory`` (async saves): the latest ``keep``,
    or with ``best_metric`` the ``keep`` best by that metric (``best_mode`` min | max)."""

    def __init__(self, directory: str, keep: int, best_metric: str | None = None, best_mode: str = "min"):
        best = {} if not best_metric else dict(best_fn=lambda m: m[best_metric], best_mode=best_mode)
        # cleanup_tmp_directories: a save killed mid-write leaves a *.orbax-checkpoint-tmp-* dir, which
        # latest_step() never lists; it is removed when the next run opens the directory.
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                               cleanup_tmp_directories=True, **best)
        self.manager = ocp.CheckpointManager(directory, options=options)

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict, metrics: dict | None = None, data_iter=None, reference=None) -> None:
        """Saves asynchronously; the data iterator's position (grain's handler is synchronous) is
        the one at this call. ``reference``: a reference model's state that training changes
        (TR-DPO's synced reference), saved as its own item so readers of ``state`` (task=export)
        see the usual layout."""
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if reference is not None:
            items["reference"] = ocp.args.StandardSave(reference)
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics)

    def restore(self, state_like, step: int | None = None, data_iter=None, reference_like=None):
        """(state, meta) of ``step`` (default: the latest), placed like ``state_like``; a fresh
        ``data_iter`` of the same pipeline is moved in place to the saved position. Returns
        whether it was (a checkpoint without a data item leaves it untouched) in meta["data_restored"].
        With ``reference_like``, the saved reference item (``save``'s ``reference``) is restored
        like it into meta["reference"] (None when the checkpoint has none)."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        items = dict(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        has_reference = reference_like is not None and "reference" in self.manager.item_metadata(step)
        if has_reference:
            items["reference"] = ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, reference_like))
        has_data = data_iter is not None and "data" in self.manager.item_metadata(step)
        if has_data:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        return out.state, dict(out.meta, data_restored=has_data, reference=out.reference if has_reference else None)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
