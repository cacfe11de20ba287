"""The sft / eval / export tasks, evaluation during training, best-N checkpoints and TensorBoard
events, on one short gym run (module fixture)."""
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from safetensors.numpy import load_file

from pojax.train.run import run_train
from pojax.train.tasks import run_eval, run_export, run_sft
from tests.train.helpers import ROOT, quick_config, read_jsonl, run_main, warmup_cosine

RUN = {"train.sft_steps": 0, "train.max_steps": 10, "train.batch_size": 16, "eval.every_steps": 3,
       "eval.num_examples": 32, "checkpoint.every_steps": 5, "checkpoint.best_metric": "eval_loss",
       "checkpoint.keep_best": 1, "data.gym.num_eval": 16, "eval.num_samples": 2, "optimizer.learning_rate": 3e-3,
       "data.gym.num_train": 64}  # 10 steps of 16 pairs: 2.5 passes over the training pairs


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    results = run_train(quick_config(**RUN), str(workdir))
    return workdir, results


def _event_class():
    """tensorboard's Event message, built from its field numbers in the test (independent of
    pojax's hand-written encoder)."""
    f = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="event_test.proto", package="tb")
    value = fdp.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=f.TYPE_FLOAT, label=f.LABEL_OPTIONAL)
    summary = fdp.message_type.add(name="Summary")
    summary.field.add(name="value", number=1, type=f.TYPE_MESSAGE, type_name=".tb.Value", label=f.LABEL_REPEATED)
    event = fdp.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=f.TYPE_DOUBLE, label=f.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=f.TYPE_INT64, label=f.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=f.TYPE_MESSAGE, type_name=".tb.Summary", label=f.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tb.Event"))


def read_events(path):
    event_cls, out = _event_class(), []
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked_crc32c(header)
        payload = data[pos + 12:pos + 12 + length]
        assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == masked_crc32c(payload)
        out.append(event_cls.FromString(payload))
        pos += 16 + length
    return out


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli polynomial, reflected
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), written here to check the event files' framing independently."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits and add a constant."""
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_crc32c_matches_rfc3720_vectors():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(bytes([0xFF] * 32)) == 0x62A8AB43


