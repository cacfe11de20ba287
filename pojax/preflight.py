"""Checks ``python -m pojax.main`` makes before anything heavy runs: where the run goes (one
absolute workdir), whether the paths of the config exist, and whether an existing workdir may be
resumed with this config.

Every check raises ``ConfigError`` (one line naming the key) so that a mistake costs a second,
not a traceback after minutes of compilation.
"""
from __future__ import annotations

import json
import os
import re
import shutil

from pojax import fs
from pojax.config import ConfigError

DEFAULT_WORKDIR = os.path.join("workdirs", "run")

# Tasks that train and checkpoint: rerunning one on a workdir resumes it.
TRAINING_TASKS = ("train", "sft", "pretrain", "diffpo")

# Keys that do not change what a resumed run trains: where and how often it writes, how it is
# evaluated, how it is laid out on devices (checkpoints move between meshes) and how the
# arithmetic is tiled. Everything else must equal the stored config.json for a run to resume.
RESUMABLE_PREFIXES = ("logging.", "export.", "distributed.", "mesh.", "checkpoint.", "eval.")
RESUMABLE_KEYS = ("train.overwrite", "train.nan_policy", "train.export_final", "train.preemption_signals",
                  "train.step_timeout_s", "likelihood.chunk_size",
                  "likelihood.vocab_chunk_size", "model.remat", "data.tfds_dir", "optimizer.offload")
NOT_RESUMABLE_KEYS = ("eval.num_examples",)  # under eval., but it picks the held-out rows

# What a run writes into its workdir; ``train.overwrite`` removes these and nothing else.
RUN_OUTPUTS = ("config.json", "results.json", "results.md", "checkpoints", "tensorboard", "plots", "final", "wandb",
               "wandb_run_id", "lm_eval_results.json", "memory.json")
RUN_OUTPUT_PATTERNS = (r"metrics(_\w+)?\.jsonl", r"config_\w+\.json")

# Config keys naming Hugging Face model directories and data files, checked when set.
MODEL_DIR_KEYS = ("model.path", "reference.path", "reference.guide_path", "eval.judge_path", "eval.reward_model_path")
DATA_PATH_KEYS = ("data.path", "data.tokenizer", "eval.prompts_path", "eval.gsm8k_path", "eval.mmlu_path",
                  "eval.jsonl_path", "eval.gsm8k_fewshot_path", "eval.mmlu_fewshot_path", "diffpo.eval_path")


def absolute_workdir(workdir: str | None) -> str:
    """``workdir`` (default ``workdirs/run``) as an absolute local path, resolved once against
    the current directory; a ``gs://`` URL is returned as it is. orbax refuses relative paths."""
    workdir = workdir or DEFAULT_WORKDIR
    return workdir if fs.is_remote(workdir) else os.path.abspath(os.path.expanduser(workdir))


def _get(config, key: str):
    node = config
    for part in key.split("."):
        if part not in node:
            return None
        node = node[part]
    return node


def path_problems(config) -> list[ConfigError]:
    """One ConfigError per path key of ``config`` that is set but unusable: a model directory
    that does not exist or holds no config.json (a Hub id gets the command that downloads it:
    nothing here reaches the Hub), a data file or tokenizer directory that does not exist.
    Remote (gs://) paths are left to their readers."""
    problems = []
    files = config.data.format != "gym" and config.task in ("train", "sft", "pretrain", "eval")
    if files and not config.model.path and not config.data.tokenizer or (
            config.task == "diffpo" and _get(config, "diffpo.trajectory_source") not in (None, "gym")
            and not config.model.path):
        problems.append(ConfigError("model.path", f"data.format={config.data.format!r} needs a Hugging Face model "
                                    "directory (model and tokenizer): set --config.model.path=DIR"))
    if files and config.task != "eval" and not config.data.path:
        problems.append(ConfigError("data.path", f"data.format={config.data.format!r} reads files: set "
                                    "--config.data.path=FILE_OR_DIR (or data.format=gym for the built-in gym)"))
    for key in MODEL_DIR_KEYS + DATA_PATH_KEYS:
        path = _get(config, key)
        if not isinstance(path, str) or not path or fs.is_remote(path):
            continue
        local = os.path.expanduser(path)
        if not os.path.exists(local):  # (a Hub id was resolved to its snapshot before: pojax.hub)
            problems.append(ConfigError(key, f"no such file or directory: {path}"))
        elif key in MODEL_DIR_KEYS and not os.path.isfile(os.path.join(local, "config.json")):
            what = "a file" if os.path.isfile(local) else "a directory without config.json"
            problems.append(ConfigError(key, f"{path} is {what}, not a Hugging Face model directory "
                                        "(config.json, *.safetensors, tokenizer files)"))
    return problems


