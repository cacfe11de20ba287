"""What a run writes besides checkpoints: metrics.jsonl (one line per logged step), TensorBoard
scalars (workdir/tensorboard/<stage>), plots/*.png and results.json."""
from __future__ import annotations

import json
import math
import os

from pojax.train.tensorboard import EventWriter

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
    ``tensorboard`` set, the same scalars to TensorBoard events in workdir/tensorboard/<name>.
    In a multi-host run only process 0 writes."""

    def __init__(self, workdir: str, name: str = "metrics.jsonl", tensorboard: str | None = None):
        self.path = os.path.join(workdir, name)
        self.primary = is_primary()
        if self.primary:
            os.makedirs(workdir, exist_ok=True)
        self.events = None if tensorboard is None or not self.primary else EventWriter(
            os.path.join(workdir, "tensorboard", tensorboard))

    def write(self, step: int, values: dict) -> None:
        if not self.primary:
            return
        row = {"step": int(step)}
        row.update({k: _plain(v) for k, v in values.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.events is not None:
            self.events.scalars(step, {k: v for k, v in row.items() if k != "step"})

    def read(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drops lines logged after ``step`` (a resumed run rewrites them)."""
        if not self.primary:
            return
        rows = [r for r in self.read() if r["step"] <= step]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


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

    os.makedirs(outdir, exist_ok=True)
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
        path = os.path.join(outdir, f"{name}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def write_results(workdir: str, results: dict) -> None:
    if not is_primary():
        return
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({k: _plain(v) for k, v in results.items()}, f, indent=2)
