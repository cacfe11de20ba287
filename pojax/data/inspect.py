"""See what you train on: ``python -m pojax.data.inspect --config=configs/dpo.py
--config.model.path=DIR --config.data.path=FILE [--rows=3]``.

Reads the run's config exactly as ``python -m pojax.main`` does (the same ``--config.*``
overrides, checks and one-line errors, exit status 2) and prints

- the first ``--rows`` rows of ``data.path`` as training encodes them (the rows
  ``pojax.train.data`` reads, through ``pojax.data.tokenize.encode`` with the run's limits, in
  file order, before the held-out split): each sequence decoded with its special tokens, ``▕``
  where the prompt ends and the completion (the loss mask) begins and again where it ends, the
  padding as ``⟦pad ×N⟧``, and the tokens truncation removed as ``⟦… N prompt tokens cut⟧`` /
  ``⟦N completion tokens cut …⟧``, with the token counts of each part;
- statistics of every row: prompt and completion lengths before truncation (mean, percentiles,
  max; from ``tokenize.sequences``, the step ``encode`` truncates), how many rows the config
  drops (a prompt that alone fills data.max_length, as TRL drops it) and truncates (prompt, each
  completion), and how much of the row width is padding; the same for the upstream test split
  of hh_rlhf / ultrafeedback_binarized / kto_mix layouts.

SFT rows (data.format=sft, encoded by ``pojax.data.sft``) print each sequence with ``▕`` at every
edge of a trained span (an assistant-only mask trains several), and the statistics of sequence
lengths before truncation, trained tokens per row, drops and padding.
"""
from __future__ import annotations

import sys

import numpy as np
from absl import app, flags

from pojax.config import ConfigError, validate

_ROWS = flags.DEFINE_integer("rows", 3, "Rows of data.path to print decoded (0: statistics only).")

BOUNDARY = "▕"  # between prompt and completion, and after the completion
PERCENTILES = (50, 90, 99)


def sequences(arrays: dict, fmt: str, i: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, ids [T] int32, completion mask [T] bool) of each sequence of row ``i`` of
    ``encode``'s arrays: chosen and rejected (paired, step), the completion (unpaired), each
    ranked completion that exists (ranked)."""
    if fmt in ("paired", "step"):
        return [(side, arrays[f"{side}_ids"][i], arrays[f"{side}_mask"][i]) for side in ("chosen", "rejected")]
    if fmt == "unpaired":
        label = "desirable" if arrays["label"][i] else "undesirable"
        return [(f"completion ({label})", arrays["input_ids"][i], arrays["completion_mask"][i])]
    return [(f"completion {j} (score {arrays['scores'][i, j]:g})", arrays["input_ids"][i, j],
             arrays["completion_mask"][i, j]) for j in range(arrays["input_ids"].shape[1]) if arrays["rank_mask"][i, j]]


def parts(ids: np.ndarray, mask: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(prompt ids, completion ids, padding count) of one encoded sequence: the completion is the
    masked span (tokenize writes prompt, completion, padding in that order); without a masked
    token (an empty completion) the prompt runs to the trailing padding."""
    where = np.flatnonzero(mask)
    if len(where):
        start, end = where[0], where[-1] + 1
    else:
        nonpad = np.flatnonzero(ids != pad)
        start = end = nonpad[-1] + 1 if len(nonpad) else 0
    return ids[:start], ids[start:end], len(ids) - end


def render(tokenizer, prompt: np.ndarray, completion: np.ndarray, padding: int, *, prompt_cut: int = 0,
           completion_cut: int = 0) -> str:
    """One sequence as text: cut prompt tokens, the prompt, ``▕``, the completion, ``▕``, cut
    completion tokens, padding (special tokens shown)."""
    decode = lambda ids: tokenizer.decode([int(t) for t in ids], skip_special_tokens=False,
                                          clean_up_tokenization_spaces=False)
    return "".join([f"⟦… {prompt_cut} prompt tokens cut⟧" if prompt_cut else "", decode(prompt), BOUNDARY,
                    decode(completion), BOUNDARY, f"⟦{completion_cut} completion tokens cut …⟧" if completion_cut else "",
                    f"⟦pad ×{padding}⟧" if padding else ""])


