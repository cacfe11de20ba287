"""SFT rows (``pojax.data.formats``, format "sft") → the tokens and loss mask TRL 1.16's
``SFTTrainer._prepare_dataset`` trains on.

Per row (``data.chat_template`` as in pojax.data.tokenize):
  messages (language modeling, conversational)
      ids = ``apply_chat_template(messages)``; with ``assistant_only_loss`` the loss mask is the
      template's assistant mask (``return_assistant_tokens_mask``: the tokens inside its
      ``{% generation %}`` … ``{% endgeneration %}`` markers), else every token.
  text (language modeling, standard)
      ids = ``tokenizer(text + eos_token)`` (EOS as text, unless the text ends with it); every
      token is trained. Never templated (TRL's rule; data.chat_template=yes does not apply).
  prompt, completion (prompt-completion)
      prompt ids and prompt + completion ids exactly as DPO renders one completion
      (pojax.data.tokenize: the chat template for conversational rows, raw text + EOS for
      standard ones), the completion starting where they diverge; with ``completion_only_loss``
      (TRL's default for this layout) only the completion is trained, else every token. With
      ``assistant_only_loss`` the assistant mask applies too (a token is trained when every
      applicable mask has it, TRL's ``build_labels``).
``assistant_only_loss`` renders with the tokenizer's template when it has generation markers, else
with TRL's training version of that template (``trl.chat_template_utils.get_training_chat_template``,
used when TRL is installed: it knows the templates of Llama 3, Qwen 2.5 / 3, Gemma, …); a template
that has neither is a ConfigError naming data.assistant_only_loss and the tokenizer.

Truncation is TRL's for SFT: the whole sequence is cut to the row width T (data.max_length, or
max_prompt_length + max_completion_length when it is 0), keeping its start (keep_start) or its
end (keep_end); the per-part limits of preference rows do not apply. A row left with no trained
token (a prompt filling T under keep_start) is dropped and counted, as TRL drops it.
"""
from __future__ import annotations

import re

import numpy as np

from pojax.data import tokenize

_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


def training_template(tokenizer) -> str | None:
    """The chat template to render with for assistant_only_loss (module docstring): None = the
    tokenizer's own (it has generation markers), else TRL's training template for it. Raises
    ConfigError (data.assistant_only_loss) when there is none."""
    from pojax.config import ConfigError

    template = getattr(tokenizer, "chat_template", None)
    template = template.get("default") if isinstance(template, dict) else template
    where = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if not template:
        raise ConfigError("data.assistant_only_loss", f"True needs a chat template, and the tokenizer at {where} has none")
    if _GENERATION.search(template):
        return None
    try:
        from trl.chat_template_utils import get_training_chat_template
    except ImportError:
        patched = None
    else:
        try:
            patched = get_training_chat_template(tokenizer)
        except (ValueError, NotImplementedError):
            patched = None
    if not patched:
        raise ConfigError("data.assistant_only_loss", f"True, but the chat template of the tokenizer at {where} has no "
                          "{% generation %} … {% endgeneration %} markers around the assistant's turns, and TRL (pip "
                          "install trl) has no training version of it; add the markers to the template (tokenizer_config"
                          ".json's chat_template) or set data.assistant_only_loss=False")
    return patched


def _render(tokenizer, messages, row, template, *, assistant_mask: bool, **kw):
    """(ids, assistant mask or None) of ``messages``."""
    extra = {"chat_template": template} if template else {}
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=assistant_mask,
                                        **tokenize.template_kwargs(row), **extra, **kw)
    return list(out["input_ids"]), (list(out["assistant_masks"]) if assistant_mask else None)


def _standard(tokenizer, text: str) -> list[int]:
    eos = tokenizer.eos_token or ""
    return list(tokenizer(text if text.endswith(eos) else text + eos)["input_ids"])


