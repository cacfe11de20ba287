"""orbax checkpoints of a training stage: the TrainState (params, optimizer state, step, loss
state), JSON metadata, and the grain data iterator's position (grain's own orbax handler writes
one small JSON file per process, so each host resumes its own shard). orbax writes each step to a temporary directory
and renames it when complete, so a crash mid-save never leaves a corrupt "latest" checkpoint."""
from __future__ import annotations

import grain
import jax
import orbax.checkpoint as ocp


EXIT_CHECKPOINT_WRITE = 74  # sysexits.h EX_IOERR: python -m pojax.main's status for CheckpointWriteError
MIN_REPLICA_SLICE_BYTES = 1 << 20


def _replica_parallel_for_large_arrays_only() -> None:
    """orbax writes a replicated array in slices, one per replica (replica-parallel saving), each
    slice cut by an eagerly dispatched ``lax.slice``. For small arrays (norm scales, biases, a
    tiny model's everything) the dispatches cost more than the parallel write saves: measured on
    CPU with 8 devices, a tiny model's 4 saves took 3.7 s, 0.5 s with slices of at least 1 MiB.
    So replica-parallel only where each slice holds >= MIN_REPLICA_SLICE_BYTES (orbax's
    ``min_slice_bytes_for_replica_parallel``); a 7B model's matrices still qualify. orbax keys
    type handlers globally, so this applies to the process's other orbax saves too (MaxText
    registers its array handler the same way); files and restores are unchanged."""
    handler = ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES)
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


class CheckpointWriteError(Exception):
    """A checkpoint could not be written (disk full, permission denied, a gs:// error). orbax
    renames a step's directory only when it is complete, so the previous checkpoint stays the
    latest one and a relaunch resumes from it."""

    def __init__(self, directory: str, step: int | None, cause: BaseException, latest: int | None):
        root = cause
        while root.__cause__ is not None or root.__context__ is not None:  # the OSError under orbax's wrappers
            root = root.__cause__ or root.__context__
        when = f" by step {step}" if step is not None else ""  # async: an earlier step's write may have failed
        kept = f"step {latest} stays the latest checkpoint" if latest is not None else "there is no earlier checkpoint"
        super().__init__(f"writing checkpoints to {directory} failed{when} ({type(root).__name__}: {root}); {kept}")


class Checkpoints:
    """Keep-N checkpoints of one stage under ``directory`` (async saves): the latest ``keep``,
    or with ``best_metric`` the ``keep`` best by that metric (``best_mode`` min | max)."""

    def __init__(self, directory: str, keep: int, best_metric: str | None = None, best_mode: str = "min"):
        best = {} if not best_metric else dict(best_fn=lambda m: m[best_metric], best_mode=best_mode)
        # cleanup_tmp_directories: a save killed mid-write leaves a *.orbax-checkpoint-tmp-* dir, which
        # latest_step() never lists; it is removed when the next run opens the directory.
        # create_directories_asynchronously=False: a step's directory is made in save(), so a directory
        # that takes no writes fails there at once (orbax 0.12's background creation leaves the saving
        # thread waiting for a signal that never comes, up to its 20-minute async timeout)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=True, cleanup_tmp_directories=True,
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False), **best)
        _replica_parallel_for_large_arrays_only()
        self.directory = directory
        self._last_saved = None
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
        try:  # an earlier async save's failure surfaces here too
            self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics)
        except Exception as e:
            raise self._write_error(e, step) from e
        self._last_saved = step

    def _write_error(self, cause: BaseException, step: int | None) -> CheckpointWriteError:
        latest = None
        try:
            self.manager.reload()  # what is on storage now (the failed step never became a checkpoint)
            latest = self.manager.latest_step()
        except Exception:  # the storage may be unreadable too
            pass
        return CheckpointWriteError(self.directory, step, cause, latest)

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
        """Waits for the saves in flight; raises CheckpointWriteError when one of them failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            error = self._write_error(e, self._last_saved)
            try:
                self.manager.close()
            except Exception:  # the same failure again
                pass
            raise error from e
        self.manager.close()
