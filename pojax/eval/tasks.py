"""Task accuracy from local files, to check that alignment did not cost capabilities:

  gsm8k   rows {question, answer} (openai/gsm8k's columns; the answer ends "#### <number>"):
          greedy generation, the number after '####' (else the last number) must equal the gold
  mmlu    rows {question, choices (list), answer (index or letter)} (cais/mmlu's columns):
          the option letter with the highest next-token log-likelihood after the question
  jsonl   rows {prompt, answer}: greedy generation, exact match after stripping whitespace
Files are JSONL / JSON / parquet (pojax.data.formats.read_rows); a row missing a field raises
DataError naming file, row and field.
"""
from __future__ import annotations

import re

import numpy as np

from pojax.data.formats import DataError, read_rows
from pojax.eval.generation import generate_texts, next_token_logits

TASK_FIELDS = {"gsm8k": ("question", "answer"), "mmlu": ("question", "choices", "answer"), "jsonl": ("prompt", "answer")}
LETTERS = "ABCDEFGHIJ"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _normalize_number(s: str) -> str:
    s = s.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        f = float(s)
    except ValueError:
        return s
    return str(int(f)) if f == int(f) else str(f)


def gsm8k_answer(text: str) -> str | None:
    """The number after '####' (GSM8K's answer marker), else the last number in ``text``,
    normalized (commas, $ and a trailing period dropped; 72.0 → 72); None without a number."""
    if "####" in text:
        m = _NUMBER.search(text.split("####")[-1])
        if m:
            return _normalize_number(m.group())
    numbers = _NUMBER.findall(text)
    return _normalize_number(numbers[-1]) if numbers else None


def load_task(path: str, kind: str) -> list[dict]:
    """Validated rows of a task file."""
    if kind not in TASK_FIELDS:
        raise ValueError(f"unknown task {kind!r}; known: {', '.join(TASK_FIELDS)}")
    rows = []
    for file, i, row in read_rows(path):
        if isinstance(row, DataError):
            raise row
        for field in TASK_FIELDS[kind]:
            if not isinstance(row, dict) or field not in row:
                raise DataError(file, i, field, "missing")
        if kind == "mmlu":
            choices, answer = row["choices"], row["answer"]
            if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
                raise DataError(file, i, "choices", f"expected a list of 2 to {len(LETTERS)} options")
            if isinstance(answer, str) and answer in LETTERS[:len(choices)]:
                answer = LETTERS.index(answer)
            if not isinstance(answer, (int, np.integer)) or not 0 <= answer < len(choices):
                raise DataError(file, i, "answer", f"expected an option index or letter, got {answer!r}")
            row = dict(row, answer=int(answer))
        rows.append(row)
    if not rows:
        raise DataError(path, 0, "-", "no rows")
    return rows


def mmlu_prompt(row: dict) -> str:
    options = "\n".join(f"{LETTERS[k]}. {c}" for k, c in enumerate(row["choices"]))
    return f"{row['question']}\n{options}\nAnswer:"


def letter_ids(tokenizer, k: int) -> list[int]:
    """The token of each option letter as it follows "Answer:" (" A", " B", ...)."""
    return [tokenizer(f" {LETTERS[j]}", add_special_tokens=False)["input_ids"][-1] for j in range(k)]


def mmlu_predictions(model, tokenizer, rows: list[dict], *, batch_size: int = 8) -> list[int]:
    """Option index with the highest next-token logit after each question's prompt."""
    logits = next_token_logits(model, tokenizer, [mmlu_prompt(r) for r in rows], batch_size=batch_size)
    return [int(np.argmax(lg[letter_ids(tokenizer, len(r["choices"]))])) for lg, r in zip(logits, rows)]


def run_task(kind: str, path: str, model, tokenizer, *, max_new_tokens: int = 256, batch_size: int = 8,
             chat_template: str = "auto") -> dict:
    """{<kind>_accuracy, <kind>_num_examples} of ``model`` on the task file."""
    rows = load_task(path, kind)
    if kind == "mmlu":
        correct = [p == r["answer"] for p, r in zip(mmlu_predictions(model, tokenizer, rows, batch_size=batch_size), rows)]
    else:
        prompts = [r["question"] if kind == "gsm8k" else r["prompt"] for r in rows]
        texts, _ = generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  chat_template=chat_template)
        if kind == "gsm8k":
            correct = [gsm8k_answer(t) is not None and gsm8k_answer(t) == gsm8k_answer(str(r["answer"]))
                       for t, r in zip(texts, rows)]
        else:
            correct = [t.strip() == str(r["answer"]).strip() for t, r in zip(texts, rows)]
    return {f"{kind}_accuracy": float(np.mean(correct)), f"{kind}_num_examples": len(rows)}
