"""``python -m pojax.data.inspect`` on a JSONL file with Meta's Llama 3 tokenizer: the rows it
prints are the decoded arrays training builds (read back through pojax.train.data), and its
counts and percentiles equal those computed from untruncated arrays of the same rows."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from pojax.train.data import file_data
from tests.data.real_tokenizers import real_tokenizers  # noqa: F401 (the session's tokenizers fixture)
from tests.train.helpers import ROOT, recipe

LIMITS = {"data.max_prompt_length": 40, "data.max_completion_length": 12}
SYSTEM = {"role": "system", "content": "You are a terse assistant."}


def msg(role, content):
    return {"role": role, "content": content}


ROWS = [  # conversational and plain-text rows; some prompts / completions longer than LIMITS
    {"prompt": [msg("user", "Name a primary color.")], "chosen": [msg("assistant", "Blue.")],
     "rejected": [msg("assistant", "Seven, and the rest of this answer is long enough to be cut at twelve tokens.")]},
    {"prompt": [SYSTEM, msg("user", "What is 2+2?"), msg("assistant", "4"), msg("user", "And 3+3?")],
     "chosen": [msg("assistant", "6")], "rejected": [msg("assistant", "It is 7.")]},
    {"prompt": "Plain text prompt:", "chosen": " kept as it is", "rejected": " 😀 unicode"},
    {"prompt": [msg("user", "Write a function.")], "chosen": [msg("assistant", "```py\ndef f(x):\n    return x\n```")],
     "rejected": [msg("assistant", "  no  ")]},
    {"prompt": [msg("user", "Short?")], "chosen": [msg("assistant", "Yes.")], "rejected": [msg("assistant", "No.")]},
]


@pytest.fixture(scope="module")
def tokenizer_dir(real_tokenizers):
    """Meta's Llama 3 tokenizer with the Llama 3.1 Instruct chat template, saved."""
    real_tokenizers.get("llama3_1_instruct")
    return real_tokenizers.path("llama3_1_instruct")


