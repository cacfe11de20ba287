"""The largest model that trains on this host: full-parameter DPO with the workload's batch, each
framework with its chosen memory settings, the workload's depth growing until a run no longer
completes ``--steps`` steps (killed by the kernel's OOM killer, or failing to allocate).

    python -m experiments.bench.largest --workload=medium --steps=3 --fit=8,16 --hi=96 --resolution=4 \\
        --run=pojax:--config.model.remat=full,--config.reference.dtype=bfloat16,--config.optimizer.mu_dtype=bfloat16 \\
        --run=trl

A run is memory.py's ``framework[@python][:arg,arg,...]``. Per run the search probes the
``--fit`` depths first (small, quick), then fits peak RSS = a + b · depth to the completed
probes and probes the deepest grid depth (``--fit``'s first depth + k · ``--resolution``) whose
predicted peak stays under the host's memory (MemTotal, or ``--limit_gib``), inside the bracket
(deepest completed, shallowest failed); with fewer than two completed probes it bisects the
bracket. It stops when the bracket is one resolution step wide or ``--hi`` completed: the
answer is then the deepest completed depth, and the shallowest failed one is its proof.

Each probe runs in its own process, as memory.py runs it (RSS sampled, the runner's own step
times); the probe's model files are written by another process beforehand and deleted after, so
neither the driver nor the disk holds a model while the next probe runs. Results go to
``--out`` as <hardware>_largest_<workload>.json / .md: every probe with its depth, parameters,
outcome, peak RSS and s/step.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from absl import app, flags

from experiments.bench import compare, memory, workload

flags.FLAGS.set_default("workload", "medium")
flags.FLAGS.set_default("steps", 3)
flags.FLAGS.set_default("run", ["pojax:--config.model.remat=full", "trl"])  # memory.py's --run
_FIT = flags.DEFINE_list("fit", ["8", "16"], "depths probed first, whose peaks the search extrapolates")
_HI = flags.DEFINE_integer("hi", 96, "deepest depth probed")
_RESOLUTION = flags.DEFINE_integer("resolution", 4, "depth grid step: the answer is exact to this many layers")
_LIMIT = flags.DEFINE_float("limit_gib", 0.0, "memory the predicted peak must stay under (0 = MemTotal)")

@dataclasses.dataclass
class Probe:
    layers: int
    completed: bool
    peak_gib: float | None = None  # peak RSS in training (completed probes)


def next_depth(probes: list[Probe], fit: list[int], hi: int, resolution: int, limit_gib: float) -> int | None:
    """The next depth to probe, or None when the search is over.

    Depths live on the grid fit[0] + k · resolution (k ≥ 0) up to ``hi``; the ``fit`` depths
    come first. The first probe after them is the line's guess: the deepest grid depth strictly
    inside the bracket (deepest completed, shallowest failed) whose peak, by the least-squares
    line through the completed fit probes, stays under ``limit_gib`` (at least the bracket's
    first grid depth). When that guess completes, the next probe is one grid step deeper (a
    failure there ends the search). Every other probe bisects the bracket: a peak that bends
    away from the line costs a few halvings, never a walk one grid step at a time."""
    done = {p.layers for p in probes}
    for d in fit:
        if d not in done:
            return d
    ok = [p for p in probes if p.completed]
    if not ok:
        return None  # even the shallowest fit depth does not train
    best = max(p.layers for p in ok)
    ceiling = min([p.layers for p in probes if not p.completed], default=hi + 1)
    grid = [d for d in range(fit[0], hi + 1, resolution) if best < d < ceiling and d not in done]
    if not grid:
        return None
    after_fit = [p for p in probes if p.layers not in fit]
    fitted = [p for p in ok if p.layers in fit]
    if not after_fit and len(fitted) >= 2:
        b, a = np.polyfit([p.layers for p in fitted], [p.peak_gib for p in fitted], 1)
        fits = [d for d in grid if a + b * d <= limit_gib]
        return fits[-1] if fits else grid[0]
    if len(after_fit) == 1 and after_fit[0].completed and len(fitted) >= 2:
        return grid[0]  # the guess trained: does one grid step more?
    return grid[(len(grid) - 1) // 2]


def mem_total_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / memory.GiB
    raise RuntimeError("no MemTotal in /proc/meminfo")


_PREPARE = ("import json, sys; from experiments.bench import workload; "
            "print(json.dumps(workload.prepare(workload.Workload(**json.loads(sys.argv[1])), sys.argv[2])))")


def prepare_elsewhere(w: workload.Workload, root: str) -> dict:
    """``workload.prepare`` in a child process: building a large random model with torch would
    otherwise leave its memory in this driver while the probe runs."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(compare.HERE)))
    proc = subprocess.run([sys.executable, "-c", _PREPARE, json.dumps(w.__dict__), root], check=True, env=env,
                          stdout=subprocess.PIPE, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])  # prepare's paths


