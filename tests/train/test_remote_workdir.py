"""A run with ``--workdir=gs://bucket/run`` writes every file of the run to the bucket and
resumes from it. No bucket is reachable in tests: gs:// is served by a fake fsspec filesystem
over a local directory that, like GCS, refuses appends (etils.epath and grain reach gs://
through fsspec), and orbax's TensorStore arrays go to the same directory (its GCS kvstore spec
is swapped for a file one)."""
import json
import os
import sys

import pytest

from pojax import fs
from pojax.train import metrics as metrics_lib
from pojax.train.run import run_train
from tests.train.helpers import quick_config

TINY = {"train.sft_steps": 0, "train.max_steps": 4, "checkpoint.every_steps": 2, "train.batch_size": 8,
        "data.gym.num_train": 64, "data.gym.num_eval": 8, "eval.num_samples": 1, "eval.every_steps": 4}


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """The local directory behind ``gs://``: gs://b/x is <bucket>/b/x."""
    import fsspec
    from etils.epath import backend as epath_backend
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem
    from orbax.checkpoint._src.path import gcs_utils

    root = tmp_path / "gcs"
    root.mkdir()

    class FakeGCS(DirFileSystem):
        protocol = ("gs", "gcs")
        cachable = False

        def __init__(self, *args, **kwargs):  # epath passes gcsfs's finalize_on_close
            super().__init__(path=str(root), fs=LocalFileSystem(auto_mkdir=True))  # no directories, as in GCS

        def open(self, path, mode="rb", *args, **kwargs):
            if "a" in mode:
                raise NotImplementedError(f"GCS objects cannot be appended to: {path}")
            return super().open(path, mode, *args, **kwargs)

    registry = sys.modules["fsspec.registry"]._registry
    for name in FakeGCS.protocol:
        monkeypatch.setitem(registry, name, FakeGCS)
    monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs",
                        lambda path: {"driver": "file", "path": str(root / path.removeprefix("gs://"))})
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    monkeypatch.chdir(tmp_path)  # a gs:// path mistaken for a local one would land in ./gs:
    assert fsspec.filesystem("gs").exists("gs://nothing/here") is False
    yield root
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    assert not os.path.exists(tmp_path / "gs:")


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_run_on_gcs_writes_its_files_there_and_resumes(bucket):
    run = bucket / "b" / "run"
    results = run_train(quick_config(**TINY, **{"logging.plots": True}), "gs://b/run")
    assert json.loads((run / "results.json").read_text())["gold_win_rate"] == pytest.approx(results["gold_win_rate"])
    first = _lines(run / "metrics.jsonl")
    assert [r["step"] for r in first] == [1, 2, 3, 4]
    assert sorted(os.listdir(run / "checkpoints" / "train")) == ["2", "4"]
    assert os.listdir(run / "checkpoints" / "train" / "4" / "data")  # the grain iterator's position
    assert {"loss.png", "rewards.png", "margins.png", "accuracies.png"} <= set(os.listdir(run / "plots"))
    (events,) = os.listdir(run / "tensorboard" / "train")
    assert (run / "tensorboard" / "train" / events).stat().st_size > 100  # header + 4 steps of scalars
    assert (run / "final" / "config.json").exists() and (run / "final" / "model.safetensors").exists()

    # a run killed after uploading lines past its last checkpoint: the resumed run drops them
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in first + [dict(first[-1], step=5)]))
    run_train(quick_config(**dict(TINY, **{"train.max_steps": 6})), "gs://b/run")
    resumed = _lines(run / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert resumed[:4] == first  # resumed from the step-4 checkpoint: the first lines are untouched
    assert resumed[4]["loss"] != first[-1]["loss"]
    assert sorted(os.listdir(run / "checkpoints" / "train")) == ["4", "6"]
    assert len(os.listdir(run / "tensorboard" / "train")) >= 1


def test_remote_metrics_are_uploaded_at_flush_and_truncated_on_resume(bucket):
    path = bucket / "b" / "m" / "metrics.jsonl"
    writer = metrics_lib.MetricsWriter("gs://b/m", flush_every_s=3600)
    writer.truncate_after(0)
    for step in range(1, 6):
        writer.write(step, {"loss": 1.0 / step})
    assert _lines(path) == []  # appended in memory only
    writer.flush()
    assert [r["step"] for r in _lines(path)] == [1, 2, 3, 4, 5]
    again = metrics_lib.MetricsWriter("gs://b/m")
    again.truncate_after(3)
    assert [r["step"] for r in _lines(path)] == [1, 2, 3]
    again.write(4, {"loss": 0.5})
    assert [r["step"] for r in again.read()] == [1, 2, 3, 4]
    again.close()
    assert _lines(path)[-1] == {"step": 4, "loss": 0.5}


def test_write_text_and_staged_dir_on_gcs(bucket):
    fs.write_text("gs://b/w/config.json", "{}")
    assert (bucket / "b" / "w" / "config.json").read_text() == "{}"
    assert fs.exists("gs://b/w/config.json") and not fs.exists("gs://b/w/missing")
    with fs.staged_dir("gs://b/w/final") as local:
        assert not fs.is_remote(local)
        os.makedirs(os.path.join(local, "sub"))
        for name in ("a.txt", "sub/b.txt"):
            with open(os.path.join(local, name), "w") as f:
                f.write(name)
    assert (bucket / "b" / "w" / "final" / "sub" / "b.txt").read_text() == "sub/b.txt"
    with pytest.raises(ValueError, match="written whole"):
        fs.open_file("gs://b/w/config.json", "a")


@pytest.mark.parametrize(("workdir", "message"), [
    ("memory://x", "workdir memory://x: unsupported scheme memory://; use a local directory or gs://"),
    ("s3://b/x", "unsupported scheme s3://"),
])
def test_unsupported_workdir_schemes_are_rejected(workdir, message):
    with pytest.raises(fs.WorkdirError, match=message.replace("(", r"\(")):
        fs.check_workdir(workdir)


def test_gcs_workdir_without_its_client_libraries_fails_at_startup(monkeypatch):
    import importlib.util

    import fsspec

    def no_gcsfs(protocol):
        raise ImportError("Install gcsfs to access Google Storage")

    monkeypatch.setattr(fsspec, "get_filesystem_class", no_gcsfs)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorflow", "google.cloud.storage") else real_find_spec(name, *a))
    with pytest.raises(fs.WorkdirError) as e:
        fs.check_workdir("gs://b/run")
    assert str(e.value) == ("workdir gs://b/run: writing to gs:// needs gcsfs and google-cloud-storage: pip install "
                            "gcsfs google-cloud-storage (or the tpu extra: pip install 'pojax[tpu]')")
    fs.check_workdir("/tmp/local")  # local paths need nothing


def test_main_reports_a_gcs_workdir_it_cannot_write_in_one_line(tmp_path):
    import subprocess

    from tests.train.helpers import ROOT, main_cmd

    proc = subprocess.run(main_cmd("memory://x/run"), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("pojax: workdir memory://x/run: unsupported scheme memory://; "
                                                     "use a local directory or gs://")