def encode_kwargs(config) -> dict:
    """The keywords pojax.train.data passes to ``tokenize.encode``: the config's limits, chat
    template mode and completion end."""
    d = config.data
    return dict(max_prompt_length=d.max_prompt_length, max_completion_length=d.max_completion_length,
                max_length=d.max_length, truncation_mode=d.truncation_mode, chat_template=d.chat_template,
                completion_end=d.get("completion_end", "eos"))


def file_rows(config) -> tuple[str, list[dict], list[dict] | None]:
    """(row format, normalized training rows, upstream test rows or None) as pojax.train.data
    tokenizes them: paired rows unpaired under an unpaired loss, ranked rows paired for
    curry_dpo."""
    from pojax.data import formats
    from pojax.train import data

    train, test = data._read(config)
    fmt = data.row_format(config)
    source = data.FILE_FORMATS[config.data.format]
    convert = formats.unpair if fmt == "unpaired" and source == "paired" else \
        formats.ranked_pairs if fmt == "paired" and source == "ranked" else None
    if convert is not None:
        train, test = convert(train), None if test is None else convert(test)
    return fmt, train, test


def statistics(rows: list[dict], fmt: str, tokenizer, config) -> dict:
    """``rows`` encoded as training encodes them, with the lengths before truncation:
    ``{"arrays": encode's arrays, "kept": [N] index in rows of each encoded row, "full": [len(rows)]
    [S] (prompt, completion) tokens of each sequence before truncation (tokenize.sequences, the
    step encode truncates), "trained": [len(rows)] [S] (prompt, completion) tokens kept, None for
    a dropped row, "width": T}``."""
    from pojax.data import tokenize

    report: dict = {}
    try:
        arrays = tokenize.encode(rows, fmt, tokenizer, **encode_kwargs(config), report=report)
        full = [[(len(p), len(c)) for c in cs] for p, cs in
                (tokenize.sequences(tokenizer, row, tokenize.completions_of(row, fmt), config.data.chat_template,
                                    config.data.get("completion_end", "eos"))
                 for row in rows)]
    except ConfigError:
        raise
    except ValueError as e:  # as pojax.train.data reports it
        raise ConfigError("data.chat_template", str(e).removeprefix("config key data.chat_template: ")) from None
    pad = tokenize.pad_id(tokenizer)
    trained: list = [None] * len(rows)
    for j, i in enumerate(report["kept_index"]):
        trained[i] = [(len(p), len(c)) for p, c, _ in (parts(ids, mask, pad) for _, ids, mask in
                                                       sequences(arrays, fmt, j))]
    width = next(iter(arrays.values())).shape[-1]
    return {"arrays": arrays, "kept": list(report["kept_index"]), "full": full, "trained": trained, "width": width}


def _percentiles(values: list[int]) -> str:
    v = np.asarray(values)
    return "  ".join([f"mean {v.mean():7.1f}"] + [f"p{q} {np.percentile(v, q):6.0f}" for q in PERCENTILES] +
                     [f"max {v.max():6d}"])


def _share(k: int, n: int) -> str:
    return f"{k} ({100 * k / n:.1f}%)" if n else "0"


