"""Multi-host correctness on one machine: 2 processes × 4 CPU devices joined by
jax.distributed (gloo collectives) train exactly like 1 process × 8 devices.

Each process loads only its half of every global batch (pojax.data.pipeline shards by
jax.process_index()), so equal losses prove per-host data loading and the cross-process
gradient reduction. Both processes share one workdir, as hosts of a TPU slice share a GCS path:
orbax's multi-process checkpoint needs that (with separate workdirs process 1 fails writing
its part of a checkpoint directory that only process 0 created).

The 2-process run is also the resilience test (issue 27): it is preempted on one host, loses a
host, and is relaunched; since resume is exact, its final metrics still equal the 1-process run's.
"""
import os
import signal
import subprocess
import time

import pytest

from pojax.config import base_config
from pojax.distributed import initialize_kwargs
from tests.train.helpers import ROOT, cpu_env, free_port, main_cmd, read_jsonl

STEPS = 6
ARGS = ["--config.train.sft_steps=0", "--config.model.num_layers=1", f"--config.train.max_steps={STEPS}", "--config.data.gym.num_train=256",
        "--config.logging.plots=False", "--config.train.export_final=False", "--config.eval.num_examples=0",
        "--config.data.gym.num_eval=8", "--config.eval.num_samples=0", "--config.mesh.data=-1"]
COMPARED = ("loss", "grad_norm", "logps/chosen", "logps/rejected", "rewards/margins")


def test_initialize_kwargs_auto_detect():
    c = base_config()
    timeouts = dict(initialization_timeout=300, heartbeat_timeout_seconds=100, shutdown_timeout_seconds=300)  # JAX's
    assert initialize_kwargs(c) == dict(coordinator_address=None, num_processes=None, process_id=None, **timeouts)
    c.distributed.coordinator_address, c.distributed.num_processes, c.distributed.process_id = "10.0.0.1:1234", 8, 3
    c.distributed.heartbeat_timeout_s = 15
    assert initialize_kwargs(c) == dict(coordinator_address="10.0.0.1:1234", num_processes=8, process_id=3,
                                        **dict(timeouts, heartbeat_timeout_seconds=15))


def _pair(workdir, *extra):
    """Starts the two processes of a 2-host run (each on 4 CPU devices) on ``workdir``."""
    port = free_port()
    dist = ["--config.distributed.initialize=True", f"--config.distributed.coordinator_address=127.0.0.1:{port}",
            "--config.distributed.num_processes=2", *extra]
    return [subprocess.Popen(main_cmd(workdir, *ARGS, *dist, f"--config.distributed.process_id={i}"), cwd=ROOT,
                             env=cpu_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]


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


BOUND = 10  # distributed.heartbeat_timeout_s (and the shutdown barrier's wait) of the 2-process lives
EXTRA = (f"--config.distributed.heartbeat_timeout_s={BOUND}", f"--config.distributed.shutdown_timeout_s={BOUND}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 1-process run and a 2-process run on one workdir that lives three times: life 1 gets
    SIGTERM on process 1 only (both must checkpoint the same step and exit 75); in life 2 process
    1 is SIGKILLed mid-run (process 0 must exit within the heartbeat bound); life 3 finishes, and
    its metrics must equal the 1-process run's (resume is exact, so this is the multi-host check).
    Returns (2-process workdir, 1-process workdir, what the lives showed)."""
    tmp = tmp_path_factory.mktemp("dist")
    shared, single = tmp / "two_hosts", str(tmp / "one_host")
    metrics = shared / "metrics.jsonl"
    # the 1-process run alongside life 1: the pair idles in collectives, so this overlaps them
    one = subprocess.Popen(main_cmd(single, *ARGS), cwd=ROOT, env=cpu_env(8), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    procs = _pair(shared, *EXTRA)
    _wait_for_lines(procs, metrics, 1)
    procs[1].send_signal(signal.SIGTERM)
    lives = {"life1": [p.communicate(timeout=300)[0] for p in procs], "life1_status": [p.returncode for p in procs]}
    lives["stopped"] = _lines(metrics)
    lives["saved"] = max(int(d) for d in os.listdir(shared / "checkpoints" / "train") if d.isdigit())
    out = one.communicate(timeout=300)[0]
    assert one.returncode == 0, f"single process:\n{out[-3000:]}"
    assert lives["life1_status"] == [75, 75], lives["life1"][0][-3000:] + lives["life1"][1][-3000:]

    procs = _pair(shared, *EXTRA)
    _wait_for_lines(procs, metrics, lives["stopped"] + 1)
    procs[1].kill()
    lost_at = time.time()
    lives["life2"] = procs[0].communicate(timeout=300)[0]
    lives["waited"], lives["life2_status"] = time.time() - lost_at, procs[0].returncode
    procs[1].wait()

    procs = _pair(shared, *EXTRA)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for name, p, out in zip(("process 0", "process 1"), procs, outs):
        assert p.returncode == 0, f"{name}, life 3:\n{out[-3000:]}"
    return str(shared), single, lives


def test_sigterm_to_one_host_stops_both_at_the_same_step(runs):
    shared, _, lives = runs
    assert lives["saved"] == lives["stopped"] >= 1  # the step they were in, not a periodic checkpoint
    assert (f"pojax: SIGTERM received: stage train stopped after step {lives['stopped']}, checkpoint written to "
            f"{shared}/checkpoints/train" in lives["life1"][0])  # process 0 reports it; process 1 got the signal


def test_a_lost_host_ends_the_other_within_the_heartbeat_bound(runs):
    _, _, lives = runs
    out = lives["life2"]
    assert lives["life2_status"] != 0, out[-3000:]
    assert lives["waited"] < 3 * BOUND + 20, (lives["waited"], out[-3000:])
    # JAX's coordination service names the lost process (task 1) before it ends this one
    assert "The following tasks are unhealthy (stopped sending heartbeats):\n1\n" in out, out[-3000:]
    print(f"process 0 exited {lives['waited']:.1f} s after process 1 was lost (status {lives['life2_status']})")


def _by_step(workdir):
    rows = {}
    for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")):
        rows.setdefault(r["step"], r)  # one line per step (test_only_process_zero_writes_metrics)
    return rows


def test_two_processes_train_like_one(runs):
    shared, single, _ = runs
    two, one = _by_step(shared), _by_step(single)
    assert sorted(two) == sorted(one) == list(range(1, STEPS + 1))
    for step in one:
        for key in COMPARED:
            assert two[step][key] == pytest.approx(one[step][key], rel=1e-4, abs=1e-5), (step, key)
    assert os.path.exists(os.path.join(shared, "results.json"))


def test_only_process_zero_writes_metrics(runs):
    shared, _, _ = runs
    steps = [r["step"] for r in read_jsonl(os.path.join(shared, "metrics.jsonl"))]
    assert steps == list(range(1, STEPS + 1))