def check_paths(config) -> None:
    """Raises one ConfigError listing every unusable path of ``config`` (see path_problems)."""
    problems = path_problems(config)
    if problems:
        err = problems[0]
        if len(problems) > 1:
            err = ConfigError(err.key, "; ".join(map(str, problems)).removeprefix(f"config key {err.key}: "))
        raise err


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} → {"a.b": 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_as_json(config) -> dict:
    """The config as config.json stores it (tuples as lists)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def training_relevant(key: str) -> bool:
    if key in NOT_RESUMABLE_KEYS:
        return True
    return not (key in RESUMABLE_KEYS or key.startswith(RESUMABLE_PREFIXES))


def resume_conflicts(stored: dict, current: dict) -> list[str]:
    """The training-relevant keys whose values differ between a workdir's stored config.json
    and this run's config, as ``key: stored → current`` (sorted)."""
    old, new = flatten(stored), flatten(current)
    missing = object()
    return [f"{k}: {old.get(k, '(unset)')!r} → {new.get(k, '(unset)')!r}" for k in sorted(set(old) | set(new))
            if training_relevant(k) and old.get(k, missing) != new.get(k, missing)]


def has_checkpoints(workdir: str) -> bool:
    """Whether ``workdir/checkpoints`` holds a stage's checkpoint a rerun would restore (not
    just ``checkpoints/model``, the run's spec written at start-up: pojax.train.run_spec)."""
    path = fs.join(workdir, "checkpoints")
    if fs.is_remote(workdir):
        from etils import epath

        root = epath.Path(path)
        return root.is_dir() and any(p.is_dir() and any(p.iterdir()) for p in root.iterdir() if p.name != "model")
    return os.path.isdir(path) and any(e.is_dir() and e.name != "model" and any(os.scandir(e.path))
                                       for e in os.scandir(path))


def stored_config(workdir: str) -> dict | None:
    path = fs.join(workdir, "config.json")
    return json.loads(fs.read_text(path)) if fs.exists(path) else None


def check_resume(config, workdir: str) -> bool:
    """Whether a training task may run on ``workdir``: True for a fresh workdir or one whose
    stored config.json equals ``config`` on every training-relevant key (the run resumes);
    ``train.overwrite=True`` clears the previous run's outputs first. Raises ConfigError listing
    the differing keys otherwise: a changed config never reports an old run under a new name."""
    stored = stored_config(workdir)
    if stored is None or not has_checkpoints(workdir):
        return False
    if config.train.get("overwrite"):
        clear_outputs(workdir)
        return False
    conflicts = resume_conflicts(stored, config_as_json(config))
    if conflicts:
        raise ConfigError("train.overwrite", f"{workdir} holds a run with another config ({'; '.join(conflicts)}); "
                          "rerunning there resumes that run, so start afresh with a new --workdir or "
                          "--config.train.overwrite=True (deletes the run's outputs there)")
    return True


def clear_outputs(workdir: str) -> None:
    """Removes what a run wrote into ``workdir`` (RUN_OUTPUTS and metrics / config files),
    leaving anything else a user keeps there. Local workdirs only."""
    if fs.is_remote(workdir):
        raise ConfigError("train.overwrite", f"{workdir}: clearing a bucket is not supported; use a new --workdir")
    if not os.path.isdir(workdir):
        return
    for name in os.listdir(workdir):
        path = os.path.join(workdir, name)
        if name in RUN_OUTPUTS or any(re.fullmatch(p, name) for p in RUN_OUTPUT_PATTERNS):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)


def config_file(config, workdir: str) -> str:
    """Where this run writes its resolved config: ``config.json``, unless the workdir holds a
    run of another task that this one reads (eval or export of a training run), whose
    config.json stays as it is; then ``config_<task>.json``."""
    stored = stored_config(workdir)
    if stored is not None and stored.get("task") != config.task and config.task not in TRAINING_TASKS:
        return fs.join(workdir, f"config_{config.task}.json")
    return fs.join(workdir, "config.json")


def drop_unused_reference(config) -> str | None:
    """A reference-free loss (simpo, cpo, orpo, ...) trained with the default
    ``reference.mode=copy`` would pay for a frozen copy it never reads: switch the mode to
    ``none`` (in place) and return the one-line notice to print; None when nothing changed."""
    from pojax import losses
    from pojax.config import is_online

    if config.task != "train" or config.reference.mode != "copy" or is_online(config):
        return None
    if losses.needs_reference(config.loss.name):
        return None
    with config.unlocked():
        config.reference.mode = "none"
    return (f"loss {config.loss.name!r} is reference-free: reference.mode=copy → none (no reference model is built)")


def check_lm_eval() -> None:
    """ConfigError (eval.lm_eval_tasks) with the install command when lm-eval is missing."""
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError("eval.lm_eval_tasks", "needs lm-evaluation-harness: pip install -e '.[eval]' (lm-eval==0.4.13), "
                          "or leave eval.lm_eval_tasks empty")


def mesh_and_rules(config):
    """(mesh, logical-axis rules) of the config; a mesh that does not fit the devices is a
    ConfigError naming the mesh.<axis> key the user set (main checks it before anything
    compiles)."""
    from pojax import sharding

    try:
        return sharding.mesh_from_config(config), sharding.rules_from_config(config)
    except ValueError as e:
        key = re.search(r"mesh\.[\w.]+?(?==|\s|$)", str(e))
        raise ConfigError(key.group() if key else "mesh", str(e)) from None
