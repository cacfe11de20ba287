"""The slurm backend (GPU clusters): one sbatch script per run, one process per node.

Each script asks for ``nodes`` nodes with ``gpus_per_node`` GPUs, takes the first node of the
allocation as the coordinator, and srun starts ``python -m pojax.main`` once per node with
``--config.distributed.*`` filled in from SLURM's variables (SLURM_NTASKS, SLURM_PROCID),
expanded by each task's own shell. SLURM sends SIGUSR1 to every task ``PREEMPT_NOTICE_S``
seconds before the time limit (``--signal``); pojax checkpoints its current step and exits 75,
and the script then requeues the job (``--requeue``, ``scontrol requeue``) so that it resumes
from that checkpoint; so does a job whose step watchdog fired (76). Scripts are written to <root>/<run>/sbatch.sh; ``--dry-run``
prints them and the sbatch commands without submitting. Workdirs must be on a filesystem every
node sees (checkpoints are written by all processes).
"""
from __future__ import annotations

import os
import shlex
import subprocess

from experiments import sweeps
from pojax.train.preemption import EXIT_PREEMPTED, EXIT_STUCK

PORT = 12355  # coordinator port on the first node
PREEMPT_NOTICE_S = 180  # SIGUSR1 this long before the time limit: time for one step and a checkpoint


def sbatch_script(sweep, run, workdir: str, python: str = "python") -> str:
    argv = [python, "-m", "pojax.main", *sweeps.main_args(sweep, run, workdir),
            "--config.distributed.initialize=True", "--config.logging.progress=False"]
    inner = (f"{shlex.join(argv)} --config.distributed.coordinator_address=\"$POJAX_COORDINATOR\""
             " --config.distributed.num_processes=\"$SLURM_NTASKS\" --config.distributed.process_id=\"$SLURM_PROCID\"")
    header = [f"#SBATCH --job-name={sweep.name}-{run.name}", f"#SBATCH --nodes={sweep.nodes}",
              "#SBATCH --ntasks-per-node=1", f"#SBATCH --gpus-per-node={sweep.gpus_per_node}",
              f"#SBATCH --output={os.path.join(workdir, 'log.%j.txt')}", "#SBATCH --requeue",
              f"#SBATCH --signal=USR1@{PREEMPT_NOTICE_S}"]
    if sweep.partition:
        header.append(f"#SBATCH --partition={sweep.partition}")
    return "\n".join([
        "#!/bin/bash", *header, "set -uo pipefail",
        f"cd {shlex.quote(sweeps.ROOT)}",
        f"export POJAX_COORDINATOR=\"$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1):{PORT}\"",
        f"srun bash -c {shlex.quote(inner)}", "rc=$?",
        f"# {EXIT_PREEMPTED}: preempted, its step checkpointed; {EXIT_STUCK}: step watchdog; both resume when requeued",
        f"if [ \"$rc\" -eq {EXIT_PREEMPTED} ] || [ \"$rc\" -eq {EXIT_STUCK} ]; then scontrol requeue \"$SLURM_JOB_ID\"; fi",
        "exit $rc", ""])


def launch(sweep, runs: list, root: str, *, dry_run: bool, stream) -> int:
    failed = 0
    for run in runs:
        workdir = os.path.join(root, run.name)
        path = os.path.join(workdir, "sbatch.sh")
        if os.path.exists(os.path.join(workdir, "results.json")):
            stream.write(f"# {run.name}: finished, skipped\n")
            continue
        os.makedirs(workdir, exist_ok=True)
        text = sbatch_script(sweep, run, workdir)
        with open(path, "w") as f:
            f.write(text)
        cmd = ["sbatch", path]
        if dry_run:
            stream.write(f"# {path}\n{text}{shlex.join(cmd)}\n\n")
        else:
            failed += subprocess.run(cmd).returncode != 0
    return 1 if failed else 0