def summary(stats: dict, fmt: str) -> list[str]:
    """The statistics block of ``statistics(...)``: rows and dropped rows, then per part (the
    prompt, each side of a pair, or every completion) the lengths before truncation (mean,
    percentiles, max) and how many of the kept ones the config truncates, then the padding share
    of the kept rows."""
    full, trained = stats["full"], stats["trained"]
    n = len(full)
    lines = [f"rows {n}, dropped {_share(sum(t is None for t in trained), n)}"]
    # part -> [(full, trained or None)] (prompt, completion) of every sequence it covers
    groups: dict[str, list] = {"prompt": [(f[0], None if t is None else t[0]) for f, t in zip(full, trained)]}
    for f, t in zip(full, trained):
        for s in range(len(f)):
            name = ("chosen", "rejected")[s] if fmt in ("paired", "step") else "completion"
            groups.setdefault(name, []).append((f[s], None if t is None else t[s]))
    for name, items in groups.items():
        part = 0 if name == "prompt" else 1
        cut = sum(t is not None and t[part] < f[part] for f, t in items)
        lines.append(f"  {name + ' tokens':<18} {_percentiles([f[part] for f, _ in items])}   "
                     f"truncated {_share(cut, len(items))}")
    kept = [s for t in trained if t is not None for s in t]
    if kept:
        real = sum(p + c for p, c in kept)
        lines.append(f"  row width {stats['width']} tokens, {100 * (1 - real / (len(kept) * stats['width'])):.1f}% "
                     "of it padding")
    return lines


def sft_spans(ids: np.ndarray, mask: np.ndarray, pad: int) -> tuple[list[tuple[bool, np.ndarray]], int]:
    """([(trained?, ids)] runs of one encoded SFT sequence in order, padding count)."""
    end = len(ids)
    while end and ids[end - 1] == pad and not mask[end - 1]:
        end -= 1
    edges = [0] + [k for k in range(1, end) if mask[k] != mask[k - 1]] + [end]
    return [(bool(mask[a]), ids[a:b]) for a, b in zip(edges, edges[1:]) if b > a], len(ids) - end


def sft_statistics(rows: list[dict], tokenizer, config) -> dict:
    """SFT ``rows`` encoded as task=sft encodes them: {"arrays", "kept", "full": [len(rows)]
    sequence tokens before truncation, "width"}."""
    from pojax.data import sft, tokenize

    d, report = config.data, {}
    width = tokenize.row_width(d.max_prompt_length, d.max_completion_length, d.max_length)
    kw = dict(completion_only_loss=d.completion_only_loss, assistant_only_loss=d.assistant_only_loss,
              chat_template=d.chat_template)
    arrays = sft.encode(rows, tokenizer, width=width, truncation_mode=d.truncation_mode, path=d.path, report=report, **kw)
    return {"arrays": arrays, "kept": list(report["kept_index"]), "full": report["full_lengths"], "width": width}


def sft_summary(stats: dict, pad: int) -> list[str]:
    """Rows and drops, sequence tokens before truncation (and how many are cut), trained tokens
    per kept row, the padding share."""
    full, kept, ids, mask = stats["full"], stats["kept"], stats["arrays"]["input_ids"], stats["arrays"]["completion_mask"]
    real = [len(ids[j]) - sft_spans(ids[j], mask[j], pad)[1] for j in range(len(kept))]
    cut = sum(full[i] > r for i, r in zip(kept, real))
    return [f"rows {len(full)}, dropped {_share(len(full) - len(kept), len(full))}",
            f"  {'sequence tokens':<18} {_percentiles(full)}   truncated {_share(cut, len(kept))}",
            f"  {'trained tokens':<18} {_percentiles(mask.sum(axis=1).tolist())}",
            f"  row width {stats['width']} tokens, {100 * (1 - sum(real) / (len(kept) * stats['width'])):.1f}% of it padding"]


def describe_sft(config, tokenizer, rows: list[dict], num_rows: int, out=print) -> None:
    """``describe`` for SFT rows."""
    from pojax.data import tokenize

    decode = lambda ids: tokenizer.decode([int(t) for t in ids], skip_special_tokens=False,
                                          clean_up_tokenization_spaces=False)
    pad, stats = tokenize.pad_id(tokenizer), sft_statistics(rows, tokenizer, config)
    ids, mask = stats["arrays"]["input_ids"], stats["arrays"]["completion_mask"]
    for j, i in enumerate(stats["kept"][:num_rows]):
        spans, padding = sft_spans(ids[j], mask[j], pad)
        kept, full = len(ids[j]) - padding, stats["full"][i]
        out("")
        out(f"── row {i} · {kept} tokens{f' (of {full})' if full > kept else ''} │ trained "
            f"{int(mask[j].sum())} in {sum(t for t, _ in spans)} span(s) between {BOUNDARY} │ padding {padding}")
        out("".join((f"{BOUNDARY}{decode(run)}{BOUNDARY}" if trained else decode(run)) for trained, run in spans)
            + (f"⟦pad ×{padding}⟧" if padding else ""))
    lines = sft_summary(stats, pad)
    out("")
    out(f"── statistics of data.path (token counts before truncation): {lines[0]}")
    for line in lines[1:]:
        out(line)


