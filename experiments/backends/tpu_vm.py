"""The tpu-vm backend: one Cloud TPU VM slice per sweep, every run multi-controller on all hosts.

Steps (each an argv list; ``--dry-run`` prints them shell-quoted as one bash script):
  1. reuse the TPU VM ``<sweep name>`` if ``describe`` finds it, else ``create`` it with the
     sweep's ``slice`` accelerator type;
  2. pack the project (tar, without .venv / runs), copy it to every worker (``scp --worker=all``),
     unpack it and ``pip install -e .[tpu]`` there;
  3. per run, start the same ``python -m pojax.main ... --config.distributed.initialize=True``
     on each host (``ssh --worker=<i>``, all hosts at once, then wait): jax.distributed.initialize
     finds the coordinator, process count and id from the TPU metadata. Workdirs (checkpoints,
     metrics, results) are under the sweep's ``gcs`` path; each host's console log is copied
     next to them (``log.host<i>.txt``).
  4. a run whose hosts stop to be relaunched (a maintenance event's SIGTERM: pojax checkpoints
     the step and exits 75; the step watchdog: 76; or a lost host, after which the others exit
     non-zero through jax.distributed's heartbeat timeout) is started again on every host, up
     to ``MAX_RESTARTS`` times, and resumes from its latest checkpoint (``relaunch``).

Hosts per slice: a v5p-N slice has N TensorCores, 2 per chip and 4 chips per host, so N / 8
hosts (v5p-64 = 2x4x4 = 32 chips = 8 hosts; https://cloud.google.com/tpu/docs/v5p-training,
"Configurations" table). v4 counts TensorCores the same way; v5e (v5litepod-N) and v6e name
chips, 4 per host in multi-host slices (GENERATIONS below).
"""
from __future__ import annotations

import re
import shlex
import subprocess

from experiments import sweeps
from pojax.train.checkpoint import EXIT_CHECKPOINT_WRITE
from pojax.train.preemption import EXIT_PREEMPTED, EXIT_STUCK

MAX_RESTARTS = 10  # relaunches of one run after preemption, a stuck step or a lost host
NEEDS_A_PERSON = (2, 3, EXIT_CHECKPOINT_WRITE)  # bad input, non-finite stop (nan_policy=stop), checkpoint write failed
REMOTE_DIR = "~/pojax"  # the project's copy on every worker (relative to the ssh user's home)
TARBALL = "/tmp/pojax-src.tgz"  # the working tree, packed locally and copied to every worker

# generation -> (TensorCores or chips named by the accelerator type per host, default runtime version)
GENERATIONS = {
    "v4": (8, "tpu-ubuntu2204-base"),  # 4 chips x 2 TensorCores per host
    "v5p": (8, "v2-alpha-tpuv5"),  # 4 chips x 2 TensorCores per host
    "v5litepod": (4, "v2-alpha-tpuv5-lite"),  # v5e: the type counts chips; 4 per host in multi-host slices
    "v6e": (4, "v2-alpha-tpuv6e"),  # the type counts chips; 4 per host in multi-host slices
}


