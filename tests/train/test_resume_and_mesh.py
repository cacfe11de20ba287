"""A run on a (data=2, fsdp=2, tensor=2) mesh of 8 host devices follows the 1-device loss curve.
(SIGKILL and resume: tests/reliability/test_kill_loop.py, which shares one uninterrupted run
between its kill tests.)"""
import numpy as np

from tests.train.helpers import flags, losses, run_main


def test_mesh_run_follows_single_device_run(tmp_path):
    short = flags(**{"train.sft_steps": 3, "train.max_steps": 5, "data.gym.num_eval": 8, "eval.num_samples": 0,
                     "eval.every_steps": 5, "logging.plots": False, "train.export_final": False})
    run_main(tmp_path / "one", *short, devices=1)
    run_main(tmp_path / "mesh", *short, "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2", devices=8)
    for name in ("metrics_sft.jsonl", "metrics.jsonl"):
        np.testing.assert_allclose(losses(tmp_path / "mesh", name), losses(tmp_path / "one", name), rtol=0, atol=1e-5)
