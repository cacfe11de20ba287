"""Sweep files, run names, the local backend (skip / resume / failure) and the tpu-vm and slurm
dry runs."""
import io
import json
import os
import shlex
import sys

import pytest

from experiments import launch, sweeps
from experiments.backends import local, tpu_vm

# task "sample" validates and exits 0 at once (no runner yet): a run that costs one pojax import
FAST_RECIPE = '''from pojax.config import base_config


def get_config():
    config = base_config()
    config.task = "sample"
    return config
'''


def write_sweep(tmp_path, body: str, name="s.py") -> str:
    path = tmp_path / name
    path.write_text(body)
    return str(path)


def test_run_names_from_overrides():
    runs = sweeps.expand(grid={"loss.name": ["ipo"], "loss.beta": [0.5], "train.seed": [1]})
    assert [r.name for r in runs] == ["ipo-beta0.5-seed1"]
    runs = sweeps.expand(grid={"loss.name": ["ipo", "sigmoid"], "loss.beta": [0.1, 0.5], "train.seed": [0]})
    assert [r.name for r in runs] == ["ipo-beta0.1", "ipo-beta0.5", "sigmoid-beta0.1", "sigmoid-beta0.5"]
    assert runs[0].overrides == {"loss.name": "ipo", "loss.beta": 0.1, "train.seed": 0}
    assert runs[0].swept == {"loss.name": "ipo", "loss.beta": 0.1}  # the seed does not vary


def test_run_names_filesystem_safe_and_unique():
    runs = sweeps.expand(runs=[{"model.path": "/ckpt/My Model"}, {"model.path": "/ckpt/My:Model"},
                               {"data.path": "a b/c"}, {"data.path": "a b/c"}])
    names = [r.name for r in runs]
    assert len(set(names)) == 4
    for n in names:
        assert "/" not in n and " " not in n and ":" not in n and n
    assert names[2] == "path-a_b_c" and names[3] == "path-a_b_c-2"


def test_dependent_keys_left_out_of_names():
    runs = sweeps.expand(runs=[{"loss.name": "sigmoid"}, {"loss.name": "simpo", "reference.mode": "none"}],
                         grid={"train.seed": [0, 1]}, fixed={"train.max_steps": 5})
    assert [r.name for r in runs] == ["sigmoid-seed0", "sigmoid-seed1", "simpo-seed0", "simpo-seed1"]
    assert runs[2].overrides == {"train.max_steps": 5, "loss.name": "simpo", "reference.mode": "none", "train.seed": 0}
    assert runs[2].swept == {"loss.name": "simpo", "reference.mode": "none", "train.seed": 0}


def test_grid_expansion_and_command(tmp_path):
    path = write_sweep(tmp_path, "base = 'configs/quickstart.py'\nfixed = {'train.max_steps': 2}\n"
                                 "grid = {'loss.name': ['ipo', 'sigmoid'], 'loss.beta': [0.1, 0.5], 'train.seed': [0, 1, 2]}\n"
                                 "name = 'mine'\n")
    sweep = sweeps.load(path)
    assert sweep.name == "mine" and len(sweep.runs) == 12
    assert sweep.runs[0].name == "ipo-beta0.1-seed0"
    cmd = local.command(sweep, sweep.runs[-1], "/r/x", python="py")
    assert cmd == ["py", "-m", "pojax.main", "--config=configs/quickstart.py", "--workdir=/r/x",
                   "--config.train.max_steps=2", "--config.loss.name=sigmoid", "--config.loss.beta=0.5",
                   "--config.train.seed=2"]
    assert [r.name for r in sweep.select("ipo-beta0.5-seed1")] == ["ipo-beta0.5-seed1"]
    with pytest.raises(ValueError, match="no run named nope"):
        sweep.select("nope")


def test_format_value():
    assert sweeps.format_value(True) == "True"
    assert sweeps.format_value((1.0, 0.5)) == "(1.0,0.5)"
    assert sweeps.format_value("none") == "none"


