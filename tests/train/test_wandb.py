"""logging.wandb in W&B's offline mode (no network): the offline run directory holds every
metric of metrics.jsonl at its step, under <stage>/<key>; a resumed run continues the same W&B
run; without the wandb package the run stops before compiling with the install command.

The .wandb file is read here with its own framing (LevelDB's log format behind a 7-byte
":W&B" header) and W&B's protobuf Record: independent of pojax's writer."""
import glob
import json
import math
import os

import pytest

from pojax.train import wandb_log
from pojax.train.run import run_train
from tests.train.helpers import quick_config, read_jsonl

wandb = pytest.importorskip("wandb")

RUN = {"train.sft_steps": 3, "train.max_steps": 4, "train.batch_size": 8, "checkpoint.every_steps": 2,
       "eval.every_steps": 2, "eval.num_examples": 8, "data.gym.num_eval": 8, "eval.num_samples": 1,
       "logging.plots": False, "logging.wandb": True, "logging.wandb_tags": "test, offline"}


def wandb_records(path):
    """The protobuf Records of a .wandb file."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, records, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, or LAST of FIRST / MIDDLE / LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def history(workdir):
    """{(stage, step): {key: value}} of every offline run file of workdir, and the run ids."""
    out, ids = {}, set()
    for path in sorted(glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb"))):
        ids.add(os.path.basename(path)[4:-6])
        for r in wandb_records(path):
            if r.WhichOneof("record_type") != "history":
                continue
            keys = [(i.key or "/".join(i.nested_key), i.value_json) for i in r.history.item]
            items = {k: json.loads(v) for k, v in keys if not k.startswith("_")}
            stage = next((k.split("/")[0] for k in items if k.endswith("/step")), None)
            assert stage is not None, items
            out.setdefault((stage, items.pop(f"{stage}/step")), {}).update(
                {k.split("/", 1)[1]: v for k, v in items.items()})
    return out, ids


def test_offline_run_holds_every_metric_and_resumes_the_same_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    workdir = str(tmp_path / "run")
    results = run_train(quick_config(**RUN), workdir)
    wandb_log.finish(workdir, results, teardown=True)  # as pojax.main does: the file is complete
    got, ids = history(workdir)
    for stage, name in (("sft", "metrics_sft.jsonl"), ("train", "metrics.jsonl")):
        rows = read_jsonl(os.path.join(workdir, name))
        assert rows and any("eval_loss" in r for r in rows) == (stage == "train")
        for row in rows:
            logged = got[(stage, row["step"])]
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    assert math.isclose(logged[key], value, rel_tol=1e-12), (stage, row["step"], key)
    run_id = open(os.path.join(workdir, "wandb_run_id")).read().strip()
    assert ids == {run_id}

    more = quick_config(**dict(RUN, **{"train.max_steps": 6}))  # the same command with more steps: resumes
    wandb_log.finish(workdir, run_train(more, workdir), teardown=True)
    got, ids = history(workdir)
    assert ids == {run_id}  # the same W&B run continued
    assert {s for st, s in got if st == "train"} == set(range(1, 7))
    assert len(glob.glob(os.path.join(workdir, "wandb", "offline-run-*"))) == 2  # one directory per process life


def test_missing_wandb_is_one_line_before_anything_runs(tmp_path, monkeypatch):
    import importlib.util

    from pojax.config import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^config key logging.wandb: True needs the wandb package: pip install -e "
                                          r"'.\[wandb\]'"):
        wandb_log.check_installed()