def hosts(slice_type: str) -> int:
    """Hosts (TPU VM workers) of a slice type such as "v5p-64"."""
    m = re.fullmatch(r"(v4|v5p|v5litepod|v6e)-(\d+)", slice_type)
    if not m:
        raise ValueError(f"slice {slice_type!r}: expected <generation>-<size> with generation in {', '.join(GENERATIONS)}")
    per_host, _ = GENERATIONS[m.group(1)]
    return max(1, int(m.group(2)) // per_host)


def _where(sweep) -> list:
    return [f"--zone={sweep.zone}"] + ([f"--project={sweep.project}"] if sweep.project else [])


def vm_name(sweep) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", sweep.name.lower()).strip("-")[:60] or "pojax"


def setup_commands(sweep) -> list:
    """[describe, create, pack, scp, install] argv lists; create runs only when describe fails.
    The project travels as a tarball of the working tree without .venv, runs/ and caches."""
    if not (sweep.slice and sweep.zone and sweep.gcs):
        raise ValueError(f"sweep {sweep.name!r}: the tpu-vm backend needs `slice`, `zone` and `gcs` in the sweep file")
    gen = sweep.slice.split("-")[0]
    version = sweep.runtime_version or GENERATIONS[gen][1]
    tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
    name = vm_name(sweep)
    excludes = [f"--exclude={p}" for p in (".venv", ".git", "runs", "workdirs", "__pycache__", "*.egg-info")]
    return [
        tpu + ["describe", name, *_where(sweep)],
        tpu + ["create", name, *_where(sweep), f"--accelerator-type={sweep.slice}", f"--version={version}"],
        ["tar", "czf", TARBALL, *excludes, "-C", sweeps.ROOT, "."],
        tpu + ["scp", TARBALL, f"{name}:{TARBALL}", *_where(sweep), "--worker=all"],
        tpu + ["ssh", name, *_where(sweep), "--worker=all",
               f"--command=mkdir -p {REMOTE_DIR} && tar xzf {TARBALL} -C {REMOTE_DIR} && cd {REMOTE_DIR} && pip install -e '.[tpu]'"],
    ]


def run_workdir(sweep, run) -> str:
    return f"{sweep.gcs.rstrip('/')}/{run.name}"


def host_command(sweep, run, host: int) -> str:
    """The shell command one host runs for ``run`` (the same on every host but for its log name)."""
    workdir = run_workdir(sweep, run)
    argv = ["python3", "-m", "pojax.main", *sweeps.main_args(sweep, run, workdir),
            "--config.distributed.initialize=True", "--config.logging.progress=False"]
    log = f"/tmp/pojax-{run.name}.host{host}.log"
    return (f"cd {REMOTE_DIR} && {shlex.join(argv)} > {shlex.quote(log)} 2>&1; rc=$?; "
            f"gcloud storage cp {shlex.quote(log)} {shlex.quote(f'{workdir}/log.host{host}.txt')}; exit $rc")


def run_commands(sweep, run) -> list:
    """One ssh argv per host; they run at the same time (multi-controller)."""
    tpu = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", vm_name(sweep), *_where(sweep)]
    return [tpu + [f"--worker={i}", f"--command={host_command(sweep, run, i)}"] for i in range(hosts(sweep.slice))]


def relaunch(statuses: list) -> bool:
    """Whether a run whose hosts exited with ``statuses`` should start again on every host: not
    all finished, and no host stopped on something a relaunch cannot fix (``NEEDS_A_PERSON``).
    That covers preemption (75), the step watchdog (76) and the survivors of a lost host."""
    return any(statuses) and not any(rc in NEEDS_A_PERSON for rc in statuses)


def script(sweep, runs: list) -> str:
    """The whole launch as a bash script (what --dry-run prints)."""
    describe, create, pack, scp, install = setup_commands(sweep)
    lines = ["#!/bin/bash", f"# sweep {sweep.name}: {len(runs)} runs on {sweep.slice} ({hosts(sweep.slice)} hosts)",
             "set -u", f"{shlex.join(describe)} >/dev/null 2>&1 || {shlex.join(create)}",
             shlex.join(pack), shlex.join(scp), shlex.join(install)]
    person = " ".join(str(rc) for rc in NEEDS_A_PERSON)
    for run in runs:
        lines.append(f"# run {run.name} -> {run_workdir(sweep, run)}: relaunched (it resumes) after "
                     f"{EXIT_PREEMPTED} (preempted), {EXIT_STUCK} (stuck step) or a lost host")
        lines.append(f"for try in $(seq 0 {MAX_RESTARTS}); do")
        lines.append("  pids=()")
        lines += [f"  {shlex.join(c)} & pids+=($!)" for c in run_commands(sweep, run)]
        lines.append("  again=0; fail=0; for p in \"${pids[@]}\"; do wait \"$p\"; rc=$?; "
                     f"[ $rc -ne 0 ] && again=1; case \" {person} \" in *\" $rc \"*) fail=1;; esac; done")
        lines.append("  [ $again -eq 1 ] && [ $fail -eq 0 ] || break")
        lines.append("done")
    return "\n".join(lines) + "\n"


def launch(sweep, runs: list, *, dry_run: bool, stream) -> int:
    if dry_run:
        stream.write(script(sweep, runs))
        return 0
    describe, create, *setup = setup_commands(sweep)
    if subprocess.run(describe, capture_output=True).returncode != 0:
        subprocess.run(create, check=True)
    for c in setup:
        subprocess.run(c, check=True)
    failed = []
    for run in runs:
        for attempt in range(MAX_RESTARTS + 1):
            procs = [subprocess.Popen(c) for c in run_commands(sweep, run)]
            statuses = [p.wait() for p in procs]
            if not relaunch(statuses) or attempt == MAX_RESTARTS:
                break
            stream.write(f"# {run.name}: host exit statuses {statuses}; relaunching to resume\n")
        if any(statuses):
            failed.append(run.name)
            stream.write(f"FAILED {run.name}: see {run_workdir(sweep, run)}/log.host*.txt\n")
    return 1 if failed else 0