def test_status_table():
    rows = [{"name": "a-long-name", "state": "running", "start": 100.0, "end": None, "rc": 75, "restarts": 2},
            {"name": "b", "state": "failed", "start": 0.0, "end": 75.0, "rc": 2},
            {"name": "c", "state": "pending", "start": None, "end": None, "rc": None}]
    text = local.status_table(rows, now=3700.0 + 100)
    lines = text.splitlines()
    assert lines[0].split() == ["run", "state", "elapsed", "rc"]
    assert lines[1].split() == ["a-long-name", "running", "1:01:40", "75", "+2"]
    assert lines[2].split() == ["b", "failed", "1:15", "2"]
    assert lines[3].split() == ["c", "pending"]
    assert lines[4] == "pending=1  running=1  done=0  failed=1  skipped=0"


def test_local_skips_finished_and_reports_failures(tmp_path):
    (tmp_path / "fast.py").write_text(FAST_RECIPE)
    path = write_sweep(tmp_path, f"base = {str(tmp_path / 'fast.py')!r}\n"
                                 "runs = [{'train.seed': 0}, {'train.seed': 1}, {'loss.beta': 'oops'}]\n")
    sweep = sweeps.load(path)
    names = [r.name for r in sweep.runs]
    assert names == ["seed0", "seed1", "beta-oops"]
    root = tmp_path / "runs"
    (root / "seed0").mkdir(parents=True)
    (root / "seed0" / "results.json").write_text("{}")  # finished: must not be started again
    out = io.StringIO()
    code = launch.launch(sweep, workdir=str(root), parallel=2, stream=out, refresh=0.0)
    text = out.getvalue()
    assert code == 1
    assert not (root / "seed0" / "log.txt").exists()
    assert "config valid" in (root / "seed1" / "log.txt").read_text()
    assert json.loads((root / "seed1" / "config.json").read_text())["train"]["seed"] == 1
    assert f"FAILED beta-oops (exit 2): see {root / 'beta-oops' / 'log.txt'}" in text
    assert "pending=0  running=0  done=1  failed=1  skipped=1" in text
    # rerun: the failed one is started again and its log appended
    out = io.StringIO()
    assert launch.launch(sweep, workdir=str(root), only="beta-oops", stream=out, refresh=0.0) == 1
    assert (root / "beta-oops" / "log.txt").read_text().count("pojax:") == 2


