"""The absl entry point, run as a user runs it: ``python -m pojax.main``."""
import json
import os
import subprocess
import sys

import pytest

from tests import xla

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pojax.main", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=None if env is None else dict(os.environ, **env))


def test_quickstart_validates_prints_and_writes_config(tmp_path):
    # task=sample has no runner yet, so this checks flags, validation and config.json alone
    proc = run("--config=configs/quickstart.py", f"--workdir={tmp_path}", "--config.task=sample", "--config.loss.beta=0.25",
               "--config.loss.name=sigmoid+sft", "--config.loss.loss_weights=(1.0, 0.5)")
    assert proc.returncode == 0, proc.stderr
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["loss"]["beta"] == 0.25 and written["loss"]["name"] == "sigmoid+sft"
    assert written["loss"]["loss_weights"] == [1.0, 0.5]
    assert proc.stdout.splitlines()[0] == f"pojax: task sample, loss sigmoid+sft, model random llama, data gym; run directory {tmp_path}"


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


def one_line(proc) -> str:
    """The single ``pojax:`` line of a failed run's stderr (library warnings aside: no traceback)."""
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("pojax: ")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def test_relative_workdir_is_resolved_against_the_current_directory(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pojax.main", f"--config={ROOT}/configs/quickstart.py", "--workdir=runs/x",
                           "--config.task=sample"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    assert f"run directory {tmp_path / 'runs' / 'x'}" in proc.stdout
    assert (tmp_path / "runs" / "x" / "config.json").is_file()


def test_missing_config_file_is_one_line():
    assert one_line(run("--config=configs/nope.py")) == (
        "pojax: --config=configs/nope.py: no such file (run from the pojax checkout, or pass the recipe's full path, "
        "e.g. --config=configs/quickstart.py)")


def test_model_and_data_path_mistakes_are_one_line_each_naming_every_bad_key(tmp_path):
    (tmp_path / "not_a_model").mkdir()
    line = one_line(run("--config=configs/dpo.py", f"--workdir={tmp_path / 'r'}", f"--config.model.path={tmp_path / 'nope'}",
                        f"--config.data.path={tmp_path / 'prefs.jsonl'}"))
    assert line == (f"pojax: config key model.path: no such file or directory: {tmp_path / 'nope'}; "
                    f"config key data.path: no such file or directory: {tmp_path / 'prefs.jsonl'}")
    line = one_line(run("--config=configs/dpo.py", f"--config.model.path={tmp_path / 'not_a_model'}",
                        f"--config.data.path={tmp_path}"))
    assert line.startswith(f"pojax: config key model.path: {tmp_path / 'not_a_model'} is a directory without config.json")
    line = one_line(run("--config=configs/dpo.py", "--config.model.path=meta-llama/Llama-3.2-1B", f"--config.data.path={tmp_path}",
                        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}))
    assert line == (f"pojax: config key model.path: meta-llama/Llama-3.2-1B: this Hugging Face id is not in the Hub cache "
                    f"({tmp_path / 'hf' / 'hub'}) with HF_HUB_OFFLINE=1; download it first (huggingface-cli download "
                    "meta-llama/Llama-3.2-1B) or pass a local path")
    # configs/dpo.py as is names the keys it needs, model.path first
    assert one_line(run("--config=configs/dpo.py")).startswith("pojax: config key model.path: data.format='paired' needs a "
                                                               "Hugging Face model directory")
    assert not (tmp_path / "r").exists()  # nothing was written: checked before the run starts


def test_checkpoint_error_reaches_the_user_as_one_line(tmp_path):
    """A model directory whose config.json is not a model pojax can build (CheckpointError)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt_unknown"}))
    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    from tests.data.tokenizer_fixture import make_tokenizer

    make_tokenizer(model)
    line = one_line(run("--config=configs/dpo.py", f"--workdir={tmp_path / 'r'}", f"--config.model.path={model}",
                        f"--config.data.path={tmp_path / 'p.jsonl'}", "--config.logging.progress=False"))
    assert str(model) in line and "gpt_unknown" in line


def test_mesh_that_does_not_fit_names_the_key_the_user_set(tmp_path):
    env = dict(os.environ, XLA_FLAGS=xla.flags(1))
    proc = subprocess.run([sys.executable, "-m", "pojax.main", "--config=configs/quickstart.py", f"--workdir={tmp_path}",
                           "--config.mesh.fsdp=3"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert one_line(proc).startswith("pojax: config key mesh.fsdp: mesh.fsdp=3: 1 device(s) do not divide")


def test_missing_data_file_says_no_such_file_and_nothing_more(tmp_path):
    from pojax.data.formats import DataError, load

    with pytest.raises(DataError) as e:
        load(str(tmp_path / "gone.jsonl"), "paired")
    assert str(e.value) == f"{tmp_path / 'gone.jsonl'}: no such file or directory"


def test_reference_free_loss_builds_no_reference():
    from pojax import preflight
    from tests.train.helpers import quick_config

    config = quick_config(**{"loss.name": "simpo"})
    assert preflight.drop_unused_reference(config) == ("loss 'simpo' is reference-free: reference.mode=copy → none "
                                                       "(no reference model is built)")
    assert config.reference.mode == "none"
    for name, task in (("sigmoid", "train"), ("sigmoid+sft", "train"), ("simpo", "eval")):  # a reference is read, or no training
        config = quick_config(**{"loss.name": name, "task": task})
        assert preflight.drop_unused_reference(config) is None and config.reference.mode == "copy"
