"""Preference data as researchers keep it on disk (TRL / HF datasets column names), read from
JSONL (plain or gzipped), JSON or parquet, and validated row by row.

Formats (``data.format``) and the normalized row each becomes:
  paired    prompt, chosen, rejected — strings, or conversational lists of {role, content};
            a row whose chosen / rejected are whole conversations without a prompt column
            (UltraFeedback-binarized style) is split at the last assistant turn, as TRL does.
            Optional numeric score_chosen / score_rejected (UltraFeedback) are kept.
            → {prompt, chosen, rejected[, score_chosen, score_rejected]}
  unpaired  prompt, completion, label (bool) → {prompt, completion, label}
  ranked    prompt, completions (list), scores (list of numbers, same length)
            → {prompt, completions, scores (floats)}
  step      step-level pairs: prompt, prefix (the shared previous steps as one string, may be
            empty), chosen_step, rejected_step (non-empty strings)
            → {prompt, prefix, chosen, rejected}: a paired row plus ``prefix``. The model sees
            prompt + prefix + step; only the step is the completion (tokenize appends the
            prefix's tokens to the prompt's and masks them out of the completion).
  sft       supervised fine-tuning rows in TRL SFTTrainer's layouts, one of (per row):
            messages (a conversation, language modeling) → {messages, conversational: True};
            conversations (ShareGPT: from / value) → the same, with ShareGPT's roles human / gpt
            read as user / assistant (TRL's maybe_convert_to_chatml renames only the keys, and
            templates then drop those turns: pojax departs); text (a string, language modeling) → {text};
            prompt, completion (strings or messages, prompt-completion) → {prompt, completion,
            prompt_text?, completion_messages?} as an unpaired row without a label.
  hh_rlhf   Anthropic HH-RLHF: chosen, rejected — whole transcripts "\\n\\nHuman: …\\n\\nAssistant:
            …" that differ only in the final assistant turn (see ``parse_hh_transcript``)
            → {prompt (the turns before the final assistant turn), chosen, rejected (the final
            assistant turns), prompt_text}; prompt_text is the raw transcript up to the final
            "\\n\\nAssistant: " marker, so prompt_text + chosen is the chosen transcript verbatim.
Every row becomes a normalized dict with ``prompt`` as a list of messages (a plain-text prompt is
one user message, kept as text in ``prompt_text``) and completions as strings. ``conversational``
says whether the source row held lists of messages (TRL's ``is_conversational``: then
pojax.data.tokenize renders it with the chat template, else as raw text); a completion given as
messages also keeps them whole in ``<field>_messages`` (chosen_messages, completion_messages,
completions_messages), and a row's ``tools`` (a list, or its JSON string) and
``chat_template_kwargs`` (an object, e.g. {"enable_thinking": false}) columns are kept as they are.
A string prompt with conversations as chosen / rejected (UltraFeedback-binarized's layout) takes
its prompt from the conversations, as TRL's ``maybe_extract_prompt`` does. A bad row raises
``DataError`` naming the file, the row index and the field, or, with ``skip_bad_rows``, is counted
and logged — never dropped silently.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import re
from collections.abc import Iterator

from absl import logging

FORMATS = ("paired", "unpaired", "ranked", "step", "sft", "hh_rlhf")
# file names read_rows reads (a directory: its files with these endings, sorted)
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")


class DataError(ValueError):
    """A bad data row: the message names file, row and field (a row that is not valid JSON: file
    and row, field None or "-"); a problem of the whole file (row None: missing, no data files in
    a directory) names the file alone."""

    def __init__(self, path: str, row: int | None, field: str | None, message: str):
        where = str(path) if row is None else f"{path}: row {row}" if field in (None, "-") else \
            f"{path}: row {row}: field {field!r}"
        super().__init__(f"{where}: {message}")
        self.path, self.row, self.field = path, row, field

    @classmethod
    def missing(cls, path: str) -> "DataError":
        """``path: no such file or directory``."""
        return cls(path, None, None, "no such file or directory")


def read_rows(path: str) -> Iterator[tuple[str, int, dict | DataError]]:
    """(file, row index in that file, row) for a .jsonl / .json / .parquet file (JSONL and JSON
    may be gzipped: .jsonl.gz, .json.gz), or for every such file of a directory (sorted, not
    recursive). A JSONL line that is not valid JSON comes as a DataError in place of the row, so
    the caller can stop or skip it. Rows of a JSONL file are its non-blank lines, counted from 0."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(FILE_SUFFIXES))
        if not files:
            raise DataError(path, None, None, "directory has no .jsonl, .json or .parquet file")
        for f in files:
            yield from read_rows(f)
        return
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        i = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):  # bounded memory
            for row in batch.to_pylist():
                yield path, i, row
                i += 1
        return
    opener = gzip.open if path.endswith(".gz") else open
    if path.endswith((".json", ".json.gz")):
        with opener(path, "rt", encoding="utf-8") as f:
            try:
                data = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(path, 0, "-", f"not a valid UTF-8 JSON document ({e})") from None
        rows = data if isinstance(data, list) else data.get("data", [])
        for i, row in enumerate(rows):
            yield path, i, row
        return
    with opener(path, "rb") as f:  # bytes: a line that is not UTF-8 is that row's error, not a crash
        i = 0
        for raw in f:
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                row = DataError(path, i, "-", "not valid UTF-8")
            except json.JSONDecodeError as e:
                row = DataError(path, i, "-", f"not valid JSON ({e.msg})")
            yield path, i, row
            i += 1