def test_local_dry_run(tmp_path):
    path = write_sweep(tmp_path, "base = 'configs/quickstart.py'\ngrid = {'loss.name': ['ipo', 'simpo']}\n")
    sweep = sweeps.load(path)
    root = tmp_path / "my runs"
    (root / "ipo").mkdir(parents=True)
    (root / "ipo" / "results.json").write_text("{}")
    out = io.StringIO()
    assert launch.launch(sweep, workdir=str(root), dry_run=True, stream=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "# ipo: skip (finished)" and lines[2] == "# simpo: run"
    assert shlex.split(lines[3])[-2:] == [f"--workdir={root / 'simpo'}", "--config.loss.name=simpo"]
    assert not (root / "simpo").exists()


V5P = """base = 'configs/llama3_8b_dpo_ultrafeedback.py'
slice = 'v5p-64'
zone = 'us-east5-a'
project = 'my-proj'
gcs = 'gs://bucket/my sweep'
name = 'llama sweep'
fixed = {'model.path': '/mnt/disks/ckpt/Llama 3'}
runs = [{'loss.name': 'sigmoid'}, {'loss.name': 'simpo', 'reference.mode': 'none'}]
"""


def test_tpu_hosts():
    assert tpu_vm.hosts("v5p-8") == 1
    assert tpu_vm.hosts("v5p-64") == 8  # 2x4x4: 64 TensorCores = 32 chips, 4 per host
    assert tpu_vm.hosts("v4-32") == 4
    assert tpu_vm.hosts("v5litepod-16") == 4
    with pytest.raises(ValueError, match="slice 'v9-8'"):
        tpu_vm.hosts("v9-8")


def test_tpu_vm_dry_run_v5p_64(tmp_path):
    sweep = sweeps.load(write_sweep(tmp_path, V5P))
    out = io.StringIO()
    assert launch.launch(sweep, backend="tpu-vm", dry_run=True, stream=out) == 0
    lines = out.getvalue().splitlines()
    where = ["--zone=us-east5-a", "--project=my-proj"]
    tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
    describe, create = lines[3].split(" >/dev/null 2>&1 || ")
    assert shlex.split(describe) == tpu + ["describe", "llama-sweep", *where]
    assert shlex.split(create) == tpu + ["create", "llama-sweep", *where, "--accelerator-type=v5p-64",
                                         "--version=v2-alpha-tpuv5"]
    assert shlex.split(lines[4])[:3] == ["tar", "czf", "/tmp/pojax-src.tgz"] and "--exclude=.venv" in lines[4]
    assert shlex.split(lines[4])[-3:] == ["-C", sweeps.ROOT, "."]
    assert shlex.split(lines[5]) == tpu + ["scp", "/tmp/pojax-src.tgz", "llama-sweep:/tmp/pojax-src.tgz", *where,
                                           "--worker=all"]
    assert shlex.split(lines[6]) == tpu + ["ssh", "llama-sweep", *where, "--worker=all",
                                           "--command=mkdir -p ~/pojax && tar xzf /tmp/pojax-src.tgz -C ~/pojax "
                                           "&& cd ~/pojax && pip install -e '.[tpu]'"]
    host_lines = [ln for ln in lines if "--worker=" in ln and "--worker=all" not in ln]
    assert len(host_lines) == 2 * 8  # 2 runs x 8 hosts
    for i, line in enumerate(host_lines[:8]):
        assert line.endswith(" & pids+=($!)")
        argv = shlex.split(line.removesuffix(" & pids+=($!)"))
        assert argv[:-1] == tpu + ["ssh", "llama-sweep", *where, f"--worker={i}"]
        remote = argv[-1].removeprefix("--command=")
        main = shlex.split(remote.split(" > ")[0].removeprefix("cd ~/pojax && "))
        assert main == ["python3", "-m", "pojax.main", "--config=configs/llama3_8b_dpo_ultrafeedback.py",
                        "--workdir=gs://bucket/my sweep/sigmoid", "--config.model.path=/mnt/disks/ckpt/Llama 3",
                        "--config.loss.name=sigmoid", "--config.distributed.initialize=True",
                        "--config.logging.progress=False"]
        assert f"gcloud storage cp /tmp/pojax-sigmoid.host{i}.log 'gs://bucket/my sweep/sigmoid/log.host{i}.txt'" in remote
    assert lines[lines.index(host_lines[7]) + 1].lstrip().startswith("again=0; fail=0; for p in")
    assert "--config.reference.mode=none" in host_lines[8]


def test_tpu_vm_needs_slice_zone_gcs(tmp_path):
    sweep = sweeps.load(write_sweep(tmp_path, "base = 'configs/quickstart.py'\nruns = [{'train.seed': 0}]\n"))
    with pytest.raises(ValueError, match="needs `slice`, `zone` and `gcs`"):
        launch.launch(sweep, backend="tpu-vm", dry_run=True, stream=io.StringIO())


def test_slurm_dry_run(tmp_path):
    sweep = sweeps.load(write_sweep(tmp_path, V5P + "nodes = 4\ngpus_per_node = 8\npartition = 'a100'\n"))
    root = tmp_path / "my runs"
    out = io.StringIO()
    assert launch.launch(sweep, backend="slurm", workdir=str(root), dry_run=True, stream=out) == 0
    text = out.getvalue()
    script = (root / "sigmoid" / "sbatch.sh").read_text()
    assert script in text and f"sbatch {shlex.quote(str(root / 'sigmoid' / 'sbatch.sh'))}" in text
    lines = script.splitlines()
    assert "#SBATCH --nodes=4" in lines and "#SBATCH --gpus-per-node=8" in lines
    assert "#SBATCH --ntasks-per-node=1" in lines and "#SBATCH --partition=a100" in lines
    assert 'export POJAX_COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):12355"' in lines
    srun = shlex.split(next(ln for ln in lines if ln.startswith("srun ")))
    assert srun[:3] == ["srun", "bash", "-c"] and len(srun) == 4
    inner = shlex.split(srun[3])  # what each task's bash runs, before it expands the variables
    assert inner[:5] == ["python", "-m", "pojax.main", "--config=configs/llama3_8b_dpo_ultrafeedback.py",
                         f"--workdir={root / 'sigmoid'}"]
    assert "--config.model.path=/mnt/disks/ckpt/Llama 3" in inner
    assert inner[-5:-3] == ["--config.distributed.initialize=True", "--config.logging.progress=False"]
    assert inner[-3:] == ["--config.distributed.coordinator_address=$POJAX_COORDINATOR",
                          "--config.distributed.num_processes=$SLURM_NTASKS",
                          "--config.distributed.process_id=$SLURM_PROCID"]


def test_shipped_sweeps_load():
    for name in ("gym_losses", "llama3_8b_losses", "elbo_kto_llada8b"):
        sweep = sweeps.load(os.path.join(sweeps.ROOT, "experiments", "sweeps", f"{name}.py"))
        assert sweep.runs and os.path.exists(os.path.join(sweeps.ROOT, sweep.base))
    gym = sweeps.load(os.path.join(sweeps.ROOT, "experiments", "sweeps", "gym_losses.py"))
    losses_run = {r.overrides["loss.name"] for r in gym.runs}
    assert {"sigmoid", "ipo", "simpo", "kto", "bco", "apo_zero_unpaired"} <= losses_run
    assert "dpo" not in losses_run  # an alias of sigmoid
    assert len(gym.runs) == 3 * len(losses_run)
    assert all(r.overrides.get("reference.mode") == "none" for r in gym.runs if r.overrides["loss.name"] == "simpo")
    llama = sweeps.load(os.path.join(sweeps.ROOT, "experiments", "sweeps", "llama3_8b_losses.py"))
    assert llama.slice == "v5p-64" and [r.name for r in llama.runs] == ["sigmoid", "simpo", "ipo"]


@pytest.mark.parametrize("name", ["llama3_8b_losses", "elbo_kto_llada8b"])
def test_shipped_paper_scale_runs_validate(name):
    """Every run of the TPU sweeps is a valid config (its base recipe + overrides)."""
    from pojax.config import validate
    from tests.train.helpers import override, recipe

    sweep = sweeps.load(os.path.join(sweeps.ROOT, "experiments", "sweeps", f"{name}.py"))
    base = os.path.splitext(os.path.basename(sweep.base))[0]
    for run in sweep.runs:
        validate(override(recipe(base), dict(run.overrides)))


def test_cli_dry_run():
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "experiments.launch", "--sweep=experiments/sweeps/llama3_8b_losses.py",
                           "--backend=tpu-vm", "--dry-run", "--only=ipo"], cwd=sweeps.ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("--worker=") == 8 + 2  # 8 hosts + the 2 --worker=all setup steps


