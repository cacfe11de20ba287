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
    rows = [{"name": "a-long-name", "state": "running", "start": 100.0, "end": None, "rc": None},
            {"name": "b", "state": "failed", "start": 0.0, "end": 75.0, "rc": 2},
            {"name": "c", "state": "pending", "start": None, "end": None, "rc": None}]
    text = local.status_table(rows, now=3700.0 + 100)
    lines = text.splitlines()
    assert lines[0].split() == ["run", "state", "elapsed", "rc"]
    assert lines[1].split() == ["a-long-name", "running", "1:01:40"]
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
        assert line.endswith(" &")
        argv = shlex.split(line[:-2])
        assert argv[:-1] == tpu + ["ssh", "llama-sweep", *where, f"--worker={i}"]
        remote = argv[-1].removeprefix("--command=")
        main = shlex.split(remote.split(" > ")[0].removeprefix("cd ~/pojax && "))
        assert main == ["python3", "-m", "pojax.main", "--config=configs/llama3_8b_dpo_ultrafeedback.py",
                        "--workdir=gs://bucket/my sweep/sigmoid", "--config.model.path=/mnt/disks/ckpt/Llama 3",
                        "--config.loss.name=sigmoid", "--config.distributed.initialize=True",
                        "--config.logging.progress=False"]
        assert f"gcloud storage cp /tmp/pojax-sigmoid.host{i}.log 'gs://bucket/my sweep/sigmoid/log.host{i}.txt'" in remote
    assert lines[lines.index(host_lines[7]) + 1] == "wait"
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
    srun = shlex.split(lines[-1])
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
