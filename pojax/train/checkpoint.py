"""orbax checkpoints of a training stage: the TrainState (params, optimizer state, step, loss
state) plus JSON metadata (the data position). orbax writes each step to a temporary directory
and renames it when complete, so a crash mid-save never leaves a corrupt "latest" checkpoint."""
from __future__ import annotations

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    """Keep-N checkpoints of one stage under ``directory`` (async saves)."""

    def __init__(self, directory: str, keep: int):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self.manager.save(step, args=args)

    def restore(self, state_like, step: int | None = None):
        """(state, meta) of ``step`` (default: the latest), placed like ``state_like``."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        out = self.manager.restore(step, args=args)
        return out.state, out.meta

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
