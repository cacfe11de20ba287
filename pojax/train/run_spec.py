"""``<workdir>/checkpoints/model``: what a run's checkpoints are checkpoints of, written when a
training run starts, so that ``task=export`` rebuilds the network and its TrainState from the
workdir alone (no model.path, no data.path: the starting checkpoint may be gone by then).

  run_config.json         the run's config (loss, reference, optimizer: the TrainState's structure)
  model_config.json       the network's pojax ModelConfig, every field (scan_layers changes the
                          parameter tree; the special-token ids and the starting checkpoint's
                          generation_config.json go to the export)
  tokenizer files         of runs on files (data.tokenizer or model.path)

``<workdir>/config.json`` holds the same run config (pojax.main writes it, and an export or eval
in that workdir writes ``config_<task>.json`` beside it); the spec keeps its own copy next to the
checkpoints it describes, and a Python caller of run_train writes it without pojax.main.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Iterator, NamedTuple

import jax
import ml_collections

from pojax import fs
from pojax.models.config import ModelConfig

RUN_CONFIG = "run_config.json"
MODEL_CONFIG = "model_config.json"
# sections of the export's own config that win over the run's: where and what to export, and
# the devices it runs on
EXPORT_SECTIONS = ("task", "export", "mesh", "logging")
# ModelConfig fields that JSON turns from tuples into lists
_TUPLE_FIELDS = ("rope_scaling", "layer_types", "eos_token_id")


class Spec(NamedTuple):
    config: ml_collections.ConfigDict  # the run's config with the export's EXPORT_SECTIONS
    model_config: ModelConfig
    path: str  # a local dir holding the spec's files (the tokenizer of runs on files)


def spec_dir(workdir: str) -> str:
    return fs.join(workdir, "checkpoints", "model")


def model_config_dict(mc: ModelConfig) -> dict:
    return dataclasses.asdict(mc)


def model_config_from_dict(d: dict) -> ModelConfig:
    """The inverse of ``model_config_dict`` after a JSON round trip (lists back to tuples)."""
    d = dict(d)
    for key in _TUPLE_FIELDS:
        if isinstance(d.get(key), list):
            d[key] = tuple(tuple(x) if isinstance(x, list) else x for x in d[key])
    return ModelConfig(**d)


def save(workdir: str, model_config: ModelConfig, config) -> None:
    """Writes the spec of a run starting with a network of ``model_config`` (process 0 only):
    ``config`` as run_config.json, the ModelConfig, and the tokenizer of runs on files."""
    if jax.process_index() != 0:
        return
    with fs.staged_dir(spec_dir(workdir)) as local:
        with open(os.path.join(local, RUN_CONFIG), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
        with open(os.path.join(local, MODEL_CONFIG), "w") as f:
            json.dump(model_config_dict(model_config), f, indent=2)
        if config.data.format != "gym":
            from transformers import AutoTokenizer

            path = config.data.tokenizer or config.model.path
            AutoTokenizer.from_pretrained(path, trust_remote_code=False).save_pretrained(local)


@contextlib.contextmanager
def load(workdir: str, export_config) -> Iterator[Spec | None]:
    """The spec of ``workdir`` (None when it has none: a workdir of an older pojax), its run
    config carrying ``export_config``'s EXPORT_SECTIONS; a remote spec is read from a local copy
    that lasts as long as the block."""
    path = spec_dir(workdir)
    if not fs.exists(fs.join(path, MODEL_CONFIG)):
        yield None
        return
    with _local(path) as local:
        with open(os.path.join(local, RUN_CONFIG)) as f:
            run = json.load(f)
        with open(os.path.join(local, MODEL_CONFIG)) as f:
            mc = model_config_from_dict(json.load(f))
        mine = export_config.to_dict()
        run.update({k: mine[k] for k in EXPORT_SECTIONS if k in mine})
        yield Spec(ml_collections.ConfigDict(run), mc, local)


@contextlib.contextmanager
def _local(path: str) -> Iterator[str]:
    if not fs.is_remote(path):
        yield path
        return
    from etils import epath

    with tempfile.TemporaryDirectory(prefix="pojax-spec-") as local:
        for item in epath.Path(path).iterdir():
            with item.open("rb") as src, open(os.path.join(local, item.name), "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 24)
        yield local
