"""What a run writes besides checkpoints: metrics.jsonl (one line per logged step), TensorBoard
scalars (workdir/tensorboard/<stage>), plots/*.png and results.json. The workdir may be a
gs:// URL (pojax.fs)."""
from __future__ import annotations

import json
import math
import time

from pojax import fs
from pojax.train.tensorboard import EventWriter, tag

PLOTS = (
    ("loss", ("loss",)),
    ("rewards", ("rewards/chosen", "rewards/rejected")),
    ("margins", ("rewards/margins",)),
    ("accuracies", ("rewards/accuracies",)),
    ("eval_loss", ("eval_loss",)),
    ("eval_accuracies", ("eval_rewards/accuracies",)),
)


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0 of a multi-host run)."""
    import jax

    return jax.process_index() == 0


class MetricsWriter:
    """Appends one JSON object per step to ``workdir/metrics.jsonl`` (resumes append) and, with
    ``tensorboard`` set, the same scalars to TensorBoard events in workdir/tensorboard/<name>,
    tagged ``train/<key>`` and ``eval/<key without eval_>`` (pojax.train.tensorboard.tag), and to
    ``wandb_run`` (pojax.train.wandb_log) when given.
    In a multi-host run only process 0 writes.

    A local file is appended to at every ``write``. A remote one (gs://; objects cannot be
    appended to) is kept in memory and uploaded whole by ``flush()``, which the training loop
    calls at every checkpoint and at the end, and ``write`` calls when ``flush_every_s``
    seconds have passed since the last upload: a killed run loses at most the lines after its
    last checkpoint, which a resumed run drops and rewrites anyway (``truncate_after``)."""

    def __init__(self, workdir: str, name: str = "metrics.jsonl", tensorboard: str | None = None,
                 flush_every_s: float = 60.0, wandb_run=None):
        self.path = fs.join(workdir, name)
        self.primary = is_primary()
        self.remote = fs.is_remote(workdir)
        self.flush_every_s = flush_every_s
        self._lines: list[str] | None = None  # remote: the whole file, uploaded by flush()
        self._flushed_at = time.monotonic()
        if self.primary:
            fs.makedirs(workdir)
        self.events = None if tensorboard is None or not self.primary else EventWriter(
            fs.join(workdir, "tensorboard", tensorboard))
        self.wandb = None
        if wandb_run is not None and self.primary:  # pojax.train.wandb_log: <stage>/<key> on the stage's step axis
            from pojax.train.wandb_log import StageLogger

            self.wandb = StageLogger(wandb_run, tensorboard or name.removesuffix(".jsonl"))

    def write(self, step: int, values: dict) -> None:
        if not self.primary:
            return
        row = {"step": int(step)}
        row.update({k: _plain(v) for k, v in values.items()})
        line = json.dumps(row) + "\n"
        if self.remote:
            self._remote_lines().append(line)
        else:
            with open(self.path, "a") as f:
                f.write(line)
        if self.events is not None:
            self.events.scalars(step, {tag(k): v for k, v in row.items() if k != "step"})
        if self.wandb is not None:
            self.wandb.log(step, row)
        if self.remote and time.monotonic() - self._flushed_at >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Uploads the metrics lines and TensorBoard events of a remote workdir (nothing to do
        for a local one: its files are written at every step)."""
        if not self.primary:
            return
        if self._lines is not None:
            fs.write_text(self.path, "".join(self._lines))
        if self.events is not None:
            self.events.flush()
        self._flushed_at = time.monotonic()

    close = flush

    def read(self) -> list[dict]:
        if self._lines is not None:
            lines = self._lines
        elif not fs.exists(self.path):
            return []
        else:
            with fs.open_file(self.path) as f:
                lines = f.read().splitlines() if self.remote else list(f)
        return [json.loads(line) for line in lines if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drops lines logged after ``step`` (a resumed run rewrites them)."""
        if not self.primary:
            return
        lines = [json.dumps(r) + "\n" for r in self.read() if r["step"] <= step]
        if self.remote:
            self._lines = lines
            self.flush()
        else:
            with open(self.path, "w") as f:
                f.writelines(lines)

    def _remote_lines(self) -> list[str]:
        if self._lines is None:  # a writer used without truncate_after: start from the object
            self._lines = [json.dumps(r) + "\n" for r in self.read()]
        return self._lines


def _plain(v):
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    v = float(v) if hasattr(v, "__float__") else v
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_plots(rows: list[dict], outdir: str, extra: dict | None = None) -> list[str]:
    """One PNG per metric group present in ``rows``; returns the paths written (none on a
    process other than 0)."""
    if not is_primary():
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fs.makedirs(outdir)
    written = []
    for name, keys in PLOTS + tuple((extra or {}).items()):
        keys = [k for k in keys if any(r.get(k) is not None for r in rows)]
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if r.get(k) is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k)
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = fs.join(outdir, f"{name}.png")
        with fs.open_file(path, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def write_results(workdir: str, results: dict) -> None:
    if not is_primary():
        return
    fs.write_text(fs.join(workdir, "results.json"), json.dumps({k: _plain(v) for k, v in results.items()}, indent=2))
