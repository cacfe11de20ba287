"""pojax.hub: Hugging Face Hub ids resolve through huggingface_hub's own cache, offline, laid out
as huggingface_hub lays it out (``models--org--name/refs/main``, ``snapshots/<commit>/…``); a
training run takes a model id and a dataset id (trl-lib/ultrafeedback_binarized's parquet layout)
through ``python -m pojax.main`` and starts from log 2."""
import json
import math
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pojax import hub
from pojax.config import ConfigError, base_config
from tests.train.helpers import ROOT, read_jsonl

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def msg(role, content):
    return {"role": role, "content": content}


def cache_repo(cache, repo_type: str, repo: str, commit: str = COMMIT) -> str:
    """An empty snapshot dir of ``repo`` in huggingface_hub's cache layout, ref main → commit."""
    folder = cache / f"{repo_type}s--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    return str(snap)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """huggingface_hub offline on a cache under tmp_path (as HF_HUB_OFFLINE=1 HF_HOME=… set it)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_ids_and_paths_are_told_apart(tmp_path, monkeypatch):
    assert hub.parse_id("Qwen/Qwen2.5-0.5B-Instruct") == ("Qwen/Qwen2.5-0.5B-Instruct", None)
    assert hub.parse_id("trl-lib/ultrafeedback_binarized@v1.0") == ("trl-lib/ultrafeedback_binarized", "v1.0")
    for not_id in ("/ckpt/llama", "./runs/x", "~/m/x", "a/b/c", "gs://bucket/x", "model"):
        assert not hub.is_hub_id(not_id), not_id
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x").mkdir(parents=True)
    assert not hub.is_hub_id("runs/x")  # a relative path that exists is a path


def test_model_and_dataset_ids_resolve_offline_to_their_snapshots(offline):
    model = cache_repo(offline, "model", "org/tiny")
    open(os.path.join(model, "config.json"), "w").write("{}")
    data = cache_repo(offline, "dataset", "trl-lib/prefs")
    os.makedirs(os.path.join(data, "data"))
    for split in ("train", "test"):
        open(os.path.join(data, "data", f"{split}-00000-of-00001.parquet"), "wb").write(b"x")
    config = base_config()
    config.model.path, config.reference.path, config.data.path = "org/tiny", f"org/tiny@{COMMIT}", "trl-lib/prefs"
    config.data.format = "paired"
    done = hub.resolve(config)
    assert config.model.path == config.reference.path == model
    assert config.data.path == os.path.join(data, "data", "train-00000-of-00001.parquet")  # the train split only
    assert done["model.path"] == ("org/tiny", model)
    config.data.path, config.data.format = "trl-lib/prefs", "ultrafeedback_binarized"
    hub.resolve(config)
    assert config.data.path == data  # an upstream layout: its builder finds the splits


def test_missing_id_offline_is_one_line_naming_key_id_and_cache(offline):
    config = base_config()
    config.eval.judge_path = "org/judge"
    with pytest.raises(ConfigError, match=rf"^config key eval.judge_path: org/judge: this Hugging Face id is not in the "
                                          rf"Hub cache \({offline}\) with HF_HUB_OFFLINE=1; download it first "
                                          r"\(huggingface-cli download org/judge\) or pass a local path$"):
        hub.resolve(config)
    config = base_config()
    config.data.path, config.data.format = "org/data@dev", "paired"
    with pytest.raises(ConfigError, match=r"^config key data.path: org/data@dev: this Hugging Face dataset id .* "
                                          r"\(huggingface-cli download --repo-type dataset org/data --revision dev\)"):
        hub.resolve(config)


def test_dataset_repo_without_a_train_split_names_it(offline):
    cache_repo(offline, "dataset", "org/odd")
    config = base_config()
    config.data.path, config.data.format = "org/odd", "paired"
    with pytest.raises(ConfigError, match=r"^config key data.path: org/odd: no train split in the dataset repo"):
        hub.resolve(config)


def test_dpo_run_from_hub_ids_offline(tmp_path):
    """``python -m pojax.main`` with model.path and data.path as Hub ids, HF_HUB_OFFLINE=1 and
    HF_HOME pointing at a cache holding a random tiny Llama (saved by transformers) and a dataset
    in trl-lib/ultrafeedback_binarized's layout: 2 DPO steps, the first at log 2."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.data.tokenizer_fixture import make_tokenizer

    cache = tmp_path / "hf" / "hub"
    model = cache_repo(cache, "model", "org/tiny-llama")
    tok = make_tokenizer(model)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(model)
    data = cache_repo(cache, "dataset", "trl-lib/ultrafeedback_binarized")
    os.makedirs(os.path.join(data, "data"))
    rows = [{"chosen": [msg("user", q), msg("assistant", good)], "rejected": [msg("user", q), msg("assistant", bad)],
             "score_chosen": 8.0, "score_rejected": 2.0}
            for q, good, bad in [("hi", "hello", "go away"), ("name a color", "blue", "seven"), ("2+2?", "4", "5")] * 2]
    pq.write_table(pa.Table.from_pylist(rows), os.path.join(data, "data", "train-00000-of-00001.parquet"))
    pq.write_table(pa.Table.from_pylist(rows[:2]), os.path.join(data, "data", "test-00000-of-00001.parquet"))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_CACHE", None)
    workdir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "pojax.main", "--config=configs/dpo.py", f"--workdir={workdir}",
                           "--config.model.path=org/tiny-llama", "--config.data.path=trl-lib/ultrafeedback_binarized",
                           "--config.data.max_length=32", "--config.train.batch_size=2", "--config.train.max_steps=2",
                           "--config.eval.num_examples=0", "--config.logging.progress=False",
                           "--config.logging.plots=False", "--config.train.export_final=False"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = [m for m in read_jsonl(workdir / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in train] == [1, 2] and train[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    stored = json.loads((workdir / "config.json").read_text())
    assert stored["model"]["path"] == model  # the snapshot the run read
    assert stored["data"]["path"] == os.path.join(data, "data", "train-00000-of-00001.parquet")
