"""Weights & Biases logging (``logging.wandb=True``), next to metrics.jsonl and TensorBoard,
process 0 only.

One W&B run per workdir: its id is kept in ``workdir/wandb_run_id``, so a resumed run (the same
command on the same workdir) continues the same W&B run (``resume="allow"``), and
``train.overwrite=True`` (which clears the workdir's run files, this one included) starts a new
one. The run's config is the pojax config; ``logging.wandb_project`` / ``_entity`` / ``_name``
(default: the workdir's name) / ``_group`` / ``_tags`` (comma-separated) go to ``wandb.init``.
W&B's own environment applies as usual: ``WANDB_MODE=offline`` (no network; ``wandb sync``
uploads later), ``WANDB_API_KEY``, ``WANDB_DIR``.

Each stage logs its metrics.jsonl values as ``<stage>/<key>`` (sft/loss, train/loss,
train/eval_loss, …) against its own step axis ``<stage>/step`` (W&B's ``define_metric``), since
the SFT and preference stages both count from step 1. A resumed run logs again the steps after
its last checkpoint (metrics.jsonl drops and rewrites them; W&B keeps both). results.json goes
to the run's summary when the task ends (``finish``).
"""
from __future__ import annotations

import os
import tempfile

from pojax import fs

ID_FILE = "wandb_run_id"
_RUNS: dict[str, object] = {}  # workdir → the process's W&B run


def check_installed() -> None:
    """ConfigError (logging.wandb) with the install command when wandb is missing."""
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        from pojax.config import ConfigError

        raise ConfigError("logging.wandb", "True needs the wandb package: pip install -e '.[wandb]' (or pip install "
                          "wandb), or set logging.wandb=False")


def _run_id(workdir: str) -> str:
    path = fs.join(workdir, ID_FILE)
    if fs.exists(path):
        with fs.open_file(path) as f:
            return f.read().strip()
    import secrets

    run_id = secrets.token_hex(4)  # W&B's ids: 8 characters of [a-z0-9]
    fs.write_text(path, run_id + "\n")
    return run_id


def run_for(config, workdir: str):
    """The W&B run of ``workdir`` (started on first use), or None when logging.wandb is off or
    this is not process 0."""
    from pojax.train.metrics import is_primary

    if not config.logging.get("wandb", False) or not is_primary():
        return None
    if workdir not in _RUNS:
        import wandb

        fs.makedirs(workdir)
        lg = config.logging
        local = None if fs.is_remote(workdir) else workdir
        tags = [t.strip() for t in lg.get("wandb_tags", "").split(",") if t.strip()]
        _RUNS[workdir] = wandb.init(
            project=lg.get("wandb_project") or "pojax", entity=lg.get("wandb_entity") or None,
            name=lg.get("wandb_name") or os.path.basename(workdir.rstrip("/")), group=lg.get("wandb_group") or None,
            tags=tags or None, id=_run_id(workdir), resume="allow", dir=local or tempfile.mkdtemp(prefix="pojax-wandb-"),
            config=config.to_dict())
    return _RUNS[workdir]


class StageLogger:
    """``log(step, row)`` of one stage's metrics rows into the workdir's W&B run."""

    def __init__(self, run, stage: str):
        self.run, self.stage = run, stage
        run.define_metric(f"{stage}/step")
        run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")

    def log(self, step: int, row: dict) -> None:
        values = {f"{self.stage}/{k}": v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        self.run.log({f"{self.stage}/step": int(step), **values})


def finish(workdir: str, results: dict | None = None, teardown: bool = False) -> None:
    """Puts ``results`` in the run's summary and closes the W&B run of ``workdir`` (if any).

    ``teardown=True`` (``pojax.main``, which owns its process) then waits for W&B's service to
    write and upload everything (``wandb.teardown``): ``run.finish()`` alone can return while the
    offline run file still lacks the last records (seen: a file read right after ``finish`` held
    the SFT steps but none of the preference steps). W&B's own atexit hook would wait too, but its
    docs call that unreliable under multiprocessing; a notebook calling ``finish`` keeps its
    service (teardown would also close the user's own runs)."""
    run = _RUNS.pop(workdir, None)
    if run is None:
        return
    if results:
        run.summary.update({k: v for k, v in results.items() if isinstance(v, (int, float, str, bool))})
    run.finish()
    if teardown:
        import wandb

        wandb.teardown()
