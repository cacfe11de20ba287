"""Training data of a run: the built-in gym, or preference files (pojax's formats, or the
upstream layouts of HH-RLHF, UltraFeedback-binarized and kto-mix through their TFDS builders)
tokenized with the model's tokenizer, as in-memory arrays (SFT rows, preference rows, held-out
rows) that the grain pipeline batches."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
from absl import logging

from pojax.config import SCORED_LOSSES, ConfigError
from pojax.data import formats, tokenize
from pojax.data import gym as gym_lib
from pojax.data.pipeline import curriculum_order, label_subsample, split_eval
from pojax.losses import input_kind

# data.format -> how its rows are tokenized (pojax.data.tokenize.encode)
FILE_FORMATS = {"paired": "paired", "step": "step", "hh_rlhf": "paired", "ultrafeedback_binarized": "paired",
                "unpaired": "unpaired", "kto_mix": "unpaired", "ranked": "ranked", "sft": "sft"}
# upstream dataset layouts, prepared by their TFDS builders: data.format -> (train split, test split)
UPSTREAM_SPLITS = {"hh_rlhf": ("train", "test"), "ultrafeedback_binarized": ("train_prefs", "test_prefs"),
                   "kto_mix": ("train", "test")}


@dataclasses.dataclass
class RunData:
    vocab_size: int | None
    sft: dict | None  # input_ids / completion_mask rows for the SFT stage
    preference: dict  # paired or unpaired rows
    held_out: dict | None  # preference rows kept for evaluation (a seeded random subset for files)
    gym: gym_lib.Gym | None = None
    # rows tokenize.encode dropped because the prompt alone fills data.max_length (TRL's filter):
    # {"dropped_rows": n[, "dropped_rows_test": n of the upstream test split]}, for results.json
    dropped_rows: dict = dataclasses.field(default_factory=dict)


def _with_kl(rows: dict) -> dict:
    """Unpaired rows get their mismatched (KL) twins once, in dataset order, as TRL pairs them,
    so precomputed reference log-probs of the twins stay valid for every batch."""
    if "label" in rows:
        rows = dict(rows)
        rows["kl_ids"], rows["kl_mask"] = tokenize.mismatched(rows["input_ids"], rows["completion_mask"])
    return rows


def _scored(config) -> bool:
    """Whether the loss reads per-pair scores (madpo's margins, curry_dpo's order)."""
    name = config.loss.name
    parts = [p.strip() for p in name.split("+")] if isinstance(name, str) else list(name)
    return any(p in SCORED_LOSSES for p in parts)


def with_reward_margin(rows: dict | None) -> dict | None:
    """Rows with score_chosen / score_rejected [N] gain MADPO's reward_margin [N] float32 =
    score_chosen − score_rejected (arXiv 2510.05342: h = r(x, y_w) − r(x, y_l)), computed once
    here and carried in every batch; other rows come back unchanged."""
    if rows is None or "score_chosen" not in rows:
        return rows
    margin = np.asarray(rows["score_chosen"], np.float32) - np.asarray(rows["score_rejected"], np.float32)
    return dict(rows, reward_margin=margin)


def _prepared(rows: dict | None) -> dict | None:
    """Preference rows as batches read them: unpaired rows with their KL twins, scored pairs
    with their reward margins."""
    return None if rows is None else with_reward_margin(_with_kl(rows))


def curriculum(rows: dict, seed: int) -> dict:
    """Curry-DPO's data order (arXiv 2403.07230): the rows sorted easy → hard by their score
    gap score_chosen − score_rejected, largest first (``pipeline.curriculum_order``); read in
    this order (no shuffle) the stream is the curriculum, repeated each epoch."""
    if "score_chosen" not in rows:
        raise ConfigError("loss.name", "'curry_dpo' orders pairs by score gap, but the rows have no "
                          "score_chosen / score_rejected")
    order = curriculum_order(rows["score_chosen"] - rows["score_rejected"], seed)
    return {k: v[order] for k, v in rows.items()}


def gym_data(config) -> RunData:
    gym = gym_lib.from_config(config)
    seed, n = config.train.seed, config.data.gym.num_train
    kind = {"unpaired": "unpaired", "ranked": "ranked"}.get(input_kind(config.loss.name), "paired")
    scores = _scored(config) and kind == "paired"
    pref = subsampled(gym_lib.training_rows(gym, kind, seed + 2, n, config.data.gym.label_noise, scores=scores),
                      config)
    held = (gym_lib.training_rows(gym, kind, seed + 5, config.eval.num_examples, scores=scores)
            if config.eval.num_examples > 0 else None)
    sft = gym_lib.training_rows(gym, "sft", seed, n) if config.train.sft_steps > 0 else None
    return RunData(gym.vocab_size, sft, _prepared(pref), _prepared(held), gym)


def _tfds_dir(config) -> str:
    return os.path.expanduser(config.data.tfds_dir or os.path.join("~", "tensorflow_datasets"))


def _read(config) -> tuple[list[dict], list[dict] | None]:
    """(training rows, the upstream test split's rows or None), normalized (pojax.data.formats).
    Upstream layouts go through their TFDS builder (array_record under data.tfds_dir, prepared
    once); pojax's own formats are read straight from the file or directory."""
    fmt = config.data.format
    if fmt not in FILE_FORMATS:
        raise ConfigError("data.format", f"{fmt!r} files cannot be trained on yet; use one of "
                          f"{', '.join(FILE_FORMATS)} (or gym)")
    if not config.data.path:
        raise ConfigError("data.path", f"data.format={fmt!r} needs a file or directory")
    if fmt not in UPSTREAM_SPLITS:
        return formats.load(config.data.path, fmt, skip_bad_rows=config.data.skip_bad_rows), None
    from pojax.data import builders  # TFDS is imported only for upstream layouts

    if not os.path.exists(config.data.path):
        raise formats.DataError.missing(config.data.path)
    splits = builders.prepare(fmt, config.data.path, _tfds_dir(config), skip_bad_rows=config.data.skip_bad_rows)
    train_split, test_split = UPSTREAM_SPLITS[fmt]
    if train_split not in splits:
        raise formats.DataError(config.data.path, 0, "-", f"no {train_split!r} split found in the {fmt} layout")
    read = lambda src: [src[i] for i in range(len(src))]
    return read(splits[train_split]), read(splits[test_split]) if test_split in splits else None


def row_format(config) -> str:
    """How data.format's rows are trained on: its own kind, except paired rows under an unpaired
    loss (kto, bco, ...), which are unpaired (``formats.unpair``: chosen desirable, rejected not)."""
    fmt = FILE_FORMATS[config.data.format]
    if fmt == "paired" and input_kind(config.loss.name) == "unpaired":
        return "unpaired"
    if fmt == "ranked" and config.loss.name == "curry_dpo":  # Curry-DPO's pairs (formats.ranked_pairs)
        return "paired"
    return fmt


def _score_arrays(rows: list[dict], path: str) -> dict:
    """score_chosen / score_rejected [N] float32 of normalized paired rows; a row without them is
    a DataError naming it (madpo and curry_dpo read every pair's scores)."""
    out = {"score_chosen": [], "score_rejected": []}
    for i, row in enumerate(rows):
        for field, values in out.items():
            if field not in row:
                raise formats.DataError(path, i, field, "missing: losses madpo and curry_dpo read score_chosen and "
                                        "score_rejected (numbers, e.g. reward-model or rating scores) of every pair")
            values.append(row[field])
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def _file_arrays(config, tokenizer) -> tuple[str, dict, dict | None]:
    """(row format, tokenized training rows, tokenized upstream test rows or None, dropped-row
    counts: RunData.dropped_rows); scored losses (madpo, curry_dpo) also get score_chosen /
    score_rejected [N] of each kept pair."""
    train, test = _read(config)
    fmt = row_format(config)
    if fmt == "unpaired" and FILE_FORMATS[config.data.format] == "paired":
        logging.info("%s: paired rows unpaired for loss %s (chosen → desirable, rejected → undesirable)",
                     config.data.path, config.loss.name)
        train, test = formats.unpair(train), None if test is None else formats.unpair(test)
    elif fmt == "paired" and FILE_FORMATS[config.data.format] == "ranked":
        logging.info("%s: ranked rows paired (best vs each lower-scored response) for loss %s",
                     config.data.path, config.loss.name)
        train, test = formats.ranked_pairs(train), None if test is None else formats.ranked_pairs(test)
    reports = {"train": {}, "test": {}}
    encode = lambda rows, split: tokenize.encode(
        rows, fmt, tokenizer, max_prompt_length=config.data.max_prompt_length,
        max_completion_length=config.data.max_completion_length, max_length=config.data.get("max_length", 0),
        truncation_mode=config.data.get("truncation_mode", "keep_start"), chat_template=config.data.chat_template,
        completion_end=config.data.get("completion_end", "eos"), report=reports[split])
    try:
        arrays, test_arrays = encode(train, "train"), None if test is None else encode(test, "test")
    except ConfigError:
        raise
    except ValueError as e:
        key = "data.completion_end" if "data.completion_end" in str(e) else "data.chat_template"
        raise ConfigError(key, str(e).removeprefix(f"config key {key}: ")) from None
    if _scored(config) and fmt == "paired":  # the kept rows' scores (rows whose prompt fills max_length are dropped)
        arrays.update(_score_arrays([train[i] for i in reports["train"]["kept_index"]], config.data.path))
        if test is not None:
            test_arrays.update(_score_arrays([test[i] for i in reports["test"]["kept_index"]],
                                             f"{config.data.path} (test split)"))
    dropped = {"dropped_rows": reports["train"]["dropped_rows"]}
    if test is not None:
        dropped["dropped_rows_test"] = reports["test"]["dropped_rows"]
    return fmt, arrays, test_arrays, dropped


def _sft_rows(fmt: str, rows: dict) -> dict:
    """SFT rows of preference data: the chosen completions (paired) or the desirable ones."""
    if fmt in ("paired", "step"):
        return {"input_ids": rows["chosen_ids"], "completion_mask": rows["chosen_mask"]}
    if fmt == "ranked":  # the best-scored response of each prompt
        best = np.argmax(np.where(rows.get("rank_mask", True), rows["scores"], -np.inf), axis=1)
        pick = lambda x: x[np.arange(len(best)), best]
        return {"input_ids": pick(rows["input_ids"]), "completion_mask": pick(rows["completion_mask"])}
    keep = rows["label"]
    return {"input_ids": rows["input_ids"][keep], "completion_mask": rows["completion_mask"][keep]}


def _subset(rows: dict, n: int, seed: int) -> dict:
    """A seeded random subset of ``n`` rows (all of them when there are fewer)."""
    total = len(next(iter(rows.values())))
    keep = np.sort(np.random.default_rng([seed, 6]).permutation(total)[:n])
    return {k: v[keep] for k, v in rows.items()}


def subsampled(rows: dict, config) -> dict:
    """The unpaired training rows kept by data.desirable_fraction / undesirable_fraction (the
    ELBO-KTO authors' n_D / n_U, ``pipeline.label_subsample``, seeded by data.subsample_seed), in
    row order; every row when both are 1 (and for rows without labels)."""
    d = config.data
    fd, fu = d.get("desirable_fraction", 1.0), d.get("undesirable_fraction", 1.0)
    if "label" not in rows or (fd == 1 and fu == 1):
        return rows
    keep = label_subsample(rows["label"], fd, fu, d.get("subsample_seed", 42))
    label = np.asarray(rows["label"], bool)
    logging.info("data.desirable_fraction=%s, data.undesirable_fraction=%s: %d of %d desirable and %d of %d "
                 "undesirable rows kept", fd, fu, int(label[keep].sum()), int(label.sum()),
                 int((~label[keep]).sum()), int((~label).sum()))
    return {k: v[keep] for k, v in rows.items()}


def split_rows(arrays: dict, test: dict | None, *, num_examples: int, seed: int) -> tuple[dict, dict | None]:
    """(training rows, held-out rows or None) of a file's tokenized rows, the one split that
    training (``file_data``) and evaluation (``eval_data``) share: with an upstream test split
    ``test``, every file row trains and a seeded random ``num_examples`` of the test rows are
    held out; else the rows in a seeded order (rng [seed, 5]) whose last ``num_examples`` are
    held out, or none when there are at most 2 · num_examples rows."""
    if test is not None:
        return arrays, _subset(test, num_examples, seed) if num_examples > 0 else None
    order = np.random.default_rng([seed, 5]).permutation(len(next(iter(arrays.values()))))
    return split_eval({k: v[order] for k, v in arrays.items()}, num_examples)


def file_data(config, tokenizer) -> RunData:
    """Training rows of data.path; held out (``split_rows``): eval.num_examples rows of the
    upstream test split when the layout has one, else a seeded random subset of the file's rows."""
    fmt, arrays, test, dropped = _file_arrays(config, tokenizer)
    train, held = split_rows(arrays, test, num_examples=config.eval.num_examples, seed=config.train.seed)
    train = subsampled(train, config)  # after the split: the held-out rows stay those of the full data
    if held is None and test is None and config.eval.num_examples > 0:
        n = len(next(iter(arrays.values())))
        logging.warning("%s: %d rows are too few to hold out eval.num_examples=%d (needs more than %d); "
                        "no evaluation split", config.data.path, n, config.eval.num_examples,
                        2 * config.eval.num_examples)
    sft = _sft_rows(fmt, train) if config.train.sft_steps > 0 else None
    return RunData(None, sft, _prepared(train), _prepared(held), dropped_rows=dropped)


def eval_data(config, tokenizer) -> tuple[RunData, dict]:
    """Evaluation rows (task = "eval") of data.path and what they are: with eval.split =
    "held_out" the rows a training run on the same file with the same train.seed and
    eval.num_examples held out (``split_rows``: of the upstream test split for hh_rlhf /
    ultrafeedback_binarized / kto_mix), with "all" every row of the test split or of the file.
    The dict says which: eval_split ("held_out" | "all"), eval_source ("test split" | "file")
    and eval_source_rows (the rows there)."""
    _, arrays, test, dropped = _file_arrays(config, tokenizer)
    source = arrays if test is None else test
    info = {"eval_split": config.eval.split, "eval_source": "file" if test is None else "test split",
            "eval_source_rows": len(next(iter(source.values())))}
    if config.eval.split == "all":
        return RunData(None, None, {}, _prepared(source), dropped_rows=dropped), info
    _, held = split_rows(arrays, test, num_examples=config.eval.num_examples, seed=config.train.seed)
    if held is None:
        raise ConfigError("eval.split", f"'held_out': {config.data.path} has {info['eval_source_rows']} rows, too few "
                          f"for training to hold out eval.num_examples={config.eval.num_examples} (it needs more than "
                          f"{2 * config.eval.num_examples} and eval.num_examples > 0); set eval.split=all to score "
                          "every row")
    return RunData(None, None, {}, _prepared(held), dropped_rows=dropped), info


def sft_data(config, tokenizer) -> RunData:
    """SFT rows (task = "sft"): the gym's SFT set, or the chosen / desirable completions of
    data.path."""
    if config.data.format == "gym":
        gym = gym_lib.from_config(config)
        return RunData(gym.vocab_size, gym_lib.training_rows(gym, "sft", config.train.seed, config.data.gym.num_train),
                       {}, None, gym)
    if config.data.format == "sft":
        return _sft_file(config, tokenizer)
    fmt, arrays, _, dropped = _file_arrays(config, tokenizer)
    rows = _sft_rows(fmt, arrays)
    if not len(rows["input_ids"]):
        raise ConfigError("data.path", f"{config.data.path}: no desirable (label = true) rows to fine-tune on")
    return RunData(None, rows, {}, None, dropped_rows=dropped)


def _sft_file(config, tokenizer) -> RunData:
    """SFT rows of a data.format=sft file, tokenized as TRL's SFTTrainer does (pojax.data.sft)."""
    from pojax.data import sft

    rows, _ = _read(config)
    report = {}
    arrays = sft.encode(rows, tokenizer, width=tokenize.row_width(config.data.max_prompt_length,
                                                                  config.data.max_completion_length, config.data.max_length),
                        truncation_mode=config.data.truncation_mode, completion_only_loss=config.data.completion_only_loss,
                        assistant_only_loss=config.data.assistant_only_loss, chat_template=config.data.chat_template,
                        path=config.data.path, report=report)
    if report["dropped_rows"]:
        logging.warning("%s: dropped %d of %d rows left with no token to train on at data.max_length (as TRL drops "
                        "them)", config.data.path, report["dropped_rows"], len(rows))
    return RunData(None, arrays, {}, None, dropped_rows={"dropped_rows": report["dropped_rows"]})


def pretrain_data(config, tokenizer) -> RunData:
    """Language-modeling rows (task = "pretrain"): every token of the gym's sequences, or the
    ``text`` column of data.path's rows (tokenized, EOS appended, truncated / right-padded to
    data.max_prompt_length + data.max_completion_length). completion_mask marks the real tokens:
    all of them are trained on (next-token NLL, or LLaDA's masked-diffusion loss)."""
    if config.data.format == "gym":
        gym = gym_lib.from_config(config)
        rows = gym_lib.training_rows(gym, "sft", config.train.seed, config.data.gym.num_train)
        return RunData(gym.vocab_size, {"input_ids": rows["input_ids"],
                                        "completion_mask": np.ones(rows["input_ids"].shape, bool)}, {}, None, gym)
    if not config.data.path:
        raise ConfigError("data.path", "task 'pretrain' needs a file of rows with a 'text' field (or data.format=gym)")
    width = tokenize.row_width(config.data.max_prompt_length, config.data.max_completion_length,
                               config.data.get("max_length", 0))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids, masks = [], []
    for file, i, row in formats.read_rows(config.data.path):
        if isinstance(row, formats.DataError):
            raise row
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"]:
            raise formats.DataError(file, i, "text", "missing or empty (pretraining reads a 'text' string)")
        tokens = tokenizer(row["text"])["input_ids"] + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
        tokens = tokens[:width]
        out, mask = np.full(width, pad, np.int32), np.zeros(width, bool)
        out[:len(tokens)], mask[:len(tokens)] = tokens, True
        ids.append(out)
        masks.append(mask)
    if not ids:
        raise formats.DataError(config.data.path, None, None, "no rows")
    return RunData(None, {"input_ids": np.stack(ids), "completion_mask": np.stack(masks)}, {}, None)


def packed(rows: dict, config, rows_per_batch: int) -> tuple[dict, float]:
    """Paired rows packed into batches of ``rows_per_batch`` rows of data.packed_length tokens
    (pojax.data.packing), stacked: {key: [num_batches, ...]}, and the packing efficiency
    (non-padding tokens / all tokens). Precomputed reference sums travel as per-pair extras."""
    from pojax.data import packing

    width = rows["chosen_ids"].shape[1]
    length = config.data.packed_length or 2 * width
    extras = {k: rows[k] for k in ("ref_chosen", "ref_rejected") if k in rows} or None
    try:
        batches, efficiency = packing.pack_dataset(packing.pairs_from_arrays(rows), num_rows=rows_per_batch,
                                                   row_length=length, max_segments=config.data.max_segments,
                                                   extras=extras)
    except packing.PackingError as e:
        raise ConfigError("data.packed_length", str(e)) from None
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}, efficiency
