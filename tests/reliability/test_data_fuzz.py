"""Malformed rows through pojax.data.formats.load and pojax.data.builders.prepare (local
format): each is a DataError naming file, row and field, or with skip_bad_rows a counted skip;
rows that are valid but degenerate (long, huge, identical chosen/rejected) come out of
tokenization with the fixed row width."""
import json

import numpy as np
import pytest

from pojax.data import builders, formats, tokenize
from pojax.data.formats import DataError
from tests.data.tokenizer_fixture import make_tokenizer

GOOD = {"prompt": "hi", "chosen": "good yes", "rejected": "bad no"}

# (format, row as the JSONL line's text, field the error must name)
BAD = [
    ("paired", {"prompt": "hi", "rejected": "bad"}, "chosen"),  # missing field
    ("paired", {"prompt": "hi", "chosen": "good"}, "rejected"),
    ("paired", {"chosen": "good", "rejected": "bad"}, "chosen"),  # no prompt, not conversations
    ("paired", {"prompt": "hi", "chosen": 7, "rejected": "bad"}, "chosen"),  # wrong types
    ("paired", {"prompt": 3.5, "chosen": "good", "rejected": "bad"}, "prompt"),
    ("paired", {"prompt": None, "chosen": "good", "rejected": "bad"}, "prompt"),
    ("paired", {"prompt": "hi", "chosen": ["good"], "rejected": "bad"}, "chosen"),
    ("paired", {"prompt": "hi", "chosen": "good", "rejected": {"text": "bad"}}, "rejected"),
    ("paired", {"prompt": [{"role": "user"}], "chosen": "good", "rejected": "bad"}, "prompt"),
    ("paired", {"prompt": [{"role": "user", "content": 1}], "chosen": "good", "rejected": "bad"}, "prompt"),
    ("paired", {"prompt": [], "chosen": "good", "rejected": "bad"}, "prompt"),
    ("paired", {"prompt": "hi", "chosen": "", "rejected": "bad"}, "chosen"),  # empty strings
    ("paired", {"prompt": "hi", "chosen": "good", "rejected": ""}, "rejected"),
    ("paired", {"prompt": "hi", "chosen": [{"role": "user", "content": "x"}], "rejected": "bad"}, "chosen"),
    ("paired", {"prompt": "hi", "chosen": "good", "rejected": "bad", "score_chosen": "high"}, "score_chosen"),
    ("paired", {"prompt": "hi", "chosen": "good", "rejected": "bad", "score_rejected": True}, "score_rejected"),
    ("paired", [1, 2, 3], "-"),  # not an object
    ("paired", "just a string", "-"),
    ("paired", None, "-"),
    ("unpaired", {"prompt": "hi", "completion": "good", "label": "yes"}, "label"),
    ("unpaired", {"prompt": "hi", "completion": "good"}, "label"),
    ("unpaired", {"prompt": "hi", "completion": "", "label": True}, "completion"),
    ("ranked", {"prompt": "hi", "completions": ["a"], "scores": [1]}, "completions"),
    ("ranked", {"prompt": "hi", "completions": ["a", "b"], "scores": [1]}, "scores"),
    ("ranked", {"prompt": "hi", "completions": ["a", "b"], "scores": [1, "x"]}, "scores"),
    ("ranked", {"prompt": "hi", "completions": ["a", ""], "scores": [1, 2]}, "completions"),
    ("step", {"prompt": "hi", "prefix": None, "chosen_step": "a", "rejected_step": "b"}, "prefix"),
    ("step", {"prompt": "hi", "prefix": "", "chosen_step": 1, "rejected_step": "b"}, "chosen_step"),
    ("hh_rlhf", {"chosen": "no markers", "rejected": "\n\nHuman: a\n\nAssistant: b"}, "chosen"),
    ("hh_rlhf", {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: z\n\nAssistant: c"}, "rejected"),
]
BAD_LINES = ['{"prompt": "hi", "chosen": "good"', "not json at all", '{"prompt": "hi",, }']  # invalid JSON


def _write(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def _good(fmt):
    return {"paired": GOOD, "unpaired": {"prompt": "hi", "completion": "good", "label": True},
            "ranked": {"prompt": "hi", "completions": ["a", "b"], "scores": [1, 2]},
            "step": {"prompt": "hi", "prefix": "", "chosen_step": "a", "rejected_step": "b"},
            "hh_rlhf": {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}}[fmt]


@pytest.mark.parametrize("fmt,row,field", BAD, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD)])
def test_bad_row_is_a_data_error_naming_file_row_field(tmp_path, fmt, row, field):
    path = _write(tmp_path / "d.jsonl", [json.dumps(_good(fmt)), json.dumps(row)])
    where = r"d\.jsonl: row 1: " + ("(?!field)" if field == "-" else f"field '{field}'")  # "-": the row as a whole
    with pytest.raises(DataError, match=where):
        formats.load(path, fmt)
    assert len(formats.load(path, fmt, skip_bad_rows=True)) == 1


def test_invalid_json_lines_are_data_errors(tmp_path):
    for line in BAD_LINES:
        path = _write(tmp_path / "d.jsonl", [json.dumps(GOOD), line])
        with pytest.raises(DataError, match=r"d\.jsonl: row 1: not valid JSON"):
            formats.load(path, "paired")


def test_skip_mode_counts_every_bad_row_through_load_and_prepare(tmp_path, caplog):
    paired_bad = [json.dumps(r) for f, r, _ in BAD if f == "paired"] + BAD_LINES
    lines = []
    for bad in paired_bad:
        lines += [json.dumps(GOOD), bad]
    path = _write(tmp_path / "train.jsonl", lines)
    with caplog.at_level("WARNING"):
        rows = formats.load(path, "paired", skip_bad_rows=True)
    assert len(rows) == len(paired_bad)
    assert f"skipped {len(paired_bad)} bad rows of {2 * len(paired_bad)}" in caplog.text
    with pytest.raises(DataError, match=r"train\.jsonl: row 1: field 'chosen': missing"):
        builders.prepare("paired", path, str(tmp_path / "tfds"))
    sources = builders.prepare("paired", path, str(tmp_path / "tfds"), skip_bad_rows=True)
    assert sources["train"].skipped_rows == len(paired_bad) and len(sources["train"]) == len(paired_bad)


def test_malformed_row_count():
    """The figure the README quotes: malformed rows tried (each as its own case, plus the skip-mode files)."""
    assert len(BAD) + len(BAD_LINES) + 1 == 34  # + the non-UTF-8 line below


def test_non_utf8_bytes_are_a_data_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"prompt": "hi \xff\xfe", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl: row 1"):
        formats.load(str(path), "paired")


def test_degenerate_but_valid_rows_tokenize_to_the_fixed_width(tmp_path):
    """Accepted, not errors: a prompt far past max_prompt_length (left-truncated), a huge row
    (~1 MB completion, right-truncated), chosen == rejected (a zero-margin pair), empty prompt."""
    huge = " ".join(["good"] * 200_000)
    rows = [{"prompt": " ".join(["hi"] * 500), "chosen": "good", "rejected": "bad"},
            {"prompt": "hi", "chosen": huge, "rejected": "bad"},
            {"prompt": "hi", "chosen": "good yes", "rejected": "good yes"},
            {"prompt": "", "chosen": "good", "rejected": "bad"}]
    path = _write(tmp_path / "d.jsonl", [json.dumps(r) for r in rows])
    loaded = formats.load(path, "paired")
    assert len(loaded) == 4
    out = tokenize.encode(loaded, "paired", make_tokenizer(), max_prompt_length=8, max_completion_length=8)
    for k, v in out.items():
        assert np.shape(v)[0] == 4, k
        if np.ndim(v) >= 2:
            assert np.shape(v)[-1] == 16, (k, np.shape(v))