def _messages(value, path, i, field) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(path, i, field, f"expected a string or a non-empty list of messages, got {type(value).__name__}")
    for m in value:
        if not isinstance(m, dict) or "role" not in m or not isinstance(m.get("content"), str):
            raise DataError(path, i, field, "every message needs a 'role' and a string 'content'")
    return list(value)


def _is_messages(value) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def _extras(row, out, path, i, *fields) -> dict:
    """``out`` with the row's TRL extras: conversational, <field>_messages of completions given as
    messages, tools and chat_template_kwargs."""
    values = [row.get(f) for f in fields if f in row]
    flat = [x for v in values for x in (v if isinstance(v, list) and not _is_messages(v) else [v])]
    out["conversational"] = any(_is_messages(v) for v in flat) or out.pop("_conversational", False)
    if "tools" in row and row["tools"] is not None:
        if not isinstance(row["tools"], (list, str)):
            raise DataError(path, i, "tools", f"expected a list of tool schemas or its JSON string, got "
                            f"{type(row['tools']).__name__}")
        out["tools"] = row["tools"]
    if "chat_template_kwargs" in row and row["chat_template_kwargs"] is not None:
        if not isinstance(row["chat_template_kwargs"], dict):
            raise DataError(path, i, "chat_template_kwargs", "expected an object of chat template arguments, got "
                            f"{type(row['chat_template_kwargs']).__name__}")
        out["chat_template_kwargs"] = dict(row["chat_template_kwargs"])
    return out


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
    chosen_text, rejected_text = _completion(c, path, i, "chosen"), _completion(r, path, i, "rejected")
    if c[:-1] != r[:-1]:
        raise DataError(path, i, "rejected", "chosen and rejected conversations do not share the same prompt turns")
    if not c[:-1]:
        raise DataError(path, i, "chosen", "a conversation without a 'prompt' column needs prompt turns before the answer")
    return c[:-1], chosen_text, rejected_text


_HH_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: str) -> list[dict]:
    """An HH-RLHF transcript "\\n\\nHuman: a\\n\\nAssistant: b…" → [{role: user, content: a},
    {role: assistant, content: b}, …]. Turns start at "\\n\\nHuman:" / "\\n\\nAssistant:" (the
    leading blank line may be missing on the first turn; one space after the colon belongs to the
    marker); contents are kept verbatim. Raises ValueError for text before the first turn or a
    transcript without turns. Which role comes last is the caller's rule (see ``normalize``)."""
    if not isinstance(text, str):
        raise ValueError(f"expected a transcript string, got {type(text).__name__}")
    parts = _HH_MARKER.split(text)
    if len(parts) == 1:
        raise ValueError("no '\\n\\nHuman: ' or '\\n\\nAssistant: ' turn")
    if parts[0].strip():
        raise ValueError(f"text before the first turn: {parts[0][:40]!r}")
    return [{"role": _HH_ROLES[role], "content": content} for role, content in zip(parts[1::2], parts[2::2])]


def _hh_turns(text, path, i, field) -> tuple[list[dict], str, str]:
    """(prompt messages, final assistant content, raw transcript up to that content)."""
    try:
        msgs = parse_hh_transcript(text)
    except ValueError as e:
        raise DataError(path, i, field, f"not an HH-RLHF transcript: {e}") from None
    if not any(m["role"] == "assistant" for m in msgs):
        raise DataError(path, i, field, "not an HH-RLHF transcript: no '\\n\\nAssistant: ' turn")
    if msgs[-1]["role"] != "assistant":
        raise DataError(path, i, field, "not an HH-RLHF transcript: does not end with an assistant turn")
    if len(msgs) < 2:
        raise DataError(path, i, field, "no turns before the final assistant turn")
    last = list(_HH_MARKER.finditer(text))[-1]
    return msgs[:-1], _completion(msgs[-1]["content"], path, i, field), text[: last.end()]


