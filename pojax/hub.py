"""Hugging Face Hub ids where pojax reads a model or a dataset: ``Qwen/Qwen2.5-0.5B-Instruct``,
``trl-lib/ultrafeedback_binarized@main`` (an optional ``@revision``: a branch, tag or commit).

An id resolves through ``huggingface_hub.snapshot_download`` to its snapshot directory in the Hub
cache, with everything that library honours: ``HF_HOME`` / ``HF_HUB_CACHE`` (where the cache is),
``HF_HUB_OFFLINE=1`` (the cache only, no network), ``HF_TOKEN`` (gated and private repos). A path
that exists on disk, a ``gs://`` path and an empty value are left as they are; so is anything that
is not shaped like an id (``org/name``, no leading ``/``, ``.`` or ``~``).

Model keys (``MODEL_KEYS``) resolve to model repos. ``data.path`` resolves to a dataset repo, and
then to what pojax's readers take: the repo directory for the upstream layouts
(``data.format`` hh_rlhf | ultrafeedback_binarized | kto_mix: their TFDS builders find the split
files), else the train split's files (``data/train-*`` or ``train*`` files of the repo: one file,
or the directory holding only them), as TRL's ``load_dataset(name, split="train")`` reads it.
"""
from __future__ import annotations

import glob
import os
import re

from pojax.config import ConfigError
from pojax.preflight import MODEL_DIR_KEYS

MODEL_KEYS = MODEL_DIR_KEYS + ("data.tokenizer",)  # keys that name a model repo (a tokenizer is one's files)
DATASET_KEYS = ("data.path",)
UPSTREAM_LAYOUTS = ("hh_rlhf", "ultrafeedback_binarized", "kto_mix")
_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")


def parse_id(value: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when ``value`` is shaped like a Hub id, else None."""
    m = _ID.match(value or "")
    return (m["repo"], m["revision"]) if m else None


def is_hub_id(value) -> bool:
    """A string shaped like a Hub id that is not a path on this disk (nor gs://)."""
    return (isinstance(value, str) and parse_id(value) is not None and not value.startswith("gs://")
            and not os.path.exists(os.path.expanduser(value)))


def snapshot(key: str, value: str, repo_type: str) -> str:
    """The local snapshot directory of the Hub id ``value`` (downloaded unless HF_HUB_OFFLINE);
    ConfigError naming ``key``, the id and the cache when it cannot be had."""
    import huggingface_hub
    from huggingface_hub import constants, errors

    repo, revision = parse_id(value)
    try:
        return huggingface_hub.snapshot_download(repo, revision=revision, repo_type=repo_type)
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as e:
        offline = " with HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else " (no network?)"
        kind = "dataset " if repo_type == "dataset" else ""
        raise ConfigError(key, f"{value}: this Hugging Face {kind}id is not in the Hub cache ({constants.HF_HUB_CACHE})"
                          f"{offline}; download it first (huggingface-cli download {'--repo-type dataset ' * bool(kind)}"
                          f"{repo}{f' --revision {revision}' if revision else ''}) or pass a local path") from e
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.GatedRepoError) as e:
        raise ConfigError(key, f"{value}: {type(e).__name__} on the Hugging Face Hub (a typo, a private or gated repo "
                          "without HF_TOKEN, or a revision that does not exist)") from e


def dataset_files(key: str, repo_dir: str, fmt: str, value: str) -> str:
    """What pojax reads of a dataset repo (module docstring): the repo for the upstream layouts,
    else its train split's file or directory."""
    if fmt in UPSTREAM_LAYOUTS:
        return repo_dir
    for pattern in ("data/train-*", "data/train.*", "train-*", "train.*", "data/train/*", "train/*"):
        files = sorted(f for f in glob.glob(os.path.join(repo_dir, pattern)) if os.path.isfile(f))
        if len(files) == 1:
            return files[0]
        if files and len(set(map(os.path.dirname, files))) == 1:
            folder = os.path.dirname(files[0])
            if sorted(f for f in glob.glob(os.path.join(folder, "*")) if os.path.isfile(f)) == files:
                return folder
            raise ConfigError(key, f"{value}: the train split's files ({', '.join(map(os.path.basename, files))}) share "
                              f"{folder} with other files; pass that directory's train files as a local path")
    raise ConfigError(key, f"{value}: no train split in the dataset repo ({repo_dir}: no data/train-* or train.* "
                      "file); pass the file to train on as a local path")


def resolve(config) -> dict:
    """Replaces every Hub id among ``config``'s model and data keys by its local path, in place;
    returns {key: (id, local path)} of what it replaced."""
    done = {}
    for key in MODEL_KEYS + DATASET_KEYS:
        section, _, field = key.partition(".")
        value = config[section].get(field) if section in config else None
        if not is_hub_id(value):
            continue
        if key in DATASET_KEYS:
            if config.data.format == "gym":
                continue
            local = dataset_files(key, snapshot(key, value, "dataset"), config.data.format, value)
        else:
            local = snapshot(key, value, "model")
        with config.unlocked():
            config[section][field] = local
        done[key] = (value, local)
    return done
