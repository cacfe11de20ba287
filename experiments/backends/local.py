"""The local backend: each run is a ``python -m pojax.main`` subprocess, N at a time.

Resumable: a run whose workdir holds results.json is skipped; any other run is started, and
pojax resumes a killed one from its latest checkpoint in the same workdir. A run that stops to
be relaunched (``restartable``: preempted, exit 75, or stopped by the step watchdog, exit 76) is
started again, up to ``max_restarts`` times. Each run's stdout and stderr go to <run>/log.txt
(appended, so a resumed run keeps the earlier attempt's log).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from experiments import sweeps
from pojax.train.preemption import EXIT_PREEMPTED, EXIT_STUCK

PENDING, RUNNING, DONE, FAILED, SKIPPED = "pending", "running", "done", "failed", "skipped"


def restartable(rc: int) -> bool:
    """Whether a run that ended with status ``rc`` should be launched again to resume: it was
    preempted (75; its last step is checkpointed) or its step watchdog fired (76; it resumes from
    the latest checkpoint). Not a finished run (0), bad input (2), a non-finite stop (3) or a
    checkpoint that could not be written (74): those need a person."""
    return rc in (EXIT_PREEMPTED, EXIT_STUCK)


def finished(workdir: str) -> bool:
    return os.path.exists(os.path.join(workdir, "results.json"))


def command(sweep, run, workdir: str, python: str = sys.executable) -> list:
    """argv of one run (never through a shell)."""
    return [python, "-m", "pojax.main", *sweeps.main_args(sweep, run, workdir)]


def _elapsed(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def status_table(rows: list, now: float) -> str:
    """Plain-text table: one line per run (name, state, elapsed, return code) and a count line.

    ``rows``: dicts with name, state, start (time or None), end (time or None), rc (or None) and
    optionally restarts (relaunches so far, shown after the rc as "+N")."""
    width = max([len(r["name"]) for r in rows] + [3])
    lines = [f"{'run':<{width}}  {'state':<8}  {'elapsed':>8}  rc"]
    for r in rows:
        t = "" if r["start"] is None else _elapsed((r["end"] or now) - r["start"])
        rc = "" if r["rc"] is None else str(r["rc"])
        rc += f" +{r['restarts']}" if r.get("restarts") else ""
        lines.append(f"{r['name']:<{width}}  {r['state']:<8}  {t:>8}  {rc}".rstrip())
    counts = {s: sum(r["state"] == s for r in rows) for s in (PENDING, RUNNING, DONE, FAILED, SKIPPED)}
    lines.append("  ".join(f"{k}={v}" for k, v in counts.items()))
    return "\n".join(lines)


class _Printer:
    """Redraws the table in place on a terminal (ANSI cursor-up) every second; elsewhere (a log
    file) prints it at most every ``every`` seconds when a run changed state, and at the end."""

    def __init__(self, stream, every: float):
        self.stream, self.every, self.last, self.lines, self.dirty = stream, every, -float("inf"), 0, False
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def show(self, table: str, changed: bool, final: bool = False) -> None:
        now = time.monotonic()
        self.dirty |= changed
        due = now - self.last >= (1.0 if self.tty else self.every)
        if not (final or (due and (self.dirty or self.tty))):
            return
        if self.tty and self.lines:
            self.stream.write(f"\x1b[{self.lines}F\x1b[J")
        elif self.lines:
            self.stream.write("\n")
        self.stream.write(table + "\n")
        self.stream.flush()
        self.last, self.lines, self.dirty = now, table.count("\n") + 1, False


def run_local(sweep, runs: list, root: str, *, parallel: int = 1, python: str = sys.executable, env=None,
              poll: float = 0.5, refresh: float = 30.0, stream=sys.stdout, max_restarts: int = 10) -> dict:
    """Runs ``runs`` under ``root``/<run name>, ``parallel`` at a time; returns {name: state}.
    A run ending ``restartable`` is started again (at most ``max_restarts`` times). Failed runs
    are listed at the end with their log path."""
    rows = [{"name": r.name, "run": r, "state": PENDING, "start": None, "end": None, "rc": None, "proc": None,
             "restarts": 0} for r in runs]
    for row in rows:
        if finished(os.path.join(root, row["name"])):
            row["state"] = SKIPPED
    printer = _Printer(stream, refresh)
    changed = True
    try:
        while True:
            for row in rows:  # reap
                if row["state"] == RUNNING and row["proc"].poll() is not None:
                    row["rc"], row["end"] = row["proc"].returncode, time.time()
                    row["state"] = DONE if row["rc"] == 0 else FAILED
                    row["log"].close()
                    if restartable(row["rc"]) and row["restarts"] < max_restarts:
                        row["state"] = PENDING  # relaunch: pojax resumes from the checkpoint it wrote
                        row["restarts"] += 1
                    changed = True
            for row in rows:  # start
                if sum(r["state"] == RUNNING for r in rows) >= parallel:
                    break
                if row["state"] == PENDING:
                    workdir = os.path.join(root, row["name"])
                    os.makedirs(workdir, exist_ok=True)
                    row["log"] = open(os.path.join(workdir, "log.txt"), "a")
                    row["proc"] = subprocess.Popen(command(sweep, row["run"], workdir, python), cwd=sweeps.ROOT,
                                                   stdout=row["log"], stderr=subprocess.STDOUT, env=env)
                    row["state"], row["start"] = RUNNING, time.time()
                    changed = True
            over = not any(r["state"] in (PENDING, RUNNING) for r in rows)
            printer.show(status_table(rows, time.time()), changed, final=over)
            changed = False
            if over:
                break
            time.sleep(poll)
    finally:  # Ctrl-C: stop our children; rerunning the sweep resumes them from their checkpoints
        for row in rows:
            if row["state"] == RUNNING and row["proc"].poll() is None:
                row["proc"].terminate()
                row["proc"].wait()
    for row in rows:
        if row["state"] == FAILED:
            stream.write(f"FAILED {row['name']} (exit {row['rc']}): see {os.path.join(root, row['name'], 'log.txt')}\n")
    stream.flush()
    return {r["name"]: r["state"] for r in rows}
