"""Training data of a run: the built-in gym or preference files tokenized with the model's
tokenizer, as in-memory arrays (SFT rows, preference rows, held-out rows)."""
from __future__ import annotations

import dataclasses

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
    held_out: dict | None  # preference rows kept for evaluation
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
    sft = gym_lib.training_rows(gym, "sft", seed, n) if config.train.sft_steps > 0 else None
    return RunData(gym.vocab_size, sft, _with_kl(pref), None, gym)


def file_data(config, tokenizer) -> RunData:
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
    train, held = split_eval(arrays, config.eval.num_examples)
    sft = None
    if config.train.sft_steps > 0:
        if fmt != "paired":
            raise ConfigError("train.sft_steps", "an SFT stage needs paired data (it trains on the chosen completions)")
        sft = {"input_ids": train["chosen_ids"], "completion_mask": train["chosen_mask"]}
    return RunData(None, sft, _with_kl(train), None if held is None else _with_kl(held))