def _score(row, path, i, field) -> float:
    value = row[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(path, i, field, f"expected a finite number, got {value!r}")
    return float(value)


def _require(row, fields, path, i):
    for field in fields:
        if field not in row:
            raise DataError(path, i, field, "missing")


def normalize(row: dict, fmt: str, path: str, i: int) -> dict:
    """One validated row in pojax's normalized form (see the module docstring)."""
    if not isinstance(row, dict):
        raise DataError(path, i, "-", f"expected an object, got {type(row).__name__}")
    if fmt == "paired":
        _require(row, ("chosen", "rejected"), path, i)
        implicit = "prompt" not in row or (isinstance(row["prompt"], str) and _is_messages(row["chosen"])
                                           and len(row["chosen"]) > 1)  # TRL's maybe_extract_prompt
        if implicit:
            prompt, chosen, rejected = _split_conversation(row["chosen"], row["rejected"], path, i)
            out = {"prompt": prompt, "chosen": chosen, "rejected": rejected,
                   "chosen_messages": row["chosen"][len(prompt):], "rejected_messages": row["rejected"][len(prompt):]}
        else:
            prompt = _messages(row["prompt"], path, i, "prompt")
            chosen, rejected = _completion(row["chosen"], path, i, "chosen"), _completion(row["rejected"], path, i, "rejected")
            out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
            for field in ("chosen", "rejected"):
                if _is_messages(row[field]):
                    out[f"{field}_messages"] = list(row[field])
        _extras(row, out, path, i, "prompt", "chosen", "rejected")
        for field in ("score_chosen", "score_rejected"):
            if field in row:
                out[field] = _score(row, path, i, field)
    elif fmt == "unpaired":
        _require(row, ("prompt", "completion", "label"), path, i)
        if not isinstance(row["label"], bool):
            raise DataError(path, i, "label", f"expected true/false, got {row['label']!r}")
        out = {"prompt": _messages(row["prompt"], path, i, "prompt"),
               "completion": _completion(row["completion"], path, i, "completion"), "label": row["label"]}
        if _is_messages(row["completion"]):
            out["completion_messages"] = list(row["completion"])
        _extras(row, out, path, i, "prompt", "completion")
    elif fmt == "ranked":
        _require(row, ("prompt", "completions", "scores"), path, i)
        comps, scores = row["completions"], row["scores"]
        if not isinstance(comps, list) or len(comps) < 2:
            raise DataError(path, i, "completions", "expected a list of at least 2 completions")
        if not isinstance(scores, list) or len(scores) != len(comps) or not all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores):
            raise DataError(path, i, "scores", f"expected {len(comps)} numbers, one per completion")
        out = {"prompt": _messages(row["prompt"], path, i, "prompt"),
               "completions": [_completion(c, path, i, "completions") for c in comps], "scores": [float(s) for s in scores]}
        if any(_is_messages(c) for c in comps):
            out["completions_messages"] = [list(c) if _is_messages(c) else [{"role": "assistant", "content": c}]
                                           for c in comps]
        _extras(row, out, path, i, "prompt", "completions")
    elif fmt == "step":
        _require(row, ("prompt", "prefix", "chosen_step", "rejected_step"), path, i)
        if not isinstance(row["prefix"], str):
            raise DataError(path, i, "prefix", f"expected a string (may be empty), got {type(row['prefix']).__name__}")
        steps = {}
        for field in ("chosen_step", "rejected_step"):
            if not isinstance(row[field], str):
                raise DataError(path, i, field, f"expected a string, got {type(row[field]).__name__}")
            steps[field] = _completion(row[field], path, i, field)
        out = {"prompt": _messages(row["prompt"], path, i, "prompt"), "prefix": row["prefix"],
               "chosen": steps["chosen_step"], "rejected": steps["rejected_step"]}
        _extras(row, out, path, i, "prompt")
    elif fmt == "sft":
        return _sft_row(row, path, i)
    elif fmt == "hh_rlhf":
        _require(row, ("chosen", "rejected"), path, i)
        prompt, chosen, prompt_text = _hh_turns(row["chosen"], path, i, "chosen")
        rejected_prompt, rejected, _ = _hh_turns(row["rejected"], path, i, "rejected")
        if rejected_prompt != prompt:
            raise DataError(path, i, "rejected", "chosen and rejected transcripts differ before the final assistant turn")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "prompt_text": prompt_text,
                "conversational": True}  # turns parsed into messages, as trl-lib/hh-rlhf-helpful-base has them
    else:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if isinstance(row.get("prompt"), str):
        out["prompt_text"] = row["prompt"]
    return out


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "tool": "tool"}


