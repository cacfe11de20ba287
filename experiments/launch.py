"""Launch a sweep (experiments/sweeps/<x>.py) locally, on a TPU VM slice, or through SLURM.

    python -m experiments.launch --sweep=experiments/sweeps/gym_losses.py --backend=local --parallel=2
    python -m experiments.launch --sweep=experiments/sweeps/llama3_8b_losses.py --backend=tpu-vm --dry-run
    python -m experiments.launch --sweep=... --backend=slurm --dry-run

local: each run is a ``python -m pojax.main`` subprocess in <workdir>/<run> (default
runs/<sweep name>), N at a time; a run with results.json is skipped, any other is (re)started and
resumes from its checkpoint; a status table is refreshed while they run; logs in <run>/log.txt.
tpu-vm: see experiments/backends/tpu_vm.py; slurm: experiments/backends/slurm.py.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

from experiments import sweeps


def default_root(sweep) -> str:
    return os.path.join("runs", sweep.name)


def launch(sweep, *, backend: str = "local", parallel: int = 1, workdir: str | None = None, dry_run: bool = False,
           only: str | None = None, refresh: float = 30.0, stream=sys.stdout, env=None) -> int:
    """Runs (or prints) the sweep; returns the exit status (1 when a run failed)."""
    import shlex

    runs = sweep.select(only)
    root = os.path.abspath(workdir or default_root(sweep))
    if backend == "tpu-vm":
        from experiments.backends import tpu_vm

        return tpu_vm.launch(sweep, runs, dry_run=dry_run, stream=stream)
    if backend == "slurm":
        from experiments.backends import slurm

        return slurm.launch(sweep, runs, root, dry_run=dry_run, stream=stream)
    from experiments.backends import local

    if dry_run:
        for run in runs:
            state = "skip (finished)" if local.finished(os.path.join(root, run.name)) else "run"
            stream.write(f"# {run.name}: {state}\n{shlex.join(local.command(sweep, run, os.path.join(root, run.name)))}\n")
        return 0
    states = local.run_local(sweep, runs, root, parallel=parallel, refresh=refresh, stream=stream, env=env)
    return 1 if local.FAILED in states.values() else 0


def _define_flags() -> dict:
    """The command-line flags (defined only when run as a program, so that launch and report
    can be imported together)."""
    return dict(
        sweep=flags.DEFINE_string("sweep", None, "Sweep file, e.g. experiments/sweeps/gym_losses.py."),
        backend=flags.DEFINE_enum("backend", "local", ["local", "tpu-vm", "slurm"], "Where the runs go."),
        parallel=flags.DEFINE_integer("parallel", 1, "local: runs at a time."),
        workdir=flags.DEFINE_string("workdir", None, "local, slurm: root of the runs' workdirs; "
                                 "default runs/<sweep name> (tpu-vm: the sweep's gcs path)."),
        dry_run=flags.DEFINE_bool("dry-run", False, "Print the commands (local: argv of each run) without running them."),
        only=flags.DEFINE_string("only", None, "Comma-separated run names: launch only these."),
        refresh=flags.DEFINE_float("refresh", 30.0, "local: seconds between status tables when not on a terminal."),
    )


def main(argv, f: dict) -> int:
    del argv
    if not f['sweep'].value:
        print("launch: --sweep is required (e.g. --sweep=experiments/sweeps/gym_losses.py)", file=sys.stderr)
        return 2
    try:
        sweep = sweeps.load(f['sweep'].value)
        return launch(sweep, backend=f['backend'].value, parallel=f['parallel'].value, workdir=f['workdir'].value,
                      dry_run=f['dry_run'].value, only=f['only'].value, refresh=f['refresh'].value)
    except ValueError as e:
        print(f"launch: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    _flags = _define_flags()
    app.run(lambda argv: sys.exit(main(argv, _flags)))
