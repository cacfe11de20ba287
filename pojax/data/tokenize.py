"""Normalized rows (pojax.data.formats) → fixed-shape token arrays, with a transformers tokenizer.

The prompt goes through the tokenizer's chat template (``apply_chat_template`` with the
generation prompt) when it has one, else a plain prompt/completion fallback (the prompt text and
the tokenizer's own special tokens). Completions are the plain tokens of the text plus EOS.
Truncation follows TRL: prompts keep their end (``max_prompt_length``), completions their start
(``max_completion_length``). Rows are right-padded to max_prompt_length + max_completion_length.

A row with a ``prefix`` string (the "step" format: a partial answer that both completions
continue) has the prefix's plain tokens appended to the prompt, after the chat template's
generation prompt; they count as prompt (truncated with it, outside the completion mask).
"""
from __future__ import annotations

import numpy as np

CHAT_TEMPLATE_MODES = ("auto", "yes", "no")


def use_chat_template(tokenizer, mode: str) -> bool:
    """Whether to format prompts with the tokenizer's chat template (mode: auto | yes | no)."""
    if mode not in CHAT_TEMPLATE_MODES:
        raise ValueError(f"config key data.chat_template: {mode!r} is not one of {', '.join(CHAT_TEMPLATE_MODES)}")
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "yes" and not has:
        raise ValueError("config key data.chat_template: 'yes', but the tokenizer has no chat template "
                         "(set data.chat_template=auto or no for the plain prompt/completion format)")
    return has and mode != "no"


def prompt_ids(tokenizer, row: dict, chat: bool) -> list[int]:
    if chat:
        text = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    text = row.get("prompt_text") or "\n".join(m["content"] for m in row["prompt"])
    return tokenizer(text)["input_ids"]


def completion_ids(tokenizer, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def context_ids(tokenizer, row: dict, chat: bool) -> list[int]:
    """The tokens before a completion: ``prompt_ids`` plus the plain tokens of the row's
    ``prefix`` (step rows), if it has one."""
    ids = prompt_ids(tokenizer, row, chat)
    if row.get("prefix"):
        ids = ids + tokenizer(row["prefix"], add_special_tokens=False)["input_ids"]
    return ids


def _truncate(p: list[int], c: list[int], max_prompt: int, max_completion: int) -> tuple[list[int], list[int]]:
    # keep the prompt's end, the completion's start (TRL); `[-0:]` would keep everything
    return (p[-max_prompt:] if max_prompt else []), c[:max_completion]


def _row(p: list[int], c: list[int], max_prompt: int, max_completion: int, pad: int):
    p, c = _truncate(p, c, max_prompt, max_completion)
    width = max_prompt + max_completion
    ids = np.full(width, pad, np.int32)
    mask = np.zeros(width, bool)
    ids[: len(p) + len(c)] = p + c
    mask[len(p): len(p) + len(c)] = True
    return ids, mask


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def encode(rows: list[dict], fmt: str, tokenizer, *, max_prompt_length: int, max_completion_length: int,
           chat_template: str = "auto") -> dict:
    """Batch-ready arrays, T = max_prompt_length + max_completion_length:

      paired, step  chosen_ids / rejected_ids [N, T] int32, chosen_mask / rejected_mask [N, T] bool
                    (step rows: prompt + prefix + completion, the prefix outside the masks)
      unpaired      input_ids [N, T] int32, completion_mask [N, T] bool, label [N] bool
      ranked        input_ids [N, K, T] int32, completion_mask [N, K, T] bool, scores [N, K]
                    float32, rank_mask [N, K] bool; K = the most completions of any row, the
                    missing ones all padding with score 0 and rank_mask False
    """
    chat = use_chat_template(tokenizer, chat_template)
    pad = _pad_id(tokenizer)
    kw = dict(max_prompt=max_prompt_length, max_completion=max_completion_length, pad=pad)
    if fmt == "ranked":
        return _encode_ranked(rows, tokenizer, chat, **kw)
    cols: dict[str, list] = {}

    def add(name, value):
        cols.setdefault(name, []).append(value)

    for row in rows:
        p = context_ids(tokenizer, row, chat)
        if fmt in ("paired", "step"):
            for side in ("chosen", "rejected"):
                ids, mask = _row(p, completion_ids(tokenizer, row[side]), **kw)
                add(f"{side}_ids", ids)
                add(f"{side}_mask", mask)
        elif fmt == "unpaired":
            ids, mask = _row(p, completion_ids(tokenizer, row["completion"]), **kw)
            add("input_ids", ids)
            add("completion_mask", mask)
            add("label", row["label"])
        else:
            raise ValueError(f"encode: format {fmt!r} is not supported yet (paired, step, unpaired, ranked)")
    return {k: np.stack(v) if k != "label" else np.asarray(v, bool) for k, v in cols.items()}


def _encode_ranked(rows: list[dict], tokenizer, chat: bool, *, max_prompt: int, max_completion: int, pad: int) -> dict:
    n, k, width = len(rows), max((len(r["completions"]) for r in rows), default=0), max_prompt + max_completion
    out = {"input_ids": np.full((n, k, width), pad, np.int32), "completion_mask": np.zeros((n, k, width), bool),
           "scores": np.zeros((n, k), np.float32), "rank_mask": np.zeros((n, k), bool)}
    for i, row in enumerate(rows):
        p = context_ids(tokenizer, row, chat)
        if len(row["scores"]) != len(row["completions"]):
            raise ValueError(f"encode: ranked row {i} has {len(row['completions'])} completions and "
                             f"{len(row['scores'])} scores")
        for j, (text, score) in enumerate(zip(row["completions"], row["scores"])):
            out["input_ids"][i, j], out["completion_mask"][i, j] = _row(p, completion_ids(tokenizer, text),
                                                                       max_prompt, max_completion, pad)
            out["scores"][i, j] = score
            out["rank_mask"][i, j] = True
    return out


def pair_token_lists(rows: list[dict], tokenizer, *, max_prompt_length: int, max_completion_length: int,
                     chat_template: str = "auto") -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt ids, chosen ids, rejected ids) of each paired or step row, unpadded, truncated as
    ``encode`` truncates them (the prefix of a step row is part of the prompt): the input of
    ``pojax.data.packing``."""
    chat = use_chat_template(tokenizer, chat_template)
    out = []
    for row in rows:
        p = context_ids(tokenizer, row, chat)
        prompt, chosen = _truncate(p, completion_ids(tokenizer, row["chosen"]), max_prompt_length, max_completion_length)
        _, rejected = _truncate(p, completion_ids(tokenizer, row["rejected"]), max_prompt_length, max_completion_length)
        out.append((prompt, chosen, rejected))
    return out


def mismatched(input_ids: np.ndarray, completion_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """KTO's KL rows: each row's prompt with the previous row's completion (as TRL pairs them),
    re-packed left to right and padded like the originals."""
    n, width = input_ids.shape
    pad = input_ids[0, -1] if not completion_mask[0, -1] else 0
    ids = np.full_like(input_ids, pad)
    mask = np.zeros_like(completion_mask)
    for i in range(n):
        j = (i - 1) % n
        p = input_ids[i][: np.argmax(completion_mask[i])] if completion_mask[i].any() else input_ids[i]
        c = input_ids[j][completion_mask[j]]
        c = c[: width - len(p)]
        ids[i, : len(p) + len(c)] = np.concatenate([p, c])
        mask[i, len(p): len(p) + len(c)] = True
    return ids, mask
