"""Multi-host correctness on one machine: 2 processes × 4 CPU devices joined by
jax.distributed (gloo collectives) train exactly like 1 process × 8 devices.

Each process loads only its half of every global batch (pojax.data.pipeline shards by
jax.process_index()), so equal losses prove per-host data loading and the cross-process
gradient reduction. Both processes share one workdir, as hosts of a TPU slice share a GCS path:
orbax's multi-process checkpoint needs that (with separate workdirs process 1 fails writing
its part of a checkpoint directory that only process 0 created).
"""
import os
import signal
import socket
import subprocess
import time

import pytest

from pojax.config import base_config
from pojax.distributed import initialize_kwargs
from tests.train.helpers import ROOT, main_cmd, read_jsonl

STEPS = 6
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
    timeouts = dict(initialization_timeout=300, heartbeat_timeout_seconds=100, shutdown_timeout_seconds=300)  # JAX's
    assert initialize_kwargs(c) == dict(coordinator_address=None, num_processes=None, process_id=None, **timeouts)
    c.distributed.coordinator_address, c.distributed.num_processes, c.distributed.process_id = "10.0.0.1:1234", 8, 3
    c.distributed.heartbeat_timeout_s = 15
    assert initialize_kwargs(c) == dict(coordinator_address="10.0.0.1:1234", num_processes=8, process_id=3,
                                        **dict(timeouts, heartbeat_timeout_seconds=15))


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


def _pair(workdir, *extra):
    """Starts the two processes of a 2-host run (each on 4 CPU devices) on ``workdir``."""
    port = _free_port()
    dist = ["--config.distributed.initialize=True", f"--config.distributed.coordinator_address=127.0.0.1:{port}",
            "--config.distributed.num_processes=2", *extra]
    return [subprocess.Popen(main_cmd(workdir, *ARGS, *dist, f"--config.distributed.process_id={i}"), cwd=ROOT,
                             env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]


def _lines(path) -> int:
    try:
        with open(path) as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        return 0


def _wait_for_lines(procs, path, n: int) -> None:
    deadline = time.time() + 300
    while _lines(path) < n:
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            pytest.fail(f"no step {n} in {path}: " + "\n".join(p.communicate()[0][-2000:] for p in procs))
        time.sleep(0.01)


def test_preemption_of_one_host_and_a_lost_host_then_resume_like_one(runs, tmp_path):
    """Life 1: SIGTERM to process 1 only → both processes checkpoint the same step and exit 75.
    Life 2: process 1 is SIGKILLed mid-run → process 0 exits non-zero within the heartbeat bound
    (it does not wait in a collective forever). Life 3: the same command finishes, and the
    metrics equal the 1-process run's."""
    _, single = runs
    work = tmp_path / "resilient"
    metrics = work / "metrics.jsonl"
    bound = 10  # distributed.heartbeat_timeout_s (and the shutdown barrier's wait)
    extra = (f"--config.distributed.heartbeat_timeout_s={bound}", f"--config.distributed.shutdown_timeout_s={bound}")

    procs = _pair(work, *extra)
    _wait_for_lines(procs, metrics, 1)
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [75, 75], outs[0][-3000:] + outs[1][-3000:]
    stopped = _lines(metrics)
    assert f"pojax: SIGTERM received: stage train stopped after step {stopped}, checkpoint written to" in outs[0]
    assert max(int(d) for d in os.listdir(work / "checkpoints" / "train") if d.isdigit()) == stopped

    procs = _pair(work, *extra)
    _wait_for_lines(procs, metrics, stopped + 1)
    procs[1].kill()
    lost_at = time.time()
    out = procs[0].communicate(timeout=300)[0]
    waited = time.time() - lost_at
    procs[1].wait()
    assert procs[0].returncode != 0, out[-3000:]
    assert waited < 3 * bound + 20, (waited, out[-3000:])
    # JAX's coordination service names the lost process (task 1) before it ends this one
    assert "The following tasks are unhealthy (stopped sending heartbeats):\n1\n" in out, out[-3000:]
    print(f"process 0 exited {waited:.1f} s after process 1 was lost (status {procs[0].returncode}):\n{out[-1500:]}")

    procs = _pair(work, *extra)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    two, one = _by_step(str(work)), _by_step(single)
    assert sorted(two) == sorted(one) == list(range(1, STEPS + 1))
    for step in one:
        for key in COMPARED:
            assert two[step][key] == pytest.approx(one[step][key], rel=1e-4, abs=1e-5), (step, key)


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
