"""pojax.preflight: the absolute workdir, resuming only with the same training config, and
train.overwrite clearing a run's outputs and nothing else."""
import json
import os

import pytest

from pojax import preflight
from pojax.config import ConfigError, base_config
from tests.train.helpers import flags, main_cmd, read_jsonl, run_main

TINY = flags(**{"train.sft_steps": 0, "train.max_steps": 4, "checkpoint.every_steps": 2, "eval.num_examples": 0,
                "data.gym.num_eval": 8, "eval.num_samples": 0, "logging.plots": False, "train.export_final": False})


def test_absolute_workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert preflight.absolute_workdir(None) == str(tmp_path / "workdirs" / "run")
    assert preflight.absolute_workdir("runs/dpo") == str(tmp_path / "runs" / "dpo")
    assert preflight.absolute_workdir("gs://bucket/run") == "gs://bucket/run"


def test_resume_conflicts_name_training_keys_only():
    old = preflight.config_as_json(base_config())
    new_config = base_config()
    new_config.loss.name, new_config.loss.beta = "ipo", 0.5  # training-relevant
    new_config.logging.every_steps, new_config.mesh.fsdp, new_config.eval.every_steps = 5, 2, 7  # not
    assert preflight.resume_conflicts(old, preflight.config_as_json(new_config)) == [
        "loss.beta: 0.1 → 0.5", "loss.name: 'sigmoid' → 'ipo'"]
    new_config = base_config()
    new_config.eval.num_examples = 3  # picks the held-out rows: training data
    assert preflight.resume_conflicts(old, preflight.config_as_json(new_config)) == ["eval.num_examples: 64 → 3"]


def test_clear_outputs_removes_run_files_only(tmp_path):
    for name in ("config.json", "results.json", "metrics.jsonl", "metrics_sft.jsonl", "config_eval.json", "memory.json",
                 "notes.txt"):
        (tmp_path / name).write_text("x")
    for name in ("checkpoints/train/2", "final", "plots", "tensorboard/train", "my_data"):
        (tmp_path / name).mkdir(parents=True)
    preflight.clear_outputs(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["my_data", "notes.txt"]


def test_rerun_with_another_loss_stops_and_overwrite_starts_afresh(tmp_path):
    import subprocess

    from tests.train.helpers import ROOT

    run_main(tmp_path, *TINY)
    sigmoid = read_jsonl(tmp_path / "metrics.jsonl")
    proc = subprocess.run(main_cmd(tmp_path, *TINY, "--config.loss.name=ipo"), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    lines = [l for l in proc.stderr.splitlines() if l.startswith("pojax: ")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"pojax: config key train.overwrite: {tmp_path} holds a run with another config "
                               "(loss.name: 'sigmoid' → 'ipo'); ")
    assert "--config.train.overwrite=True" in lines[0]
    assert json.loads((tmp_path / "config.json").read_text())["loss"]["name"] == "sigmoid"  # untouched
    assert json.loads((tmp_path / "results.json").read_text())["loss"] == "sigmoid"

    run_main(tmp_path, *TINY, "--config.loss.name=ipo", "--config.train.overwrite=True")
    ipo = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in ipo] == [r["step"] for r in sigmoid] == [1, 2, 3, 4]  # trained again, from step 1
    assert ipo[-1]["loss"] != sigmoid[-1]["loss"]
    assert json.loads((tmp_path / "results.json").read_text())["loss"] == "ipo"
    # a plain rerun of that config resumes the finished run (train.overwrite is not a training key)
    proc = run_main(tmp_path, *TINY, "--config.loss.name=ipo")
    assert "(resuming)" in proc.stdout
    assert read_jsonl(tmp_path / "metrics.jsonl") == ipo  # nothing retrained


def test_check_resume_ignores_a_workdir_without_checkpoints(tmp_path):
    config = base_config()
    (tmp_path / "config.json").write_text(json.dumps({"loss": {"name": "other"}}))
    (tmp_path / "checkpoints" / "model").mkdir(parents=True)  # the run spec alone: nothing to resume
    assert preflight.check_resume(config, str(tmp_path)) is False
    (tmp_path / "checkpoints" / "train" / "2").mkdir(parents=True)
    with pytest.raises(ConfigError, match="loss.name: 'other' → 'sigmoid'"):
        preflight.check_resume(config, str(tmp_path))