def inspect_cmd(*args):
    return subprocess.run([sys.executable, "-m", "pojax.data.inspect", "--config=configs/dpo.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def decode(tokenizer, ids):
    return tokenizer.decode([int(t) for t in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def training_rows(tokenizer, path, **limits):
    """The pairs run_train trains on (pojax.train.data.file_data, nothing held out): [(prompt ids,
    completion ids, padding)] per side, in training's order."""
    config = recipe("dpo", **{"data.path": path, "eval.num_examples": 0, **limits})
    pref = file_data(config, tokenizer).preference
    out = []
    for j in range(len(pref["chosen_ids"])):
        pair = []
        for side in ("chosen", "rejected"):
            ids, mask = pref[f"{side}_ids"][j], pref[f"{side}_mask"][j]
            start, end = np.flatnonzero(mask)[[0, -1]]
            pair.append((ids[:start], ids[start:end + 1], len(ids) - end - 1))
        out.append(pair)
    return out


def match(trained, full):
    """The untruncated pair of each trained pair: the one whose prompt ends with the trained
    prompt and whose completions start with the trained ones (TRL keeps the prompt's end and
    the completion's start), found by content since dropped rows change training's order."""
    out = []
    for pair in trained:
        hits = [w for w in full if all(list(fp[len(fp) - len(p):]) == list(p) and list(fc[:len(c)]) == list(c)
                                       for (p, c, _), (fp, fc, _) in zip(pair, w))]
        assert len(hits) == 1, pair
        out.append(hits[0])
    return out


@pytest.mark.parametrize("limits", [LIMITS, {"data.max_prompt_length": 0, "data.max_completion_length": 0,
                                             "data.max_length": 48, "data.truncation_mode": "keep_start"}],
                         ids=["per_part_limits", "trl_max_length"])
def test_printed_rows_and_counts_are_what_training_sees(tokenizer_dir, tmp_path, limits):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    data = str(tmp_path / "prefs.jsonl")
    with open(data, "w") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS)
    proc = inspect_cmd(f"--config.data.tokenizer={tokenizer_dir}", f"--config.data.path={data}",
                       *(f"--config.{k}={v}" for k, v in limits.items()), f"--rows={len(ROWS)}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout

    trained = training_rows(tokenizer, data, **limits)
    full = training_rows(tokenizer, data, **{"data.max_prompt_length": 4096, "data.max_completion_length": 4096})
    whole = match(trained, full)
    expected = []  # (side, rendered text) of every trained sequence, with its cut tokens, from the arrays
    for pair, untruncated in zip(trained, whole):
        for side, (p, c, pad), (fp, fc, _) in zip(("chosen", "rejected"), pair, untruncated):
            expected.append((side, (f"⟦… {len(fp) - len(p)} prompt tokens cut⟧" if len(fp) > len(p) else "") +
                             decode(tokenizer, p) + "▕" + decode(tokenizer, c) + "▕" +
                             (f"⟦{len(fc) - len(c)} completion tokens cut …⟧" if len(fc) > len(c) else "") +
                             (f"⟦pad ×{pad}⟧" if pad else "")))
    blocks = re.findall(r"\n\n── row (\d+) · (chosen|rejected) · [^\n]*\n(.*?)(?=\n\n── )", out, re.S)
    assert len(blocks) == 2 * len(trained)
    assert sorted((side, text) for _, side, text in blocks) == sorted(expected)
    # printed row i is file row i: its completion starts as the file's does
    for i, side, text in blocks:
        row = ROWS[int(i)]
        completion = row[side] if isinstance(row[side], str) else row[side][0]["content"]
        assert completion.strip()[:3] in text.split("▕")[1], (i, side, text)
    assert any("⟦… " in t for _, t in expected) or "max_length" in "".join(limits)
    assert any("completion tokens cut" in t for _, t in expected)

    # statistics: lengths of the untruncated arrays, what the trained arrays kept, counted here
    dropped = len(full) - len(trained)
    if limits.get("data.max_length"):  # TRL's filter: a prompt that alone fills max_length
        assert dropped == sum(len(w[0][0]) >= limits["data.max_length"] for w in full) >= 1
    assert f"rows {len(ROWS)}, dropped {dropped} ({100 * dropped / len(ROWS):.1f}%)" in out
    parts = {"prompt": ([len(w[0][0]) for w in full], [(len(w[0][0]), len(t[0][0])) for t, w in zip(trained, whole)]),
             "chosen": ([len(w[0][1]) for w in full], [(len(w[0][1]), len(t[0][1])) for t, w in zip(trained, whole)]),
             "rejected": ([len(w[1][1]) for w in full], [(len(w[1][1]), len(t[1][1])) for t, w in zip(trained, whole)])}
    for name, (lengths, kept) in parts.items():
        line = next(line for line in out.splitlines() if line.strip().startswith(f"{name} tokens"))
        cut = sum(t < f for f, t in kept)
        assert f"truncated {cut} ({100 * cut / len(lengths):.1f}%)" in line, line
        assert f"max {max(lengths):6d}" in line and f"p50 {np.percentile(lengths, 50):6.0f}" in line, line
        assert f"p90 {np.percentile(lengths, 90):6.0f}" in line and f"mean {np.mean(lengths):7.1f}" in line, line
    width = limits.get("data.max_length") or limits["data.max_prompt_length"] + limits["data.max_completion_length"]
    real = sum(len(p) + len(c) for pair in trained for p, c, _ in pair)
    assert f"row width {width} tokens, {100 * (1 - real / (2 * len(trained) * width)):.1f}% of it padding" in out


def test_bad_input_is_one_line_as_in_pojax_main(tokenizer_dir, tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    main = lambda *a: subprocess.run([sys.executable, "-m", "pojax.main", "--config=configs/dpo.py",
                                      f"--workdir={tmp_path / 'run'}", *a], cwd=ROOT, capture_output=True, text=True,
                                     timeout=300)
    for args in ([f"--config.data.tokenizer={tokenizer_dir}", "--config.data.max_prompt_lenght=3"],
                 [f"--config.data.tokenizer={tokenizer_dir}", f"--config.data.path={tmp_path / 'missing.jsonl'}"]):
        got, want = inspect_cmd(*args), main(*args)
        assert (got.returncode, want.returncode) == (2, 2)
        assert got.stderr == want.stderr and got.stderr.count("\n") == 1, got.stderr
    bad = inspect_cmd(f"--config.data.tokenizer={tokenizer_dir}", f"--config.data.path={data}")
    assert bad.returncode == 2 and bad.stderr == f"pojax: {data}: row 1: field 'rejected': missing\n", bad.stderr
    gym = inspect_cmd(f"--config.data.tokenizer={tokenizer_dir}", "--config.data.format=gym")
    assert gym.returncode == 2 and gym.stderr.startswith("pojax: config key data.format: 'gym' is built in memory")


def test_sft_rows_show_every_trained_span(real_tokenizers, tmp_path):
    """data.format=sft with assistant_only_loss, in-process: each printed row marks exactly the
    assistant turns of a multi-turn conversation (independently: the messages' contents), and the
    statistics count the row that max_length leaves nothing to train on."""
    from pojax.data.inspect import describe
    from pojax.train.data import sft_data

    tokenizer = real_tokenizers.get("qwen3_training")  # a template with {% generation %} markers
    turns = [msg("user", "What is 2+2?"), msg("assistant", "4."), msg("user", "And 3+3?"), msg("assistant", "6.")]
    rows = [{"messages": turns}, {"messages": [msg("user", "word " * 60), msg("assistant", "ok")]},
            {"messages": [SYSTEM, msg("user", "Hi"), msg("assistant", "Hello!")]}]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = recipe("dpo", **{"task": "sft", "data.path": str(data), "data.format": "sft", "data.max_length": 48,
                              "data.assistant_only_loss": True})
    lines = []
    describe(config, tokenizer, 3, out=lines.append)
    out = "\n".join(lines)
    blocks = [re.match(r"row (\d+) · (\d+) tokens[^\n]*trained (\d+) in (\d+) span\(s\)[^\n]*\n(.*)", b, re.S).groups()
              for b in out.split("\n\n── ")[1:] if b.startswith("row ")]
    assert [b[0] for b in blocks] == ["0", "2"]  # row 1's 60-word prompt fills max_length: dropped, as TRL drops it
    spans = re.findall("▕(.*?)▕", blocks[0][4], re.S)
    assert len(spans) == 2 and spans[0].startswith("<think>") and "4." in spans[0] and "6." in spans[1]
    assert "2+2" not in "".join(spans) and "2+2" in blocks[0][4]
    arrays = sft_data(config, tokenizer).sft  # what task=sft trains on: the same tokens and mask
    assert int(blocks[0][2]) == int(arrays["completion_mask"][0].sum())
    assert int(blocks[1][1]) == int((arrays["input_ids"][1] != tokenizer.pad_token_id).sum())
    assert "rows 3, dropped 1 (33.3%)" in out and "truncated 0 (0.0%)" in out and "data.assistant_only_loss=True" in out
