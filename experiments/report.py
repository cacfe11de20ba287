"""One table and a few plots for a sweep: every run's metrics.jsonl and results.json.

    python -m experiments.report --sweep=experiments/sweeps/gym_losses.py [--workdir=runs/gym_losses]
    python -m experiments.report --runs=runs/dpo,runs/kto,runs/simpo --workdir=runs/compare

Writes <root>/report.md (a table per run, and one averaged over seeds when train.seed is
swept), <root>/report.csv (the per-run table), and <root>/plots/: training curves of every run
overlaid (loss, rewards/accuracies, eval_rewards/accuracies) and the final metric against each
swept hyperparameter.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys

from absl import app, flags

from experiments import sweeps
from pojax import fs
from pojax.preflight import flatten

# final figures shown, in this order, when some run has them (results.json first, then the last metrics line)
COLUMNS = ("gold_win_rate", "gold_reward_after", "gold_reward_before", "eval_rewards/accuracies", "eval_loss",
           "eval_rewards/margins", "rewards/accuracies", "loss", "step")
CURVES = (("loss", "loss"), ("accuracies", "rewards/accuracies"), ("eval_accuracies", "eval_rewards/accuracies"),
          ("eval_loss", "eval_loss"))
SEED_KEY = "train.seed"


def read_jsonl(path: str) -> list:
    if not fs.exists(path):
        return []
    return [json.loads(line) for line in fs.read_text(path).splitlines() if line.strip()]


def collect(sweep, root: str) -> list:
    """Per run: {name, swept, status, metrics (rows), final (dict)}. status is done (results.json),
    partial (metrics only) or missing."""
    out = []
    for run in sweep.runs:
        workdir = os.path.join(root, run.name)
        rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
        results_path = os.path.join(workdir, "results.json")
        results = {}
        if fs.exists(results_path):
            results = json.loads(fs.read_text(results_path))
        final = {}
        for row in rows:  # the last value of each metric (eval ones are logged every eval.every_steps)
            final.update({k: v for k, v in row.items() if v is not None})
        final.update({k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        status = "done" if results else ("partial" if rows else "missing")
        out.append({"name": run.name, "swept": run.swept, "status": status, "metrics": rows, "final": final})
    return out


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(records: list) -> tuple[list, list]:
    """(header, rows) of the per-run table: run, swept keys, status, final figures."""
    keys = list(dict.fromkeys(k for r in records for k in r["swept"]))
    cols = [c for c in COLUMNS if any(c in r["final"] for r in records)]
    header = ["run", *keys, "status", *cols]
    rows = [[r["name"], *[r["swept"].get(k, "") for k in keys], r["status"], *[r["final"].get(c) for c in cols]]
            for r in records]
    return header, rows


def seed_table(records: list) -> tuple[list, list] | None:
    """(header, rows) averaged over train.seed: mean ± std of each figure per setting, or None
    when the seed is not swept."""
    if not any(SEED_KEY in r["swept"] for r in records):
        return None
    keys = [k for k in dict.fromkeys(k for r in records for k in r["swept"]) if k != SEED_KEY]
    cols = [c for c in COLUMNS if c != "step" and any(c in r["final"] for r in records)]
    groups = {}
    for r in records:
        groups.setdefault(tuple(sweeps.format_value(r["swept"].get(k, "")) for k in keys), []).append(r)
    rows = []
    for setting, rs in groups.items():
        cells = []
        for c in cols:
            vals = [r["final"][c] for r in rs if isinstance(r["final"].get(c), (int, float)) and math.isfinite(r["final"][c])]
            if not vals:
                cells.append("")
                continue
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
            cells.append(f"{mean:.4g} ± {std:.2g}" if len(vals) > 1 else f"{mean:.4g}")
        rows.append([*setting, sum(r["status"] == "done" for r in rs), *cells])
    main = cols[0] if cols else None
    if main:  # best first by the main figure
        rows.sort(key=lambda row: -float(row[len(keys) + 1].split(" ")[0]) if row[len(keys) + 1] else math.inf)
    return [*keys, "seeds done", *cols], rows


def markdown(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def main_metric(records: list) -> str | None:
    for c in COLUMNS:
        if c != "step" and any(c in r["final"] for r in records):
            return c
    return None


def write_plots(records: list, outdir: str) -> list:
    """Overlaid curves and final metric vs each swept hyperparameter; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fs.makedirs(outdir)
    written = []
    for fname, key in CURVES:
        runs = [(r["name"], [(m["step"], m[key]) for m in r["metrics"] if m.get(key) is not None]) for r in records]
        runs = [(n, pts) for n, pts in runs if pts]
        if not runs:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, pts in runs:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, linewidth=1)
        ax.set_xlabel("step")
        ax.set_title(key)
        if len(runs) <= 24:
            ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        path = os.path.join(outdir, f"{fname}.png")
        with fs.open_file(path, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        plt.close(fig)
        written.append(path)
    metric = main_metric(records)
    keys = list(dict.fromkeys(k for r in records for k in r["swept"]))
    for key in keys if metric else ():
        pts = [(r["swept"][key], r["final"][metric]) for r in records if key in r["swept"] and metric in r["final"]]
        if not pts:
            continue
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in pts)
        labels = sorted({x for x, _ in pts}) if numeric else list(dict.fromkeys(sweeps.format_value(x) for x, _ in pts))
        fig, ax = plt.subplots(figsize=(max(5, 0.3 * len(labels)), 4))
        xs = [x if numeric else labels.index(sweeps.format_value(x)) for x, _ in pts]
        ax.scatter(xs, [y for _, y in pts], s=14)
        if not numeric:
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=70, fontsize=7)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        fig.tight_layout()
        path = os.path.join(outdir, f"{metric.replace('/', '_')}_vs_{key}.png")
        with fs.open_file(path, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def report(sweep, root: str, *, plots: bool = True, out: str | None = None) -> str:
    """Writes report.md, report.csv and plots/ under ``out`` (default ``root``, the runs'
    parent); returns the markdown."""
    records = collect(sweep, root)
    root = root if out is None else out
    header, rows = table(records)
    fs.makedirs(root)  # root may be gs://bucket/sweep (pojax.fs)
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows([["" if v is None else v for v in row] for row in rows])
    fs.write_text(os.path.join(root, "report.csv"), buf.getvalue())
    done = sum(r["status"] == "done" for r in records)
    parts = [f"# {sweep.name}", "", f"base: `{sweep.base}`; {done}/{len(records)} runs done.", ""]
    seeds = seed_table(records)
    if seeds is not None:
        parts += ["## Mean ± std over seeds", "", markdown(*seeds), ""]
    parts += ["## Runs", "", markdown(header, rows), ""]
    text = "\n".join(parts)
    fs.write_text(os.path.join(root, "report.md"), text)
    if plots:
        write_plots(records, os.path.join(root, "plots"))
    return text


def workdirs_sweep(workdirs: list[str]) -> sweeps.Sweep:
    """A sweep over existing run directories (any runs, not only a sweep file's): each run is
    named by its path, and its swept keys are the config.json entries that differ between
    the runs (so the table and the metric-vs-hyperparameter plots show what changed)."""
    configs = []
    for w in workdirs:
        path = os.path.join(w, "config.json")
        configs.append(flatten(json.loads(fs.read_text(path))) if fs.exists(path) else {})
    keys = sorted({k for c in configs for k in c})
    varying = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    runs = tuple(sweeps.Run(name=w, overrides=c, swept={k: c.get(k) for k in varying if k in c})
                 for w, c in zip(workdirs, configs))
    return sweeps.Sweep(name="comparison", base="(run directories)", runs=runs)


def _define_flags() -> dict:
    """The command-line flags (defined only when run as a program, so that launch and report
    can be imported together)."""
    return dict(
        sweep=flags.DEFINE_string("sweep", None, "Sweep file, e.g. experiments/sweeps/gym_losses.py."),
        workdir=flags.DEFINE_string("workdir", None, "Root of the runs' workdirs; default runs/<sweep name>. "
                                    "With --runs: where the report goes."),
        runs=flags.DEFINE_list("runs", None, "Run directories to compare instead of a sweep (comma-separated); "
                               "swept keys are the config.json entries that differ."),
    )


def main(argv, f: dict) -> int:
    del argv
    if f['runs'].value:
        if not f['workdir'].value:
            print("report: --runs needs --workdir (where report.md, report.csv and plots/ go)", file=sys.stderr)
            return 2
        print(report(workdirs_sweep(f['runs'].value), "", plots=True, out=f['workdir'].value))
        return 0
    if not f['sweep'].value:
        print("report: --sweep or --runs is required", file=sys.stderr)
        return 2
    sweep = sweeps.load(f['sweep'].value)
    root = f['workdir'].value or os.path.join("runs", sweep.name)
    print(report(sweep, root))
    return 0


if __name__ == "__main__":
    _flags = _define_flags()
    app.run(lambda argv: sys.exit(main(argv, _flags)))
