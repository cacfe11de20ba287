"""DiffPO trajectories from files: ranked rows and UltraFeedback's per-completion scores.

DiffPO (arXiv 2503.04240) trains its aligner on trajectories y(0) … y(T) of one prompt whose
quality increases with t; the best response y(T) is the target of every state. Any data with K ≥ 2
scored responses per prompt gives one: sort the responses by score (ascending, ties keep the file
order), the last one is the target, the others are the states.

Sources (``diffpo.trajectory_source``):
  ranked        pojax's ``ranked`` rows (pojax.data.formats): prompt, completions, scores, and an
                optional ``models`` list naming the system that wrote each completion.
  ultrafeedback openbmb/UltraFeedback's layout: ``instruction`` (string) and ``completions``, a
                list of objects with ``model``, ``response`` and a numeric score
                (``overall_score`` by default; ``diffpo.score_field`` picks another, e.g.
                ``fine-grained_score``).
A bad row raises pojax.data.formats.DataError naming the file, the row and the field (e.g.
``completions[2].overall_score``).
"""
from __future__ import annotations

import math
import os

import numpy as np

from pojax.data import formats, tokenize

SOURCES = ("gym", "ranked", "ultrafeedback")


def _check_models(row, n, path, i):
    models = row.get("models")
    if models is None:
        return [f"completion_{k}" for k in range(n)]
    if not isinstance(models, list) or len(models) != n or not all(isinstance(m, str) and m for m in models):
        raise formats.DataError(path, i, "models", f"expected {n} non-empty names, one per completion")
    return list(models)


def _ultrafeedback_row(row, path, i, score_field):
    if not isinstance(row, dict):
        raise formats.DataError(path, i, "-", f"expected an object, got {type(row).__name__}")
    prompt = row.get("instruction")
    if not isinstance(prompt, str) or not prompt:
        raise formats.DataError(path, i, "instruction", "expected a non-empty string")
    comps = row.get("completions")
    if not isinstance(comps, list) or len(comps) < 2:
        raise formats.DataError(path, i, "completions", "expected a list of at least 2 completions")
    texts, scores, models = [], [], []
    for k, c in enumerate(comps):
        field = f"completions[{k}]"
        if not isinstance(c, dict):
            raise formats.DataError(path, i, field, f"expected an object, got {type(c).__name__}")
        text, score = c.get("response"), c.get(score_field)
        if not isinstance(text, str) or not text:
            raise formats.DataError(path, i, f"{field}.response", "expected a non-empty string")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise formats.DataError(path, i, f"{field}.{score_field}", f"expected a finite number, got {score!r}")
        texts.append(text)
        scores.append(float(score))
        models.append(str(c.get("model") or f"completion_{k}"))
    return {"prompt": [{"role": "user", "content": prompt}], "prompt_text": prompt, "completions": texts,
            "scores": scores, "models": models}


def read_scored(path: str, source: str, *, score_field: str = "overall_score", skip_bad_rows: bool = False) -> list[dict]:
    """Rows {prompt (messages), prompt_text?, completions [K], scores [K], models [K]} of a file or
    directory (JSONL, JSON or parquet, see pojax.data.formats.read_rows) in ``source``'s layout."""
    if source not in SOURCES[1:]:
        raise ValueError(f"diffpo: unknown trajectory source {source!r}; use {', '.join(SOURCES[1:])}")
    if not os.path.exists(path):
        raise formats.DataError.missing(path)
    rows = []
    for file, i, row in formats.read_rows(path):
        try:
            if isinstance(row, formats.DataError):
                raise row
            if source == "ranked":
                out = formats.normalize(row, "ranked", file, i)
                out["models"] = _check_models(row, len(out["completions"]), file, i)
            else:
                out = _ultrafeedback_row(row, file, i, score_field)
        except formats.DataError:
            if not skip_bad_rows:
                raise
            continue
        rows.append(out)
    if not rows:
        raise formats.DataError(path, None, None, "no valid rows")
    return rows


def ascending_order(scores_K) -> np.ndarray:
    """[K] int permutation sorting ``scores_K`` ascending; ties keep their order (stable), so of
    equal best scores the last listed is the target."""
    return np.argsort(np.asarray(scores_K, np.float64), kind="stable")


def order_trajectory(row: dict) -> dict:
    """The row with completions, scores and models sorted by ascending score: y(0) … y(T)."""
    perm = ascending_order(row["scores"])
    return {**row, **{k: [row[k][j] for j in perm] for k in ("completions", "scores", "models")}}


def training_rows(rows: list[dict], tokenizer, *, max_prompt_length: int, max_completion_length: int,
                  max_states: int, chat: bool) -> dict:
    """Batch-ready arrays of text trajectories, L = max_prompt_length + max_completion_length.

    Each row is [prompt (its last max_prompt_length tokens) | response (its first
    max_completion_length tokens, EOS included) | padding], every response of a prompt starting at
    the same position, as pojax.data.tokenize lays out completions. The states are the
    ``max_states`` best responses below the target (the nearest to it); a trajectory with fewer
    repeats its states to fill the slots, and ``num_states`` says how many are real (the trainer
    draws t below it).

    Returns:
      {"target_ids": [n, L] int32, "state_ids": [n, S, L] int32, "num_states": [n] int32,
       "response_mask": [n, L] bool (target's response tokens)}.
    """
    if max_states < 1:
        raise ValueError(f"diffpo: max_states must be >= 1, got {max_states}")
    pad = tokenize.pad_id(tokenizer)
    width = max_prompt_length + max_completion_length
    n = len(rows)
    target = np.full((n, width), pad, np.int32)
    states = np.full((n, max_states, width), pad, np.int32)
    mask = np.zeros((n, width), bool)
    num_states = np.zeros((n,), np.int32)
    for i, row in enumerate(rows):
        row = order_trajectory(row)
        p = tokenize.prompt_ids(tokenizer, row, chat)
        p = p[-max_prompt_length:] if max_prompt_length else []
        comps = [tokenize.completion_ids(tokenizer, c)[:max_completion_length] for c in row["completions"]]
        *lower, best = comps
        lower = lower[-max_states:]
        y = p + best
        target[i, :len(y)] = y
        mask[i, len(p):len(y)] = True
        num_states[i] = len(lower)
        for s in range(max_states):
            c = lower[s % len(lower)]
            states[i, s, :len(p) + len(c)] = p + c
    return {"target_ids": target, "state_ids": states, "num_states": num_states, "response_mask": mask}


def base_answers(rows: list[dict]) -> dict:
    """{model name: (row indices, answers)} of held-out rows: each completion is one base
    policy's answer to that row's prompt."""
    out: dict = {}
    for i, row in enumerate(rows):
        for name, text in zip(row["models"], row["completions"]):
            idx, texts = out.setdefault(name, ([], []))
            idx.append(i)
            texts.append(text)
    return out