def sequence(tokenizer, row: dict, *, completion_only_loss: bool = True, assistant_only_loss: bool = False,
             chat_template: str = "auto", template: str | None = None) -> tuple[list[int], list[bool]]:
    """(ids, loss mask) of one SFT row, untruncated (module docstring). ``template``: the training
    template from ``training_template`` (None: the tokenizer's own)."""
    conversational = tokenize.is_conversational(row) and chat_template != "no"
    if "text" in row:
        ids = _standard(tokenizer, row["text"])
        return ids, [True] * len(ids)
    if "messages" in row:
        if not conversational:
            ids = _standard(tokenizer, "\n".join(m["content"] for m in row["messages"]))
            return ids, [True] * len(ids)
        ids, amask = _render(tokenizer, row["messages"], row, template, assistant_mask=assistant_only_loss)
        return ids, [bool(a) for a in amask] if assistant_only_loss else [True] * len(ids)
    completion = row.get("completion_messages") or row["completion"]
    if tokenize.templated(row, chat_template):
        prompt = tokenize.prompt_messages(row)
        p, _ = _render(tokenizer, prompt, row, template, assistant_mask=False, add_generation_prompt=True)
        ids, amask = _render(tokenizer, prompt + tokenize.as_messages(completion), row, template,
                             assistant_mask=assistant_only_loss)
    else:
        p, amask = list(tokenizer(tokenize.prompt_text(row))["input_ids"]), None
        ids = _standard(tokenizer, tokenize.prompt_text(row) + tokenize.text_of(completion))
    n = tokenize.common_prefix(p, ids)
    tokenize.warn_prompt_cut(tokenizer, p, n)
    mask = [i >= n or not completion_only_loss for i in range(len(ids))]
    if assistant_only_loss and amask is not None:
        mask = [m and bool(a) for m, a in zip(mask, amask)]
    return ids, mask


def encode(rows: list[dict], tokenizer, *, width: int, truncation_mode: str = "keep_start",
           completion_only_loss: bool = True, assistant_only_loss: bool = False, chat_template: str = "auto",
           path: str = "", report: dict | None = None) -> dict:
    """SFT arrays of normalized SFT rows: input_ids [N, T] int32 and completion_mask [N, T] bool
    (the trained tokens), right-padded to ``width`` = T. N counts the rows kept (module
    docstring); ``report`` gets dropped_rows and kept_index as in ``tokenize.encode``, and
    full_lengths (every row's token count before truncation). Raises
    DataError (``path``, row) for a row whose assistant mask is empty, ConfigError when every
    row is dropped or the template cannot mark the assistant's turns."""
    from pojax.config import ConfigError
    from pojax.data.formats import DataError

    if truncation_mode not in tokenize.TRUNCATION_MODES:
        raise ConfigError("data.truncation_mode", f"{truncation_mode!r} is not one of {', '.join(tokenize.TRUNCATION_MODES)}")
    tokenize.check_template(tokenizer, [r for r in rows if "text" not in r], chat_template)
    template = training_template(tokenizer) if assistant_only_loss else None
    pad = tokenize.pad_id(tokenizer)
    ids_out, masks_out, kept, full = [], [], [], []
    for i, row in enumerate(rows):
        ids, mask = sequence(tokenizer, row, completion_only_loss=completion_only_loss,
                             assistant_only_loss=assistant_only_loss, chat_template=chat_template, template=template)
        if assistant_only_loss and not (tokenize.is_conversational(row) and chat_template != "no"):
            raise ConfigError("data.assistant_only_loss", f"True needs conversational rows (messages), and "
                              f"{path or 'data.path'} row {i} is plain text (TRL refuses it too)")
        if assistant_only_loss and not any(mask):
            raise DataError(path or "data.path", i, "messages" if "messages" in row else "completion",
                            "no assistant tokens in the chat template's assistant mask (data.assistant_only_loss): the "
                            "row has no assistant turn, or the template's {% generation %} markers enclose none")
        full.append(len(ids))
        cut = slice(None, width) if truncation_mode == "keep_start" else slice(-width, None)
        ids, mask = ids[cut], mask[cut]
        if not any(mask):
            continue
        row_ids, row_mask = np.full(width, pad, np.int32), np.zeros(width, bool)
        row_ids[: len(ids)], row_mask[: len(mask)] = ids, mask
        ids_out.append(row_ids)
        masks_out.append(row_mask)
        kept.append(i)
    dropped = len(rows) - len(kept)
    if report is not None:
        report["dropped_rows"] = report.get("dropped_rows", 0) + dropped
        report["kept_index"] = np.asarray(kept, np.int64)
        report["full_lengths"] = full
    if rows and not kept:
        raise ConfigError("data.max_length", f"{width} tokens leave none of the {len(rows)} rows a token to train on "
                          f"({truncation_mode}); raise data.max_length")
    return {"input_ids": np.stack(ids_out), "completion_mask": np.stack(masks_out)}