def describe(config, tokenizer, num_rows: int, out=print) -> None:
    """Prints the first ``num_rows`` rows of data.path as training encodes them and the
    statistics of the file (and of the upstream test split, when the layout has one)."""
    fmt, train_rows, test_rows = file_rows(config)
    d = config.data
    out(f"pojax inspect: {d.path} ({d.format}, trained as {fmt} rows); tokenizer {d.tokenizer or config.model.path} "
        f"({len(tokenizer)} tokens, eos {tokenizer.eos_token!r}, chat template "
        f"{'set' if getattr(tokenizer, 'chat_template', None) else 'none'}, data.chat_template={d.chat_template})")
    out(f"limits: data.max_prompt_length={d.max_prompt_length} data.max_completion_length={d.max_completion_length} "
        f"data.max_length={d.max_length} data.truncation_mode={d.truncation_mode}")
    if fmt == "sft":
        out(f"SFT loss: data.completion_only_loss={d.completion_only_loss} "
            f"data.assistant_only_loss={d.assistant_only_loss}")
        return describe_sft(config, tokenizer, train_rows, num_rows, out)
    from pojax.data import tokenize

    pad = tokenize.pad_id(tokenizer)
    stats = statistics(train_rows, fmt, tokenizer, config)
    for j, i in enumerate(stats["kept"][:num_rows]):
        for s, (name, ids, mask) in enumerate(sequences(stats["arrays"], fmt, j)):
            prompt, completion, padding = parts(ids, mask, pad)
            (fp, fc), (tp, tc) = stats["full"][i][s], stats["trained"][i][s]
            out("")
            out(f"── row {i} · {name} · prompt {tp} tokens{f' (of {fp})' if fp > tp else ''} │ "
                f"completion {tc} tokens{f' (of {fc})' if fc > tc else ''} │ padding {padding}")
            out(render(tokenizer, prompt, completion, padding, prompt_cut=fp - tp, completion_cut=fc - tc))
    blocks = [("statistics of data.path", stats)]
    if test_rows is not None:
        blocks.append(("statistics of the upstream test split", statistics(test_rows, fmt, tokenizer, config)))
    for title, block in blocks:
        lines = summary(block, fmt)
        out("")
        out(f"── {title} (token counts before truncation): {lines[0]}")
        for line in lines[1:]:
            out(line)


def main(argv) -> int:
    del argv
    from pojax import main as pojax_main
    from pojax import preflight

    config = pojax_main._CONFIG.value
    if config is None:
        print("pojax: --config is required (e.g. --config=configs/dpo.py)", file=sys.stderr)
        return 2
    if _ROWS.value < 0:
        print(f"pojax: --rows={_ROWS.value}: must be >= 0", file=sys.stderr)
        return 2
    try:
        validate(config)
        if config.data.format == "gym":
            raise ConfigError("data.format", "'gym' is built in memory, not read from a file: set data.format and "
                              "data.path to the file to inspect")
        from pojax import hub

        hub.resolve(config)
        preflight.check_paths(config)
        from pojax.train.run import load_tokenizer

        describe(config, load_tokenizer(config), _ROWS.value)
    except pojax_main._user_errors() as e:  # the same one line (and status) as python -m pojax.main
        print(f"pojax: {e}", file=sys.stderr)
        return 2
    return 0


def run() -> None:
    from pojax import main as pojax_main  # defines --config (config_flags) and its one-line flag errors

    app.run(lambda argv: sys.exit(main(argv)), flags_parser=pojax_main._parse_flags)


if __name__ == "__main__":
    run()
