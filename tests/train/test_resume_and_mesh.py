"""A run killed with SIGKILL resumes from its workdir onto the uninterrupted loss curve; a run on
a (data=2, fsdp=2, tensor=2) mesh of 8 host devices follows the 1-device loss curve."""
import os
import signal
import subprocess
import time

import numpy as np

from tests.train.helpers import ROOT, flags, losses, main_cmd, read_jsonl, run_main

STEPS = 60
RUN = flags(**{"train.sft_steps": 0, "train.max_steps": STEPS, "checkpoint.every_steps": 10,
               "data.gym.num_eval": 8, "eval.num_samples": 1, "logging.plots": False})


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(main_cmd(killed, *RUN), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(read_jsonl(metrics)) >= 25:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_killed = len(read_jsonl(metrics))
    assert 25 <= n_killed < STEPS
    run_main(killed, *RUN)  # same command, same workdir: resumes from the latest checkpoint
    run_main(clean, *RUN)
    resumed, want = losses(killed), losses(clean)
    assert [r["step"] for r in read_jsonl(metrics)] == list(range(1, STEPS + 1))
    np.testing.assert_allclose(resumed, want, rtol=0, atol=1e-6)
    assert sorted(os.listdir(killed / "checkpoints" / "train"), key=int)[-1] == str(STEPS)


def test_mesh_run_follows_single_device_run(tmp_path):
    short = flags(**{"train.sft_steps": 10, "train.max_steps": 15, "data.gym.num_eval": 8, "eval.num_samples": 1,
                     "logging.plots": False})
    run_main(tmp_path / "one", *short, devices=1)
    run_main(tmp_path / "mesh", *short, "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2", devices=8)
    for name in ("metrics_sft.jsonl", "metrics.jsonl"):
        np.testing.assert_allclose(losses(tmp_path / "mesh", name), losses(tmp_path / "one", name), rtol=0, atol=1e-5)
