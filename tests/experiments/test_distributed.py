"""Multi-host correctness on one machine: 2 processes × 4 CPU devices joined by
jax.distributed (gloo collectives) train exactly like 1 process × 8 devices.

Each process loads only its half of every global batch (pojax.data.pipeline shards by
jax.process_index()), so equal losses prove per-host data loading and the cross-process
gradient reduction. Both processes share one workdir, as hosts of a TPU slice share a GCS path:
orbax's multi-process checkpoint needs that (with separate workdirs process 1 fails writing
its part of a checkpoint directory that only process 0 created).
"""
import os
import socket
import subprocess

import pytest

from pojax.config import base_config
from pojax.distributed import initialize_kwargs
from tests.train.helpers import ROOT, main_cmd, read_jsonl

STEPS = 4
ARGS = ["--config.train.sft_steps=0", "--config.model.num_layers=1", f"--config.train.max_steps={STEPS}", "--config.data.gym.num_train=256",
        "--config.logging.plots=False", "--config.train.export_final=False", "--config.eval.num_examples=0",
        "--config.data.gym.num_eval=8", "--config.eval.num_samples=1", "--config.mesh.data=-1"]
COMPARED = ("loss", "grad_norm", "logps/chosen", "logps/rejected", "rewards/margins")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def test_initialize_kwargs_auto_detect():
    c = base_config()
    assert initialize_kwargs(c) == dict(coordinator_address=None, num_processes=None, process_id=None)
    c.distributed.coordinator_address, c.distributed.num_processes, c.distributed.process_id = "10.0.0.1:1234", 8, 3
    assert initialize_kwargs(c) == dict(coordinator_address="10.0.0.1:1234", num_processes=8, process_id=3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    shared, single = str(tmp / "two_hosts"), str(tmp / "one_host")
    port = _free_port()
    dist = ["--config.distributed.initialize=True", f"--config.distributed.coordinator_address=127.0.0.1:{port}",
            "--config.distributed.num_processes=2"]
    # the three processes at once: the 2-process pair idles in collectives, so this overlaps them
    cmds = [(main_cmd(shared, *ARGS, *dist, f"--config.distributed.process_id={i}"), _env(4)) for i in range(2)]
    cmds.append((main_cmd(single, *ARGS), _env(8)))
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd, env in cmds]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=300)[0])
    except subprocess.TimeoutExpired:
        for q in procs:
            q.kill()
        pytest.fail("distributed test runs timed out")
    for name, p, out in zip(("process 0", "process 1", "single process"), procs, outs):
        assert p.returncode == 0, f"{name}:\n{out[-3000:]}"
    return shared, single


def _by_step(workdir):
    rows = {}
    for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")):
        rows.setdefault(r["step"], r)  # one line per step (test_only_process_zero_writes_metrics)
    return rows


def test_two_processes_train_like_one(runs):
    shared, single = runs
    two, one = _by_step(shared), _by_step(single)
    assert sorted(two) == sorted(one) == list(range(1, STEPS + 1))
    for step in one:
        for key in COMPARED:
            assert two[step][key] == pytest.approx(one[step][key], rel=1e-4, abs=1e-5), (step, key)
    assert os.path.exists(os.path.join(shared, "results.json"))


def test_only_process_zero_writes_metrics(runs):
    shared, _ = runs
    steps = [r["step"] for r in read_jsonl(os.path.join(shared, "metrics.jsonl"))]
    assert steps == list(range(1, STEPS + 1))
