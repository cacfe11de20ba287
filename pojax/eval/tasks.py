"""Task accuracy from local files, to check that alignment did not cost capabilities:

  gsm8k   rows {question, answer} (openai/gsm8k's columns; the answer ends "#### <number>"):
          greedy generation, the number after '####' (else the last number) must equal the gold
  mmlu    rows {question, choices (list), answer (index or letter)} (cais/mmlu's columns):
          the option letter with the highest next-token log-likelihood after the question;
          for a masked-diffusion LM, which has no next-token distribution, generative: a few
          tokens generated after the same prompt (LLaDA's setting: 3 tokens, 3 steps, block 3)
          and the first option letter standing alone in them (none: wrong)
  jsonl   rows {prompt, answer}: greedy generation, exact match after stripping whitespace
Few-shot (``num_fewshot`` > 0): solved rows of ``fewshot_path`` (default: the first rows of the
task file, which are then not scored) are shown before each question, lm-evaluation-harness style:
"Question: q\nAnswer: <gold answer>\n\n" for GSM8K (the generation is cut at its next
"Question:") and "<mmlu prompt> <letter>\n\n" for MMLU.
Generation follows the model (pojax.eval.generation: KV-cache decoding for a causal LM, LLaDA's
reverse process with ``diffusion_sampling`` for a masked-diffusion LM).
Files are JSONL / JSON / parquet (pojax.data.formats.read_rows); a row missing a field raises
DataError naming file, row and field.
"""
from __future__ import annotations

import re

import numpy as np

from pojax.data.formats import DataError, read_rows
from pojax.eval.generation import (
    DiffusionSampling,
    decode_completions,
    diffusion_mask_id,
    generate_ids,
    generate_texts,
    next_token_logits,
    pad_token_id,
    stop_token_ids,
)

TASK_FIELDS = {"gsm8k": ("question", "answer"), "mmlu": ("question", "choices", "answer"), "jsonl": ("prompt", "answer")}
LETTERS = "ABCDEFGHIJ"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_LETTER = re.compile(r"(?<![A-Za-z])([A-J])(?![A-Za-z])")  # a capital letter that is not part of a word


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
        raise DataError(path, None, None, "no rows")
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


def option_letter(text: str, num_choices: int) -> int | None:
    """Index of the first option letter (A.. of ``num_choices``) standing alone in ``text``
    ("B", " C.", "(D)", "is A"), else None."""
    for m in _LETTER.finditer(text):
        if m.group(1) in LETTERS[:num_choices]:
            return LETTERS.index(m.group(1))
    return None


def mmlu_generated_predictions(model, tokenizer, rows: list[dict], *, gen_length: int = 3, batch_size: int = 8,
                               diffusion_sampling: DiffusionSampling | None = None) -> tuple[list[int], list[str]]:
    """(option index or -1, generated text) of each row: ``gen_length`` tokens generated greedily
    after the same prompt as the likelihood path (mmlu_prompt, no chat template), the first
    option letter standing alone in them."""
    prompt_ids = [tokenizer(mmlu_prompt(r))["input_ids"] for r in rows]
    ids = generate_ids(model, prompt_ids, max_new_tokens=gen_length, batch_size=batch_size, temperature=0.0,
                       stop_tokens=stop_token_ids(tokenizer), pad_id=pad_token_id(tokenizer, model),
                       diffusion_sampling=diffusion_sampling)
    texts, _ = decode_completions(tokenizer, ids)
    preds = [option_letter(t, len(r["choices"])) for t, r in zip(texts, rows)]
    return [-1 if p is None else p for p in preds], texts


class FewShotError(ValueError):
    """Too few rows for the few-shot examples, or a task without a few-shot format."""


def fewshot_prefix(kind: str, shots: list[dict]) -> str:
    """The solved examples shown before a question (module docstring); "" without any."""
    if kind == "gsm8k":
        return "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in shots)
    if kind == "mmlu":
        return "".join(f"{mmlu_prompt(r)} {LETTERS[r['answer']]}\n\n" for r in shots)
    if shots:
        raise FewShotError(f"few-shot examples: task {kind!r} has none (gsm8k and mmlu only)")
    return ""


def split_fewshot(kind: str, rows: list[dict], num_fewshot: int, fewshot_path: str = "") -> tuple[list[dict], list[dict]]:
    """(examples, scored rows): the first ``num_fewshot`` rows of ``fewshot_path``, or of ``rows``
    themselves (then left out of the scored rows)."""
    if num_fewshot <= 0:
        return [], rows
    pool = load_task(fewshot_path, kind) if fewshot_path else rows
    if len(pool) < num_fewshot + (0 if fewshot_path else 1):
        raise FewShotError(f"{fewshot_path or 'the task file'}: {len(pool)} rows, too few for {num_fewshot} few-shot examples"
                         + ("" if fewshot_path else " and at least one scored row"))
    return pool[:num_fewshot], rows if fewshot_path else rows[num_fewshot:]


def run_task(kind: str, path: str, model, tokenizer, *, max_new_tokens: int = 256, batch_size: int = 8,
             chat_template: str = "auto", diffusion_sampling: DiffusionSampling | None = None,
             num_fewshot: int = 0, fewshot_path: str = "") -> dict:
    """{<kind>_accuracy, <kind>_num_examples} of ``model`` on the task file.

    ``max_new_tokens`` is the generation length (GSM8K, JSONL, and MMLU for a masked-diffusion
    LM); ``diffusion_sampling`` the reverse-process settings when ``model`` is one (ignored for a
    causal LM); ``num_fewshot`` / ``fewshot_path`` the solved examples before each question."""
    shots, rows = split_fewshot(kind, load_task(path, kind), num_fewshot, fewshot_path)
    prefix = fewshot_prefix(kind, shots)
    diffusion = diffusion_mask_id(model) is not None
    if kind == "mmlu":
        rows_in = [dict(r, question=prefix + r["question"]) for r in rows]
        if diffusion:
            preds, _ = mmlu_generated_predictions(model, tokenizer, rows_in, gen_length=max_new_tokens,
                                                  batch_size=batch_size, diffusion_sampling=diffusion_sampling)
        else:
            preds = mmlu_predictions(model, tokenizer, rows_in, batch_size=batch_size)
        correct = [p == r["answer"] for p, r in zip(preds, rows)]
    else:
        if kind == "gsm8k":
            prompts = [f"{prefix}Question: {r['question']}\nAnswer:" if shots else r["question"] for r in rows]
        else:
            prompts = [r["prompt"] for r in rows]
        texts, _ = generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  chat_template=chat_template, diffusion_sampling=diffusion_sampling)
        if shots:  # the model may go on with a next example of its own
            texts = [t.split("Question:")[0] for t in texts]
        if kind == "gsm8k":
            correct = [gsm8k_answer(t) is not None and gsm8k_answer(t) == gsm8k_answer(str(r["answer"]))
                       for t, r in zip(texts, rows)]
        else:
            correct = [t.strip() == str(r["answer"]).strip() for t, r in zip(texts, rows)]
    return {f"{kind}_accuracy": float(np.mean(correct)), f"{kind}_num_examples": len(rows)}