def test_status_printer_throttles_in_logs():
    out = io.StringIO()  # not a terminal: no ANSI codes, at most one table per `every` seconds, and the last one
    printer = local._Printer(out, every=1000.0)
    printer.show("t1", changed=True)
    printer.show("t2", changed=True)
    printer.show("t3", changed=False, final=True)
    assert out.getvalue() == "t1\n\nt3\n"


def _fake_program(path, body: str) -> str:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return str(path)


def test_local_relaunches_a_preempted_run(tmp_path):
    """A run that exits 75 (preempted) or 76 (stuck step) is started again; one that exits 2
    is not. The "python" here is a script that fails with the statuses of a list, one per call."""
    sweep = sweeps.load(write_sweep(tmp_path, "base = 'configs/quickstart.py'\nruns = [{'train.seed': 0}, {'train.seed': 1}]\n"))
    python = _fake_program(tmp_path / "py", """
workdir=$(printf '%s\\n' "$@" | sed -n 's/^--workdir=//p')
n=$(cat "$workdir/calls" 2>/dev/null || echo 0); echo $((n + 1)) > "$workdir/calls"
case "$(basename "$workdir")" in
  seed0) codes=(75 76 0);;
  *) codes=(2 0);;
esac
exit ${codes[$n]}
""")
    out = io.StringIO()
    states = local.run_local(sweep, sweep.runs, str(tmp_path / "runs"), parallel=2, python=python, poll=0.05,
                             refresh=0.0, stream=out)
    assert states == {"seed0": local.DONE, "seed1": local.FAILED}
    assert (tmp_path / "runs" / "seed0" / "calls").read_text().strip() == "3"  # 75, 76, then finished
    assert (tmp_path / "runs" / "seed1" / "calls").read_text().strip() == "1"  # bad input: not relaunched
    assert "FAILED seed1 (exit 2)" in out.getvalue()
    assert [local.restartable(rc) for rc in (0, 1, 2, 3, 74, 75, 76)] == [False] * 5 + [True] * 2