def _sharegpt(value, path, i) -> list[dict]:
    """ShareGPT turns ({from, value}) as messages ({role, content})."""
    if not isinstance(value, list) or not value:
        raise DataError(path, i, "conversations", "expected a non-empty list of {from, value} turns")
    out = []
    for turn in value:
        if not isinstance(turn, dict) or turn.get("from") not in _SHAREGPT_ROLES or not isinstance(turn.get("value"), str):
            raise DataError(path, i, "conversations", f"every turn needs 'from' (one of {', '.join(_SHAREGPT_ROLES)}) "
                            "and a string 'value'")
        out.append({"role": _SHAREGPT_ROLES[turn["from"]], "content": turn["value"]})
    return out


def _sft_row(row: dict, path: str, i: int) -> dict:
    """One SFT row (module docstring: format sft): language modeling (messages / conversations /
    text) or prompt-completion."""
    if "messages" in row or "conversations" in row:
        field = "messages" if "messages" in row else "conversations"
        if isinstance(row[field], str):
            raise DataError(path, i, field, "expected a list of messages, got a string (a plain-text row is 'text')")
        msgs = _messages(row[field], path, i, field) if field == "messages" else _sharegpt(row[field], path, i)
        out = _extras(row, {"messages": msgs}, path, i)
        out["conversational"] = True
        return out
    if "prompt" in row or "completion" in row:
        _require(row, ("prompt", "completion"), path, i)
        out = {"prompt": _messages(row["prompt"], path, i, "prompt"),
               "completion": _completion(row["completion"], path, i, "completion")}
        if _is_messages(row["completion"]):
            out["completion_messages"] = list(row["completion"])
        _extras(row, out, path, i, "prompt", "completion")
        if isinstance(row["prompt"], str):
            out["prompt_text"] = row["prompt"]
        return out
    if "text" in row:
        if not isinstance(row["text"], str) or not row["text"]:
            raise DataError(path, i, "text", f"expected a non-empty string, got {row['text']!r}")
        return {"text": row["text"], "conversational": False}
    raise DataError(path, i, "-", "an SFT row needs 'messages' (or ShareGPT 'conversations'), 'text', or 'prompt' and "
                    f"'completion'; it has {', '.join(sorted(row)) or 'no fields'}")


def load(path: str, fmt: str, *, skip_bad_rows: bool = False) -> list[dict]:
    """All rows of ``path`` normalized; bad rows raise, or are skipped and counted."""
    if not os.path.exists(path):
        raise DataError.missing(path)
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
        raise DataError(path, None, None, "no valid rows")
    return rows


UNPAIR_CHUNK = 1000  # datasets' Dataset.map batch size, in which TRL's unpair_preference_dataset works


def unpair(rows: list[dict]) -> list[dict]:
    """Normalized paired rows as unpaired ones, as TRL's ``unpair_preference_dataset`` does:
    each pair gives (prompt, chosen, label=True) and (prompt, rejected, label=False), in TRL's
    order — per chunk of 1,000 pairs, every chosen row then every rejected row. The order
    matters: KTO's mismatched (KL) completions are the previous row's (``tokenize.mismatched``),
    which in this order belong to another prompt; interleaved, a rejected row would get its own
    prompt's chosen completion. How the ELBO-KTO paper trains KTO on UltraFeedback-binarized."""
    out = []
    for start in range(0, len(rows), UNPAIR_CHUNK):
        chunk = rows[start:start + UNPAIR_CHUNK]
        for side, label in (("chosen", True), ("rejected", False)):
            for row in chunk:
                keep = {k: row[k] for k in ("prompt_text", "conversational", "tools", "chat_template_kwargs") if k in row}
                new = {"prompt": row["prompt"], "completion": row[side], "label": label, **keep}
                if f"{side}_messages" in row:
                    new["completion_messages"] = row[f"{side}_messages"]
                out.append(new)
    return out


def ranked_pairs(rows: list[dict]) -> list[dict]:
    """Normalized ranked rows as scored pairs, as Curry-DPO builds them (Pattnaik et al.,
    arXiv 2403.07230, Sec. 3): the best-scored response of each prompt is chosen against every
    response scored strictly lower, so K responses give up to K − 1 pairs, (best, worst) having
    the largest score gap. Each pair keeps score_chosen / score_rejected (its curriculum key);
    responses tied with the best make no pair."""
    out = []
    for row in rows:
        scores = row["scores"]
        best = max(range(len(scores)), key=lambda j: scores[j])  # the first of tied bests
        for j in sorted(range(len(scores)), key=lambda j: scores[j]):  # worst first
            if scores[j] < scores[best]:
                pair = {"prompt": row["prompt"], "chosen": row["completions"][best], "rejected": row["completions"][j],
                        "score_chosen": scores[best], "score_rejected": scores[j]}
                for key in ("prompt_text", "conversational", "tools", "chat_template_kwargs"):
                    if key in row:
                        pair[key] = row[key]
                if "completions_messages" in row:
                    pair["chosen_messages"] = row["completions_messages"][best]
                    pair["rejected_messages"] = row["completions_messages"][j]
                out.append(pair)
    return out
