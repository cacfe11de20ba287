"""Normalized rows (pojax.data.formats) → fixed-shape token arrays: the token ids TRL 1.16's
trainers train on (``DPOTrainer._prepare_dataset``; ``KTOTrainer``'s and ``SFTTrainer``'s
prompt-completion path are the same rule for one completion).

Rendering (``data.chat_template``: auto | yes | no):
  conversational rows (the source held lists of messages; ``formats`` sets ``conversational``)
      prompt ids = ``apply_chat_template(prompt, add_generation_prompt=True)``; each completion is
      ``apply_chat_template(prompt + completion)`` — so it carries what the template writes (Llama
      3's ``trim`` and <|eot_id|>, ChatML's <|im_end|>\\n, Qwen3's think block) — with the row's
      ``tools`` (a JSON string is parsed) and ``chat_template_kwargs`` (e.g. enable_thinking).
  standard rows (plain strings): the prompt is ``tokenizer(prompt)`` (the tokenizer's own special
      tokens, e.g. BOS), each completion ``tokenizer(prompt + completion + eos_token)`` (EOS as
      text, appended unless the completion already ends with it).
  ``data.completion_end`` = ``none`` (the ELBO-KTO authors' data_utils.build_example): nothing
      follows the completion's text — no end of turn, no EOS — so the response window is the
      completion alone: the prompt is rendered as text (template with the generation prompt, or
      the prompt text), and each completion is the tokens of that text + the raw completion text
      (not trimmed) past the prompt; templated text gets no added special tokens (the template
      writes BOS). Rows whose completion is then empty are dropped. ``eos`` (default) is TRL's.
  The completion starts where the prompt ids and *every* prompt + completion ids diverge (TRL's
  ``common_prefix_length``, the minimum over the row's completions): a template that renders the
  prompt differently alone, or a token that merges across the boundary, moves it earlier, and
  the dropped prompt end is logged once (TRL's warning). ``auto`` is TRL; ``yes`` sends standard
  rows through the template too (the prompt as one user turn, completions as assistant turns);
  ``no`` treats every row as standard (a conversation's prompt is its ``prompt_text`` or its
  messages' contents joined by newlines) — both pojax's, not TRL's. A conversational row and a
  tokenizer without a chat template is a ConfigError naming data.chat_template and the tokenizer.

Ranked rows treat each completion as DPO treats chosen / rejected (one prompt, the common prefix
over all of them). Step rows (a ``prefix`` both steps continue): the context is the prompt with
the prefix as the start of the assistant turn (``continue_final_message``), or the prompt text +
prefix for standard rows; the steps are the completions, the prefix stays outside the masks.

Truncation, per sequence (prompt ids p, completion ids c), in this order:
  1. pojax's per-part limits, each 0 = none: p keeps its last ``max_prompt_length`` tokens, c its
     first ``max_completion_length`` (TRL < 0.20's rule);
  2. TRL 1.16's ``max_length`` (0 = none) on p + c: ``keep_start`` keeps the first max_length
     tokens, ``keep_end`` the last (TRL deprecates it; the prompt's start goes first). With
     keep_start a row whose prompt alone fills max_length (len(p) >= max_length) is dropped, as
     TRL drops it (for KTO whatever the mode: KTO only has keep_start), and counted.
Rows are right-padded to ``row_width``: max_length when set, else max_prompt_length +
max_completion_length. TRL pads each batch to its longest row instead; the tokens are the same.
"""
from __future__ import annotations

import json

import numpy as np
from absl import logging

CHAT_TEMPLATE_MODES = ("auto", "yes", "no")
TRUNCATION_MODES = ("keep_start", "keep_end")
COMPLETION_ENDS = ("eos", "none")  # data.completion_end


def use_chat_template(tokenizer, mode: str) -> bool:
    """Whether conversational prompts go through the tokenizer's chat template (mode: auto | yes
    | no); "yes" without a template raises."""
    if mode not in CHAT_TEMPLATE_MODES:
        raise ValueError(f"config key data.chat_template: {mode!r} is not one of {', '.join(CHAT_TEMPLATE_MODES)}")
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "yes" and not has:
        raise ValueError("config key data.chat_template: 'yes', but the tokenizer has no chat template "
                         "(set data.chat_template=auto or no for the plain prompt/completion format)")
    return has and mode != "no"


def is_conversational(row: dict) -> bool:
    """Whether the row came as lists of messages (TRL's ``is_conversational``). Rows normalized
    before formats kept the flag count as conversational unless they kept a plain ``prompt_text``."""
    flag = row.get("conversational")
    return ("prompt_text" not in row) if flag is None else bool(flag)


