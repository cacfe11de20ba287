"""Run helpers for trainer tests: configs, subprocess runs, metrics files."""
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys

import numpy as np

from tests import xla

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def quick_config(**overrides):
    """The quickstart recipe with overrides given as dotted keys ("train.max_steps": 20), its
    progress bar and PNG plots off (the plots cost ~1.3 s of matplotlib per run, 2.3 s with its
    import; the tests that read them turn them on: "logging.plots": True)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("quickstart", os.path.join(ROOT, "configs", "quickstart.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.logging.progress = False
    config.logging.plots = False
    return override(config, overrides)


def override(config, overrides: dict):
    """Sets dotted keys ("train.max_steps", "data.gym.num_train", "task") in place."""
    for key, value in overrides.items():
        *path, field = key.split(".")
        node = config
        for part in path:
            node = node[part]
        node[field] = value
    return config


def flags(**overrides):
    return [f"--config.{k}={v}" for k, v in overrides.items()]


def main_cmd(workdir, *args):
    """``python -m pojax.main`` on the quickstart recipe, progress bar and plots off as in
    quick_config, and no sampled gold-reward evaluation (eval.num_samples = 0: the sampler's
    compile, 1.5-3 s per process; no subprocess test reads gold_* figures). A later flag in
    ``args`` (``--config.eval.num_samples=2``) wins."""
    return [sys.executable, "-m", "pojax.main", "--config=configs/quickstart.py", f"--workdir={workdir}",
            "--config.logging.progress=False", "--config.logging.plots=False", "--config.eval.num_samples=0", *args]


def free_port() -> int:
    """A TCP port free on this machine now (a jax.distributed coordinator's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(devices: int) -> dict:
    """This environment for a child process that computes on ``devices`` host CPU devices."""
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla.flags(devices))


def run_main(workdir, *args, devices=None, timeout=600):
    env = dict(os.environ)
    if devices is not None:
        env["XLA_FLAGS"] = xla.flags(devices)
    proc = subprocess.run(main_cmd(workdir, *args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def losses(workdir, name="metrics.jsonl"):
    return [r["loss"] for r in read_jsonl(os.path.join(workdir, name))]


def warmup_cosine(i: int, peak: float, warmup: int, total: int) -> float:
    """The learning rate of update i (0-based) of optimizer.schedule = "cosine", written out (not
    through optax): linear from 0 to ``peak`` over w = min(warmup, total - 1) updates, then
    peak·(1 + cos(π·(i − w)/(total − w)))/2."""
    w = min(warmup, total - 1)
    if i < w:
        return peak * i / w
    return peak * 0.5 * (1 + math.cos(math.pi * (i - w) / (total - w)))


def rows(kind, n=24):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        prompt = [{"role": "user", "content": " ".join(rng.choice(["hi", "name", "a", "color", "2+2?"], 3))}]
        if kind == "paired":
            out.append({"prompt": prompt, "chosen": "good yes", "rejected": "bad no go away"})
        else:
            out.append({"prompt": prompt, "completion": "good yes" if i % 2 else "bad no", "label": bool(i % 2)})
    return out


def recipe(name, **overrides):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return override(module.get_config(), overrides)
