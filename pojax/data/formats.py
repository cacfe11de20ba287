"""Preference data as researchers keep it on disk (TRL / HF datasets column names), read from
JSONL, JSON or parquet, and validated row by row.

Formats (``data.format``):
  paired    prompt, chosen, rejected — strings, or conversational lists of {role, content};
            a row whose chosen / rejected are whole conversations without a prompt column
            (UltraFeedback-binarized style) is split at the last assistant turn, as TRL does.
  unpaired  prompt, completion, label (bool)
  ranked    prompt, completions (list), scores (list of numbers, same length)
Every row becomes a normalized dict with ``prompt`` as a list of messages (a plain-text prompt is
one user message, kept as text in ``prompt_text``) and completions as strings. A bad row raises
``DataError`` naming the file, the row index and the field, or, with ``skip_bad_rows``, is counted
and logged — never dropped silently.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator

from absl import logging

FORMATS = ("paired", "unpaired", "ranked")


class DataError(ValueError):
    """A bad data row: the message names file, row and field."""

    def __init__(self, path: str, row: int, field: str, message: str):
        super().__init__(f"{path}: row {row}: field {field!r}: {message}")
        self.path, self.row, self.field = path, row, field


def read_rows(path: str) -> Iterator[tuple[str, int, dict | DataError]]:
    """(file, row index in that file, row) for a .jsonl / .json / .parquet file, or for every
    such file of a directory (sorted). A JSONL line that is not valid JSON comes as a DataError
    in place of the row, so the caller can stop or skip it. Rows of a JSONL file are its
    non-blank lines, counted from 0."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith((".jsonl", ".json", ".parquet")))
        if not files:
            raise DataError(path, 0, "-", "directory has no .jsonl, .json or .parquet file")
        for f in files:
            yield from read_rows(f)
        return
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    elif path.endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        rows = data if isinstance(data, list) else data.get("data", [])
    else:
        with open(path) as f:
            lines = [line for line in f if line.strip()]
        for i, line in enumerate(lines):
            try:
                yield path, i, json.loads(line)
            except json.JSONDecodeError as e:
                yield path, i, DataError(path, i, "-", f"not valid JSON ({e.msg})")
        return
    for i, row in enumerate(rows):
        yield path, i, row


def _messages(value, path, i, field) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(path, i, field, f"expected a string or a non-empty list of messages, got {type(value).__name__}")
    for m in value:
        if not isinstance(m, dict) or "role" not in m or not isinstance(m.get("content"), str):
            raise DataError(path, i, field, "every message needs a 'role' and a string 'content'")
    return list(value)


def _completion(value, path, i, field) -> str:
    """A completion: a string, or a conversation whose last message is the assistant's."""
    if isinstance(value, str):
        if not value:
            raise DataError(path, i, field, "empty completion")
        return value
    msgs = _messages(value, path, i, field)
    if msgs[-1]["role"] != "assistant":
        raise DataError(path, i, field, f"the last message must be the assistant's, got {msgs[-1]['role']!r}")
    return msgs[-1]["content"]


def _split_conversation(chosen, rejected, path, i):
    """UltraFeedback style: prompt = the messages before the final assistant turn (shared)."""
    c, r = _messages(chosen, path, i, "chosen"), _messages(rejected, path, i, "rejected")
    if c[:-1] != r[:-1]:
        raise DataError(path, i, "rejected", "chosen and rejected conversations do not share the same prompt turns")
    if not c[:-1]:
        raise DataError(path, i, "chosen", "a conversation without a 'prompt' column needs prompt turns before the answer")
    return c[:-1], _completion(c, path, i, "chosen"), _completion(r, path, i, "rejected")


def normalize(row: dict, fmt: str, path: str, i: int) -> dict:
    """One validated row in pojax's normalized form (see the module docstring)."""
    if not isinstance(row, dict):
        raise DataError(path, i, "-", f"expected an object, got {type(row).__name__}")
    if fmt == "paired":
        for field in ("chosen", "rejected"):
            if field not in row:
                raise DataError(path, i, field, "missing")
        if "prompt" in row:
            prompt = _messages(row["prompt"], path, i, "prompt")
            chosen, rejected = _completion(row["chosen"], path, i, "chosen"), _completion(row["rejected"], path, i, "rejected")
        else:
            prompt, chosen, rejected = _split_conversation(row["chosen"], row["rejected"], path, i)
        out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    elif fmt == "unpaired":
        for field in ("prompt", "completion", "label"):
            if field not in row:
                raise DataError(path, i, field, "missing")
        if not isinstance(row["label"], bool):
            raise DataError(path, i, "label", f"expected true/false, got {row['label']!r}")
        out = {"prompt": _messages(row["prompt"], path, i, "prompt"),
               "completion": _completion(row["completion"], path, i, "completion"), "label": row["label"]}
    elif fmt == "ranked":
        for field in ("prompt", "completions", "scores"):
            if field not in row:
                raise DataError(path, i, field, "missing")
        comps, scores = row["completions"], row["scores"]
        if not isinstance(comps, list) or len(comps) < 2:
            raise DataError(path, i, "completions", "expected a list of at least 2 completions")
        if not isinstance(scores, list) or len(scores) != len(comps) or not all(isinstance(s, (int, float)) for s in scores):
            raise DataError(path, i, "scores", f"expected {len(comps)} numbers, one per completion")
        out = {"prompt": _messages(row["prompt"], path, i, "prompt"),
               "completions": [_completion(c, path, i, "completions") for c in comps], "scores": [float(s) for s in scores]}
    else:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if isinstance(row.get("prompt"), str):
        out["prompt_text"] = row["prompt"]
    return out


def load(path: str, fmt: str, *, skip_bad_rows: bool = False) -> list[dict]:
    """All rows of ``path`` normalized; bad rows raise, or are skipped and counted."""
    if not os.path.exists(path):
        raise DataError(path, 0, "-", "no such file or directory")
    rows, skipped = [], 0
    for file, i, row in read_rows(path):
        try:
            if isinstance(row, DataError):
                raise row
            rows.append(normalize(row, fmt, file, i))
        except DataError as e:
            if not skip_bad_rows:
                raise
            skipped += 1
            logging.warning("skipped bad row: %s", e)
    if skipped:
        logging.warning("%s: skipped %d bad rows of %d", path, skipped, skipped + len(rows))
    if not rows:
        raise DataError(path, 0, "-", "no valid rows")
    return rows
