"""Run helpers for trainer tests: configs, subprocess runs, metrics files."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def quick_config(**overrides):
    """The quickstart recipe with overrides given as dotted keys ("train.max_steps": 20)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("quickstart", os.path.join(ROOT, "configs", "quickstart.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.logging.progress = False
    for key, value in overrides.items():
        section, field = key.split(".", 1)
        if "." in field:
            sub, field = field.split(".")
            config[section][sub][field] = value
        else:
            config[section][field] = value
    return config


def flags(**overrides):
    return [f"--config.{k}={v}" for k, v in overrides.items()]


def main_cmd(workdir, *args):
    return [sys.executable, "-m", "pojax.main", "--config=configs/quickstart.py", f"--workdir={workdir}",
            "--config.logging.progress=False", *args]


def run_main(workdir, *args, devices=None, timeout=600):
    env = dict(os.environ)
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    proc = subprocess.run(main_cmd(workdir, *args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def losses(workdir, name="metrics.jsonl"):
    return [r["loss"] for r in read_jsonl(os.path.join(workdir, name))]