def failure(summary: dict) -> str:
    """One line for a failed run: SIGKILL (the kernel's OOM killer, on a host without swap) or
    the last line it printed."""
    last = summary["error"].strip().splitlines()[-1][:200] if summary["error"].strip() else ""
    if summary.get("returncode") == -9:
        return "killed (SIGKILL)" + (f": {last}" if last else "")
    return last or f"failed (exit {summary.get('returncode')})"


def probe(spec: str, w: workload.Workload, steps: int, root: str, period: float) -> dict:
    """One run of ``spec`` at workload ``w``: memory.py's summary plus layers, params and
    ``completed``."""
    memory.parse_run(spec)  # an unknown framework fails before the model is written
    paths = prepare_elsewhere(w, root)
    out = os.path.join(root, f"{w.name}_largest.json")
    try:
        summary = memory.summarize(memory.run_sampled(memory.command(spec, w, paths, steps, out), out, period))
    finally:
        shutil.rmtree(os.path.dirname(paths["data"]), ignore_errors=True)  # the probe's model and data
        if os.path.exists(out):
            os.remove(out)
    summary.pop("memory", None)
    if "error" in summary:
        summary["error"] = failure(summary)
    return dict(summary, layers=w.layers, params_m=w.params() / 1e6, completed="error" not in summary)


def summary(rows: list[dict]) -> dict:
    """The probes so far: all of them by depth, the deepest completed, the shallowest failed."""
    ok = [r for r in rows if r["completed"]]
    failed = [r for r in rows if not r["completed"]]
    return {"probes": sorted(rows, key=lambda r: r["layers"]),
            "largest": max(ok, key=lambda r: r["layers"]) if ok else None,
            "smallest_failed": min(failed, key=lambda r: r["layers"]) if failed else None}


def search(spec: str, base: workload.Workload, steps: int, root: str, fit: list[int], hi: int, resolution: int,
           limit_gib: float, period: float, report=lambda partial: None) -> dict:
    """The search for one run spec; ``report(summary)`` after every probe (results on disk
    survive an interrupted search: a probe can take 20 minutes)."""
    rows = []
    probes = lambda: [Probe(r["layers"], r["completed"], r.get("peak_rss_steps_gib")) for r in rows]
    while (layers := next_depth(probes(), fit, hi, resolution, limit_gib)) is not None:
        w = dataclasses.replace(base, layers=layers, name=f"{base.name}_l{layers}")
        rows.append(probe(spec, w, steps, root, period))
        print(f"{spec} at {layers} layers: {json.dumps(rows[-1])}", flush=True)
        report(summary(rows))
    return summary(rows)


def markdown(result: dict) -> str:
    w = result["workload"]
    lines = [f"# The largest model that trains, workload {w['name']} ({result['hardware']})", "",
             f"{memory.architecture(w, '')}, depth growing; {w['pairs']} pairs of "
             f"{w['prompt_len']} + {w['completion_len']} tokens, fp32, sigmoid DPO, AdamW; a probe must complete "
             f"{result['steps']} steps within this host's {result['limit_gib']:.1f} GiB.", "",
             "| run | largest that trains | parameters | peak RSS GiB | s/step | first that fails |",
             "|---|---|---|---|---|---|"]
    for spec, r in result["runs"].items():
        big, bad = r["largest"], r["smallest_failed"]
        fails = f"{bad['layers']} layers ({bad['params_m']:.0f}M): {bad['error']}" if bad else "none up to --hi"
        if big is None:
            lines.append(f"| {spec} | none | | | | {fails} |")
        else:
            lines.append(f"| {spec} | {big['layers']} layers | {big['params_m']:.0f}M | {big['peak_rss_steps_gib']:.2f} "
                         f"| {big['s_per_step']:.1f} | {fails} |")
    lines += ["", "Every probe:", "", "| run | layers | parameters | completed | peak RSS GiB | s/step |", "|---|---|---|---|---|---|"]
    for spec, r in result["runs"].items():
        for p in r["probes"]:
            peak = f"{p['peak_rss_steps_gib']:.2f}" if p["completed"] else "–"
            sps = f"{p['s_per_step']:.1f}" if p["completed"] else p["error"][:80]
            lines.append(f"| {spec} | {p['layers']} | {p['params_m']:.0f}M | {p['completed']} | {peak} | {sps} |")
    return "\n".join(lines) + "\n"


def main(argv) -> None:
    del argv
    base = workload.WORKLOADS[compare._WORKLOAD.value]
    fit = sorted(int(d) for d in _FIT.value)
    limit = _LIMIT.value or mem_total_gib()
    result = {"hardware": compare._HARDWARE.value or compare.hardware_name(), "workload": base.__dict__,
              "steps": compare._STEPS.value, "limit_gib": limit, "runs": {}}

    def write(spec, partial):
        result["runs"][spec] = partial
        compare.write_results(result, f"largest_{base.name}", markdown(result))

    for spec in memory._RUNS.value:
        write(spec, search(spec, base, compare._STEPS.value, compare._ROOT.value, fit, _HI.value, _RESOLUTION.value,
                           limit, memory._SAMPLE.value, report=lambda partial, spec=spec: write(spec, partial)))


if __name__ == "__main__":
    app.run(main)