def templated(row: dict, mode) -> bool:
    """Whether ``row`` goes through the chat template; ``mode`` is a data.chat_template value or,
    from older callers, a bool (True: the template for every row, False: none)."""
    if isinstance(mode, bool):
        return mode
    if mode not in CHAT_TEMPLATE_MODES:
        raise ValueError(f"config key data.chat_template: {mode!r} is not one of {', '.join(CHAT_TEMPLATE_MODES)}")
    return mode == "yes" or (mode == "auto" and is_conversational(row))


def check_template(tokenizer, rows: list[dict], mode) -> None:
    """A ConfigError (data.chat_template, naming the tokenizer) when a row needs the chat template
    and the tokenizer has none."""
    if getattr(tokenizer, "chat_template", None):
        return
    if any(templated(r, mode) for r in rows):
        from pojax.config import ConfigError

        where = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        why = "'yes'" if mode == "yes" or mode is True else "conversational rows (lists of messages) need it"
        raise ConfigError("data.chat_template", f"{why}, but the tokenizer at {where} has no chat template (set "
                          "data.chat_template=no to train on the messages' plain text, or data.tokenizer to a "
                          "tokenizer with a chat template)")


def template_kwargs(row: dict) -> dict:
    tools = row.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    return {"tools": tools, **(row.get("chat_template_kwargs") or {})}


def _render(tokenizer, messages: list, row: dict, **kw) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **template_kwargs(row), **kw)
    return list(out["input_ids"])


def prompt_text(row: dict) -> str:
    text = row.get("prompt_text")
    return text if isinstance(text, str) else "\n".join(m["content"] for m in row["prompt"])


def as_messages(completion) -> list:
    return completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]


def prompt_messages(row: dict) -> list:
    if is_conversational(row) or "prompt_text" not in row:
        return list(row["prompt"])
    return [{"role": "user", "content": row["prompt_text"]}]


def completions_of(row: dict, fmt: str) -> list:
    """The row's completions in order (paired / step: chosen, rejected; unpaired: the one;
    ranked: all): message lists where the source had them (``*_messages``), else strings."""
    keys = {"paired": ("chosen", "rejected"), "step": ("chosen", "rejected"), "unpaired": ("completion",)}
    if fmt == "ranked":
        return list(row.get("completions_messages") or row["completions"])
    if fmt not in keys:
        raise ValueError(f"encode: format {fmt!r} is not supported yet (paired, step, unpaired, ranked)")
    return [row.get(f"{k}_messages") or row[k] for k in keys[fmt]]


def text_of(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


_warned = False


def _unterminated(tokenizer, row: dict, completions: list, templ: bool) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, full ids) with nothing after each completion's text: the prompt as text (the
    chat template with the generation prompt, or the prompt text), then tokens of that text + the
    completion's raw text (untrimmed), no special tokens added (data.completion_end = none)."""
    prefix = row.get("prefix") or ""
    if templ:
        prompt, kw = prompt_messages(row), template_kwargs(row)
        if prefix:
            text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": prefix}], tokenize=False,
                                                 continue_final_message=True, **kw)
        else:
            text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True, **kw)
        ids = lambda t: list(tokenizer(t, add_special_tokens=False)["input_ids"])
    else:  # the tokenizer's own special tokens (BOS) lead the sequence, as in the default mode
        text = prompt_text(row) + prefix
        ids = lambda t: list(tokenizer(t)["input_ids"])
    return ids(text), [ids(text + text_of(c)) for c in completions]


def sequences(tokenizer, row: dict, completions: list, mode="auto",
              completion_end: str = "eos") -> tuple[list[int], list[list[int]]]:
    """(prompt ids, [completion ids, …]) of one row, untruncated (module docstring)."""
    if completion_end not in COMPLETION_ENDS:
        raise ValueError(f"config key data.completion_end: {completion_end!r} is not one of "
                         f"{', '.join(COMPLETION_ENDS)}")
    prefix = row.get("prefix") or ""
    if completion_end == "none":
        p, fulls = _unterminated(tokenizer, row, completions, templated(row, mode))
    elif templated(row, mode):
        prompt = prompt_messages(row)
        if prefix:
            p = _render(tokenizer, prompt + [{"role": "assistant", "content": prefix}], row, continue_final_message=True)
            fulls = [_render(tokenizer, prompt + [{"role": "assistant", "content": prefix + text_of(c)}], row)
                     for c in completions]
        else:
            p = _render(tokenizer, prompt, row, add_generation_prompt=True)
            fulls = [_render(tokenizer, prompt + as_messages(c), row) for c in completions]
    else:
        text, eos = prompt_text(row) + prefix, tokenizer.eos_token or ""
        p = list(tokenizer(text)["input_ids"])
        fulls = []
        for c in completions:
            c = text_of(c)
            fulls.append(list(tokenizer(text + (c if c.endswith(eos) else c + eos))["input_ids"]))
    n = min(common_prefix(p, f) for f in fulls)
    warn_prompt_cut(tokenizer, p, n)
    return p[:n], [f[n:] for f in fulls]


