"""Rows in TRL's column conventions are read from JSONL / parquet and validated; bad rows name
file, row and field."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pojax.data.formats import DataError, load


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_paired_strings_and_conversations(tmp_path):
    rows = [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
        {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "assistant", "content": "go away"}]},
        # UltraFeedback-binarized: whole conversations, no prompt column
        {"chosen": [{"role": "user", "content": "name a color"}, {"role": "assistant", "content": "blue"}],
         "rejected": [{"role": "user", "content": "name a color"}, {"role": "assistant", "content": "seven"}]},
    ]
    out = load(write_jsonl(tmp_path / "p.jsonl", rows), "paired")
    assert out[0] == {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": "5", "prompt_text": "2+2?"}
    assert out[1]["chosen"] == "hello" and out[1]["prompt"] == [{"role": "user", "content": "hi"}]
    assert out[2] == {"prompt": [{"role": "user", "content": "name a color"}], "chosen": "blue", "rejected": "seven"}


def test_parquet_unpaired_and_ranked(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "completion": "b", "label": True}]), tmp_path / "u.parquet")
    assert load(str(tmp_path / "u.parquet"), "unpaired")[0]["label"] is True
    path = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "q", "completions": ["x", "y", "z"], "scores": [1, 3, 2]}])
    assert load(path, "ranked")[0]["scores"] == [1.0, 3.0, 2.0]


@pytest.mark.parametrize(("fmt", "row", "field", "message"), [
    ("paired", {"prompt": "p", "chosen": "c"}, "rejected", "missing"),
    ("paired", {"prompt": "p", "chosen": "", "rejected": "r"}, "chosen", "empty completion"),
    ("paired", {"prompt": 3, "chosen": "c", "rejected": "r"}, "prompt", "expected a string or a non-empty list"),
    ("paired", {"prompt": "p", "chosen": [{"role": "user", "content": "x"}], "rejected": "r"}, "chosen", "must be the assistant's"),
    ("paired", {"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                "rejected": [{"role": "user", "content": "DIFFERENT"}, {"role": "assistant", "content": "c"}]},
     "rejected", "do not share the same prompt turns"),
    ("unpaired", {"prompt": "p", "completion": "c", "label": "yes"}, "label", "expected true/false"),
    ("ranked", {"prompt": "p", "completions": ["a", "b"], "scores": [1]}, "scores", "expected 2 numbers"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, fmt, row, field, message):
    good = {"paired": {"prompt": "p", "chosen": "c", "rejected": "r"},
            "unpaired": {"prompt": "p", "completion": "c", "label": False},
            "ranked": {"prompt": "p", "completions": ["a", "b"], "scores": [0, 1]}}[fmt]
    path = write_jsonl(tmp_path / "d.jsonl", [good, good, row])
    with pytest.raises(DataError, match=f"d.jsonl: row 2: field '{field}': .*{message}"):
        load(path, fmt)
    assert len(load(path, fmt, skip_bad_rows=True)) == 2  # skipped and counted, not silently


def test_rows_are_numbered_per_file_in_a_directory(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n\n")
    (tmp_path / "b.jsonl").write_text("\n" + json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n"
                                      + json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    with pytest.raises(DataError, match=r"b.jsonl: row 1: field 'rejected': missing"):
        load(str(tmp_path), "paired")
    (tmp_path / "b.jsonl").write_text('{"prompt": \n')
    assert len(load(str(tmp_path), "paired", skip_bad_rows=True)) == 1  # invalid JSON is skipped too


def test_unreadable_inputs(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load(str(tmp_path / "nope.jsonl"), "paired")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "p"\n')
    with pytest.raises(DataError, match="bad.jsonl: row 0: field '-': not valid JSON"):
        load(str(tmp_path / "bad.jsonl"), "paired")