def test_tensorboard_events_equal_metrics_jsonl(run_dir):
    workdir, _ = run_dir
    logdir = workdir / "tensorboard" / "train"
    files = [f for f in os.listdir(logdir) if "tfevents" in f]
    assert len(files) == 1
    events = read_events(logdir / files[0])
    assert events[0].file_version == "brain.Event:2"
    by_step = {e.step: {v.tag: v.simple_value for v in e.summary.value} for e in events[1:]}
    rows = read_jsonl(workdir / "metrics.jsonl")
    assert sorted(by_step) == [r["step"] for r in rows]
    for row in rows:
        # transformers' TensorBoardCallback groups: eval_<name> → eval/<name>, the rest train/<name>
        want = {("eval/" + k[5:] if k.startswith("eval_") else "train/" + k): v for k, v in row.items()
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert by_step[row["step"]].keys() == want.keys()
        for tag, v in want.items():
            assert by_step[row["step"]][tag] == pytest.approx(v, rel=1e-6), tag
    tags = set().union(*by_step.values())
    assert {"train/loss", "train/rewards/accuracies", "train/learning_rate", "train/epoch", "eval/loss",
            "eval/rewards/accuracies"} <= tags
    assert not {"loss", "eval_loss", "train/eval_loss"} & tags


def test_event_writer_leaves_torch_unloaded_and_importable(tmp_path):
    """tensorboardX would import torch (seconds of every run's start); pojax's writer does not, and
    torch still imports afterwards in the same process."""
    code = ("import sys; from pojax.train.tensorboard import EventWriter; w = EventWriter(sys.argv[1]); "
            "w.scalars(1, {'loss': 0.5}); assert 'torch' not in sys.modules, 'torch loaded'; "
            "import torch; print(torch.ones(2).sum().item())")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["2.0"]
    (events,) = [f for f in os.listdir(tmp_path) if "tfevents" in f]
    assert [{v.tag: v.simple_value for v in e.summary.value} for e in read_events(tmp_path / events)[1:]] == [{"loss": 0.5}]


def test_learning_rate_and_epoch_on_every_line(run_dir):
    workdir, _ = run_dir
    rows = read_jsonl(workdir / "metrics.jsonl")
    steps, batch, peak = RUN["train.max_steps"], RUN["train.batch_size"], RUN["optimizer.learning_rate"]
    warmup = quick_config().optimizer.warmup_steps
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for r in rows:
        assert r["learning_rate"] == pytest.approx(warmup_cosine(r["step"] - 1, peak, warmup, steps), rel=1e-6,
                                                    abs=1e-6 * peak)
        assert r["epoch"] == pytest.approx(r["step"] * batch / RUN["data.gym.num_train"], rel=1e-12)
    assert rows[-1]["epoch"] == 2.5 and rows[-1]["learning_rate"] == pytest.approx(peak, rel=1e-6)


def test_eval_during_training_and_best_checkpoint(run_dir):
    workdir, results = run_dir
    rows = read_jsonl(workdir / "metrics.jsonl")
    evals = {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}
    assert sorted(evals) == [3, 6, 9, 10]
    assert evals[10] == pytest.approx(results["eval_loss"], rel=1e-5)
    assert all("eval_rewards/accuracies" in r for r in rows if "eval_loss" in r)
    best_dir = workdir / "checkpoints" / "train_best"
    kept = sorted(int(d) for d in os.listdir(best_dir) if d.isdigit())
    assert kept == [min(evals, key=evals.get)]


def test_export_latest_equals_final_and_best_is_its_step(run_dir, tmp_path):
    workdir, _ = run_dir
    config = quick_config(**RUN, **{"task": "export", "export.path": str(tmp_path / "latest")})
    out = run_export(config, str(workdir))
    assert out["stage"] == "train" and out["step"] == 10
    final, latest = load_file(workdir / "final" / "model.safetensors"), load_file(tmp_path / "latest" / "model.safetensors")
    assert final.keys() == latest.keys()
    for k in final:
        np.testing.assert_array_equal(final[k], latest[k])
    best = run_export(quick_config(**RUN, **{"task": "export", "export.path": str(tmp_path / "best"),
                                             "export.checkpoint": "best"}), str(workdir))
    evals = {r["step"]: r["eval_loss"] for r in read_jsonl(workdir / "metrics.jsonl") if "eval_loss" in r}
    assert best["step"] == min(evals, key=evals.get)


def test_eval_task_policy_equal_to_reference_is_at_log2(run_dir, tmp_path):
    workdir, _ = run_dir
    final = str(workdir / "final")
    config = quick_config(**RUN, **{"task": "eval", "model.path": final, "reference.path": final})
    results = run_eval(config, str(tmp_path))
    assert results["eval_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert results["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert results["gold_win_rate"] == 0.5  # the same samples: every prompt ties


def test_sft_task_raises_the_gold_reward(tmp_path):
    config = quick_config(**{"task": "sft", "train.max_steps": 200, "optimizer.learning_rate": 2e-3,
                             "data.gym.num_eval": 32, "eval.num_samples": 2, "logging.plots": False})
    results = run_sft(config, str(tmp_path))
    assert results["gold_reward_after"] > results["gold_reward_before"] + 0.1, results
    rows = read_jsonl(tmp_path / "metrics_sft.jsonl")  # the SFT stage logs TRL's learning_rate and epoch too
    o, t = config.optimizer, config.train
    assert [r["step"] for r in rows] == list(range(1, 201))
    for r in rows:
        assert r["learning_rate"] == pytest.approx(warmup_cosine(r["step"] - 1, 2e-3, o.warmup_steps, 200),
                                                    rel=1e-6, abs=1e-6 * 2e-3)  # float32 of values up to the peak
        assert r["epoch"] == pytest.approx(r["step"] * t.batch_size / config.data.gym.num_train, rel=1e-12)
    assert os.path.exists(tmp_path / "final" / "model.safetensors")


def test_main_dispatches_export(run_dir, tmp_path):
    workdir, _ = run_dir
    proc = run_main(workdir, "--config.task=export", f"--config.export.path={tmp_path / 'out'}",
                    "--config.train.sft_steps=0")
    assert "exported" in proc.stdout or "path" in proc.stdout
    assert os.path.exists(tmp_path / "out" / "model.safetensors")