def warn_prompt_cut(tokenizer, p: list[int], n: int) -> None:
    """TRL's warning, once per process, when the completion starts at ``n`` < len(p)."""
    global _warned
    if n < len(p) and not _warned:
        _warned = True
        logging.warning("the tokenized prompt is not a prefix of the tokenized prompt + completion (the chat template "
                        "renders the prompt alone differently, or tokens merge across the boundary); as TRL does, the "
                        "completion starts where they diverge and this end of the prompt is left out: %r (shown once)",
                        tokenizer.decode(p[n:]))


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prompt_ids(tokenizer, row: dict, chat="auto") -> list[int]:
    """The prompt as the model sees it at generation: the template with the generation prompt
    (conversational rows) or the prompt text with the tokenizer's special tokens (standard rows);
    ``chat`` is a data.chat_template mode (or a bool: template for every row or none)."""
    if templated(row, chat):
        return _render(tokenizer, prompt_messages(row), row, add_generation_prompt=True)
    return list(tokenizer(prompt_text(row))["input_ids"])


def completion_ids(tokenizer, text: str) -> list[int]:
    """The plain tokens of ``text`` plus EOS (the plain format of reward-model and DiffPO rows)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def context_ids(tokenizer, row: dict, chat="auto") -> list[int]:
    """The tokens before a step row's completion (``prompt_ids`` when it has no ``prefix``)."""
    if not row.get("prefix"):
        return prompt_ids(tokenizer, row, chat)
    if templated(row, chat):
        msgs = prompt_messages(row) + [{"role": "assistant", "content": row["prefix"]}]
        return _render(tokenizer, msgs, row, continue_final_message=True)
    return list(tokenizer(prompt_text(row) + row["prefix"])["input_ids"])


def row_width(max_prompt_length: int, max_completion_length: int, max_length: int = 0) -> int:
    """T of the arrays: data.max_length when set, else max_prompt_length + max_completion_length."""
    width = max_length or (max_prompt_length + max_completion_length)
    if width <= 0:
        raise ValueError("config key data.max_length: 0 needs data.max_prompt_length and data.max_completion_length > 0")
    return width


def truncate(p: list[int], c: list[int], *, max_prompt_length: int = 0, max_completion_length: int = 0,
             max_length: int = 0, truncation_mode: str = "keep_start") -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of one sequence after the per-part limits then max_length
    (module docstring); with keep_end the prompt loses its start first."""
    if truncation_mode not in TRUNCATION_MODES:
        raise ValueError(f"config key data.truncation_mode: {truncation_mode!r} is not one of "
                         f"{', '.join(TRUNCATION_MODES)}")
    if max_prompt_length:
        p = p[-max_prompt_length:]
    if max_completion_length:
        c = c[:max_completion_length]
    if max_length and len(p) + len(c) > max_length:
        if truncation_mode == "keep_start":
            p, c = p[:max_length], c[: max(0, max_length - len(p))]
        else:
            c = c[-max_length:]
            p = p[len(p) - (max_length - len(c)):] if max_length > len(c) else []
    return p, c


def _dropped(p: list[int], *, max_prompt_length: int = 0, max_length: int = 0, truncation_mode: str = "keep_start",
             always: bool = False, **_) -> bool:
    """TRL's filter: with keep_start (KTO: ``always``), a prompt that alone fills max_length."""
    if not max_length or (truncation_mode != "keep_start" and not always):
        return False
    return len(p[-max_prompt_length:] if max_prompt_length else p) >= max_length


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def _place(p: list[int], c: list[int], width: int, pad: int):
    ids = np.full(width, pad, np.int32)
    mask = np.zeros(width, bool)
    ids[: len(p) + len(c)] = p + c
    mask[len(p): len(p) + len(c)] = True
    return ids, mask


