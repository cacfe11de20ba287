"""configs/from_trl.py through ``python -m pojax.main``: a TRL DPO YAML (TRL's keys only, TRL's
defaults for the rest) trains a tiny Hugging Face Llama on local JSONL for 2 steps, starting at
log 2; TRL's output_dir is the run directory when --workdir is not given; a key pojax does not
know stops the run with one line naming it."""
import json
import math
import subprocess
import sys

import numpy as np
import yaml

from tests.train.helpers import ROOT, read_jsonl, rows


def _yaml(tmp_path, hf_dir, **extra):
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows("paired")))
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump({"model_name_or_path": hf_dir, "dataset_name": str(data), "max_steps": 2,
                                    "per_device_train_batch_size": 4, "max_length": 32, "learning_rate": 1e-3,
                                    "logging_steps": 1, "save_steps": 2, "report_to": "none", **extra}))
    return path


def _main(path, *args):
    cmd = [sys.executable, "-m", "pojax.main", f"--config=configs/from_trl.py:{path}", "--config.logging.progress=False",
           "--config.logging.plots=False", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_trl_yaml_trains_two_steps_from_log_2(hf_dir, tmp_path):
    run = tmp_path / "run"
    proc = _main(_yaml(tmp_path, hf_dir, output_dir=str(tmp_path / "unused")), f"--workdir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    np.testing.assert_allclose(metrics[0]["loss"], math.log(2), atol=1e-5)  # policy = reference at step 1
    assert metrics[1]["loss"] != metrics[0]["loss"]
    config = json.loads((run / "config.json").read_text())
    # TRL's values and defaults, not configs/dpo.py's
    assert config["loss"]["name"] == "sigmoid" and config["loss"]["beta"] == 0.1
    assert config["data"]["max_length"] == 32 and config["data"]["truncation_mode"] == "keep_start"
    assert config["model"]["dtype"] == "bfloat16" and config["model"]["remat"] == "full"
    assert config["optimizer"]["schedule"] == "linear" and config["train"]["seed"] == 42
    assert config["train"]["batch_size"] == 4 and not (tmp_path / "unused").exists()  # --workdir wins


def test_output_dir_is_the_run_directory(hf_dir, tmp_path):
    out = tmp_path / "trl_out"
    proc = _main(_yaml(tmp_path, hf_dir, output_dir=str(out), max_steps=1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1]


def test_unknown_key_is_one_line(hf_dir, tmp_path):
    path = _yaml(tmp_path, hf_dir, sync_ref_modle=True)
    proc = _main(path, f"--workdir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"pojax: config key trl_yaml: {path}: key 'sync_ref_modle': pojax has no equivalent "
                                   "(not a TRL 1.16 DPOConfig / ScriptArguments / ModelConfig / DatasetMixtureConfig "
                                   "field that pojax maps)")
