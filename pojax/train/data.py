"""Training data of a run: the built-in gym or preference files tokenized with the model's
tokenizer, as in-memory arrays (SFT rows, preference rows, held-out rows)."""
from __future__ import annotations

import dataclasses

import numpy as np
from absl import logging

from pojax.config import UNPAIRED_LOSSES, ConfigError
from pojax.data import formats, tokenize
from pojax.data import gym as gym_lib
from pojax.data.pipeline import split_eval

# data.format -> the row format of pojax.data.formats
FILE_FORMATS = {"paired": "paired", "ultrafeedback_binarized": "paired", "unpaired": "unpaired", "kto_mix": "unpaired"}


@dataclasses.dataclass
class RunData:
    vocab_size: int | None
    sft: dict | None  # input_ids / completion_mask rows for the SFT stage
    preference: dict  # paired or unpaired rows
    held_out: dict | None  # preference rows kept for evaluation (a seeded random subset for files)
    gym: gym_lib.Gym | None = None


def _with_kl(rows: dict) -> dict:
    """Unpaired rows get their mismatched (KL) twins once, in dataset order, as TRL pairs them,
    so precomputed reference log-probs of the twins stay valid for every batch."""
    if "label" in rows:
        rows = dict(rows)
        rows["kl_ids"], rows["kl_mask"] = tokenize.mismatched(rows["input_ids"], rows["completion_mask"])
    return rows


def gym_data(config) -> RunData:
    gym = gym_lib.from_config(config)
    seed, n = config.train.seed, config.data.gym.num_train
    kind = "unpaired" if config.loss.name in UNPAIRED_LOSSES else "paired"
    pref = gym_lib.training_rows(gym, kind, seed + 2, n, config.data.gym.label_noise)
    held = gym_lib.training_rows(gym, kind, seed + 5, config.eval.num_examples) if config.eval.num_examples > 0 else None
    sft = gym_lib.training_rows(gym, "sft", seed, n) if config.train.sft_steps > 0 else None
    return RunData(gym.vocab_size, sft, _with_kl(pref), None if held is None else _with_kl(held), gym)


def _file_arrays(config, tokenizer) -> tuple[str, dict]:
    """(row format, tokenized arrays of every row of data.path)."""
    fmt = FILE_FORMATS.get(config.data.format)
    if fmt is None:
        raise ConfigError("data.format", f"{config.data.format!r} files cannot be read yet; use one of "
                          f"{', '.join(FILE_FORMATS)} (or gym)")
    if not config.data.path:
        raise ConfigError("data.path", f"data.format={config.data.format!r} needs a file or directory")
    rows = formats.load(config.data.path, fmt, skip_bad_rows=config.data.skip_bad_rows)
    try:
        arrays = tokenize.encode(rows, fmt, tokenizer, max_prompt_length=config.data.max_prompt_length,
                                 max_completion_length=config.data.max_completion_length,
                                 chat_template=config.data.chat_template)
    except ValueError as e:
        raise ConfigError("data.chat_template", str(e)) from None
    return fmt, arrays


def _sft_rows(fmt: str, rows: dict) -> dict:
    """SFT rows of preference data: the chosen completions (paired) or the desirable ones."""
    if fmt == "paired":
        return {"input_ids": rows["chosen_ids"], "completion_mask": rows["chosen_mask"]}
    keep = rows["label"]
    return {"input_ids": rows["input_ids"][keep], "completion_mask": rows["completion_mask"][keep]}


def file_data(config, tokenizer) -> RunData:
    fmt, arrays = _file_arrays(config, tokenizer)
    order = np.random.default_rng([config.train.seed, 5]).permutation(len(next(iter(arrays.values()))))
    train, held = split_eval({k: v[order] for k, v in arrays.items()}, config.eval.num_examples)
    if held is None and config.eval.num_examples > 0:
        logging.warning("%s: %d rows are too few to hold out eval.num_examples=%d (needs more than %d); "
                        "no evaluation split", config.data.path, len(order), config.eval.num_examples,
                        2 * config.eval.num_examples)
    sft = _sft_rows(fmt, train) if config.train.sft_steps > 0 else None
    return RunData(None, sft, _with_kl(train), None if held is None else _with_kl(held))


def eval_data(config, tokenizer) -> RunData:
    """Every row of data.path as evaluation rows (task = "eval")."""
    _, arrays = _file_arrays(config, tokenizer)
    return RunData(None, None, {}, _with_kl(arrays))


def sft_data(config, tokenizer) -> RunData:
    """SFT rows (task = "sft"): the gym's SFT set, or the chosen / desirable completions of
    data.path."""
    if config.data.format == "gym":
        gym = gym_lib.from_config(config)
        return RunData(gym.vocab_size, gym_lib.training_rows(gym, "sft", config.train.seed, config.data.gym.num_train),
                       {}, None, gym)
    fmt, arrays = _file_arrays(config, tokenizer)
    rows = _sft_rows(fmt, arrays)
    if not len(rows["input_ids"]):
        raise ConfigError("data.path", f"{config.data.path}: no desirable (label = true) rows to fine-tune on")
    return RunData(None, rows, {}, None)