def encode(rows: list[dict], fmt: str, tokenizer, *, max_prompt_length: int, max_completion_length: int,
           max_length: int = 0, truncation_mode: str = "keep_start", chat_template: str = "auto",
           completion_end: str = "eos", report: dict | None = None) -> dict:
    """Batch-ready arrays, T = ``row_width(max_prompt_length, max_completion_length, max_length)``:

      paired, step  chosen_ids / rejected_ids [N, T] int32, chosen_mask / rejected_mask [N, T] bool
                    (step rows: prompt + prefix + completion, the prefix outside the masks)
      unpaired      input_ids [N, T] int32, completion_mask [N, T] bool, label [N] bool
      ranked        input_ids [N, K, T] int32, completion_mask [N, K, T] bool, scores [N, K]
                    float32, rank_mask [N, K] bool; K = the most completions of any row, the
                    missing ones all padding with score 0 and rank_mask False

    N counts the rows kept: rows whose prompt fills max_length are dropped (module docstring), and
    with ``completion_end="none"`` rows with an empty completion (nothing to score; the ELBO-KTO
    authors drop them too); ``report``, when given, gets ``dropped_rows`` (their count) and
    ``kept_index`` [N] int (the index in ``rows`` of each kept row). A ConfigError when every row
    is dropped.
    """
    check_template(tokenizer, rows, chat_template)
    width = row_width(max_prompt_length, max_completion_length, max_length)
    lim = dict(max_prompt_length=max_prompt_length, max_completion_length=max_completion_length,
               max_length=max_length, truncation_mode=truncation_mode)
    pad = pad_id(tokenizer)
    cols: dict[str, list] = {}
    kept, empty = [], 0
    k = max((len(r["completions"]) for r in rows), default=0) if fmt == "ranked" else 0
    for i, row in enumerate(rows):
        comps = completions_of(row, fmt)
        if fmt == "ranked" and len(row["scores"]) != len(row["completions"]):
            raise ValueError(f"encode: ranked row {i} has {len(row['completions'])} completions and "
                             f"{len(row['scores'])} scores")
        p, cs = sequences(tokenizer, row, comps, chat_template, completion_end)
        if _dropped(p, always=fmt == "unpaired", **lim):
            continue
        cut = [truncate(p, c, **lim) for c in cs]
        if completion_end == "none" and not all(c for _, c in cut):
            empty += 1
            continue
        kept.append(i)
        placed = [_place(*pc, width, pad) for pc in cut]
        if fmt in ("paired", "step"):
            for side, (ids, mask) in zip(("chosen", "rejected"), placed):
                cols.setdefault(f"{side}_ids", []).append(ids)
                cols.setdefault(f"{side}_mask", []).append(mask)
        elif fmt == "unpaired":
            cols.setdefault("input_ids", []).append(placed[0][0])
            cols.setdefault("completion_mask", []).append(placed[0][1])
            cols.setdefault("label", []).append(row["label"])
        else:
            ids, mask = np.full((k, width), pad, np.int32), np.zeros((k, width), bool)
            scores, rank_mask = np.zeros(k, np.float32), np.zeros(k, bool)
            for j, (a, m) in enumerate(placed):
                ids[j], mask[j], scores[j], rank_mask[j] = a, m, row["scores"][j], True
            for name, v in (("input_ids", ids), ("completion_mask", mask), ("scores", scores), ("rank_mask", rank_mask)):
                cols.setdefault(name, []).append(v)
    dropped = len(rows) - len(kept)
    if report is not None:
        report["dropped_rows"] = report.get("dropped_rows", 0) + dropped
        report["kept_index"] = np.asarray(kept, np.int64)
    if dropped - empty:
        logging.warning("dropped %d of %d rows whose prompt alone fills data.max_length=%d (as TRL drops them)",
                        dropped - empty, len(rows), max_length)
    if empty:
        logging.warning("dropped %d of %d rows with an empty completion (data.completion_end=none leaves nothing to "
                        "score; the ELBO-KTO authors drop them too)", empty, len(rows))
    if rows and not kept and empty:
        from pojax.config import ConfigError

        raise ConfigError("data.completion_end", f"'none': every one of the {len(rows)} rows was dropped ({empty} "
                          "with an empty completion, the rest with a prompt that fills data.max_length)")
    if rows and not kept:
        from pojax.config import ConfigError

        raise ConfigError("data.max_length", f"{max_length}: every one of the {len(rows)} rows has a prompt that "
                          "fills it, so all were dropped; raise data.max_length or set data.max_prompt_length below it")
    return {k_: np.stack(v) if k_ != "label" else np.asarray(v, bool) for k_, v in cols.items()}


def pair_token_lists(rows: list[dict], tokenizer, *, max_prompt_length: int, max_completion_length: int,
                     max_length: int = 0, truncation_mode: str = "keep_start", chat_template: str = "auto",
                     completion_end: str = "eos") -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt ids, chosen ids, rejected ids) of each kept paired or step row, unpadded, truncated
    and dropped as ``encode`` does (the prefix of a step row is part of the prompt): the input of
    ``pojax.data.packing``. With keep_end truncation the two sides may keep different prompt
    lengths; the prompt returned is the chosen side's (the config refuses keep_end with packing)."""
    check_template(tokenizer, rows, chat_template)
    lim = dict(max_prompt_length=max_prompt_length, max_completion_length=max_completion_length,
               max_length=max_length, truncation_mode=truncation_mode)
    out = []
    for row in rows:
        p, (c, r) = sequences(tokenizer, row, completions_of(row, "step" if row.get("prefix") else "paired"),
                              chat_template, completion_end)
        if _dropped(p, **lim):
            continue
        prompt, chosen = truncate(p, c, **lim)
        _, rejected = truncate(p, r, **lim)
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
