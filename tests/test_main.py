"""The absl entry point, run as a user runs it: ``python -m pojax.main``."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    return subprocess.run([sys.executable, "-m", "pojax.main", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_quickstart_validates_prints_and_writes_config(tmp_path):
    # task=sample has no runner yet, so this checks flags, validation and config.json alone
    proc = run("--config=configs/quickstart.py", f"--workdir={tmp_path}", "--config.task=sample", "--config.loss.beta=0.25",
               "--config.loss.name=sigmoid+sft", "--config.loss.loss_weights=(1.0, 0.5)")
    assert proc.returncode == 0, proc.stderr
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["loss"]["beta"] == 0.25 and written["loss"]["name"] == "sigmoid+sft"
    assert written["loss"]["loss_weights"] == [1.0, 0.5]
    assert '"beta": 0.25' in proc.stdout


def test_bad_loss_hyperparameter_is_one_line_naming_the_key():
    proc = run("--config=configs/quickstart.py", "--config.loss.simpo_gamma=0.5")
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.startswith("pojax:")]
    assert lines == [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith(("W", "I"))]
    assert len(lines) == 1 and "config key loss.simpo_gamma" in lines[0]


def test_unknown_config_key_is_one_line():
    proc = run("--config=configs/quickstart.py", "--config.loss.betta=0.5")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pojax: unknown config key in --config.loss.betta=0.5: ")
    assert 'Did you mean "beta"' in lines[0]


def test_bad_value_type_is_one_line():
    proc = run("--config=configs/quickstart.py", "--config.train.max_steps=many")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "max_steps" in proc.stderr


def test_missing_config_flag():
    proc = run()
    assert proc.returncode == 2 and "--config is required" in proc.stderr


def test_bad_data_row_is_one_line_naming_file_row_and_field(tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text('{"prompt": "hi", "chosen": "a", "rejected": "b"}\n{"prompt": "hi", "chosen": "a"}\n')
    from tests.data.tokenizer_fixture import make_tokenizer

    make_tokenizer(tmp_path / "tok")
    proc = run("--config=configs/dpo.py", f"--workdir={tmp_path / 'run'}", f"--config.data.path={data}",
               f"--config.data.tokenizer={tmp_path / 'tok'}", "--config.model.path=", "--config.logging.progress=False")
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("pojax:")]
    assert lines == [f"pojax: {data}: row 1: field 'rejected': missing"], proc.stderr[-2000:]