def test_tpu_vm_script_relaunches_every_host(tmp_path):
    """The dry-run script's loop, run with a fake gcloud: attempt 1 has host 3 preempted (75) and
    the others lost (1), attempt 2 finishes; a run with a bad-input host (2) is not relaunched."""
    sweep = sweeps.load(write_sweep(tmp_path, V5P))
    text = tpu_vm.script(sweep, sweep.runs)
    loops = text[text.index("# run sigmoid"):]
    fake = tmp_path / "bin"
    fake.mkdir()
    _fake_program(fake / "gcloud", f"""
worker=$(printf '%s\\n' "$@" | sed -n 's/^--worker=//p')
cmd=$(printf '%s\\n' "$@" | sed -n 's/^--command=//p')
run=sigmoid; case "$cmd" in *simpo*) run=simpo;; esac
log={tmp_path}/calls.$run; echo "$worker" >> "$log"
n=$(grep -c . "$log")
if [ $run = sigmoid ]; then
  [ $n -le 8 ] || exit 0; [ "$worker" = 3 ] && exit 75; exit 1
fi
[ "$worker" = 0 ] && exit 2; exit 1
""")
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    import subprocess

    proc = subprocess.run(["bash", "-c", loops], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "calls.sigmoid").read_text().split()) == 16  # 8 hosts, twice
    assert len((tmp_path / "calls.simpo").read_text().split()) == 8  # a bad-input host: once
    assert tpu_vm.relaunch([75] + [1] * 7) and tpu_vm.relaunch([76, 0]) and not tpu_vm.relaunch([0, 0])
    assert not tpu_vm.relaunch([2, 75]) and not tpu_vm.relaunch([74, 1])


def test_slurm_script_requeues_a_preempted_job(tmp_path):
    """The sbatch script run with fake srun / scontrol: exit 75 from srun → scontrol requeue of
    the job and the script's status is 75; exit 2 → no requeue."""
    sweep = sweeps.load(write_sweep(tmp_path, V5P + "nodes = 2\ngpus_per_node = 8\n"))
    root = tmp_path / "runs"
    launch.launch(sweep, backend="slurm", workdir=str(root), dry_run=True, stream=io.StringIO())
    script = (root / "sigmoid" / "sbatch.sh").read_text()
    assert "#SBATCH --requeue" in script.splitlines() and "#SBATCH --signal=USR1@180" in script.splitlines()
    fake = tmp_path / "bin"
    fake.mkdir()
    _fake_program(fake / "scontrol", f'echo "$@" >> {tmp_path}/scontrol.log; echo node1\n')
    import subprocess

    for rc, requeued in ((75, True), (76, True), (2, False), (0, False)):
        (tmp_path / "scontrol.log").unlink(missing_ok=True)
        _fake_program(fake / "srun", f"exit {rc}\n")
        env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node1")
        proc = subprocess.run(["bash", str(root / "sigmoid" / "sbatch.sh")], env=env, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == rc, proc.stderr
        log = (tmp_path / "scontrol.log").read_text()
        assert ("requeue 4242" in log) == requeued, (rc, log)
