"""Rows in TRL's column conventions are read from JSONL / parquet and validated; bad rows name
file, row and field."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pojax.data import formats
from pojax.data.formats import DataError, load, parse_hh_transcript


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
    assert out[0] == {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": "5", "prompt_text": "2+2?",
                      "conversational": False}
    assert out[1]["chosen"] == "hello" and out[1]["prompt"] == [{"role": "user", "content": "hi"}]
    assert out[1]["conversational"] and out[1]["chosen_messages"] == rows[1]["chosen"]
    assert out[2] == {"prompt": [{"role": "user", "content": "name a color"}], "chosen": "blue", "rejected": "seven",
                      "chosen_messages": [{"role": "assistant", "content": "blue"}],
                      "rejected_messages": [{"role": "assistant", "content": "seven"}], "conversational": True}


def test_trl_columns_are_kept(tmp_path):
    """conversational (TRL's is_conversational), tools, chat_template_kwargs; a string prompt with
    whole conversations takes its prompt from them (UltraFeedback-binarized, maybe_extract_prompt)."""
    conv = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "name a color"}]
    rows = [{"prompt": "name a color", "chosen": conv + [{"role": "assistant", "content": "blue"}],
             "rejected": conv + [{"role": "assistant", "content": "seven"}], "tools": '[{"name": "f"}]',
             "chat_template_kwargs": {"enable_thinking": False}}]
    [row] = load(write_jsonl(tmp_path / "p.jsonl", rows), "paired")
    assert row["prompt"] == conv and row["conversational"] and row["prompt_text"] == "name a color"
    assert row["tools"] == '[{"name": "f"}]' and row["chat_template_kwargs"] == {"enable_thinking": False}
    [u1, u2] = formats.unpair([row])
    assert u1["completion_messages"] == [{"role": "assistant", "content": "blue"}] and u2["tools"] == row["tools"]
    bad = write_jsonl(tmp_path / "b.jsonl", [dict(rows[0], chat_template_kwargs=[1])])
    with pytest.raises(DataError, match="row 0: field 'chat_template_kwargs': expected an object"):
        load(bad, "paired")


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
    with pytest.raises(DataError, match="bad.jsonl: row 0: not valid JSON"):
        load(str(tmp_path / "bad.jsonl"), "paired")


def test_gzipped_jsonl_and_paired_scores(tmp_path):
    import gzip

    with gzip.open(tmp_path / "p.jsonl.gz", "wt") as f:
        f.write(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r", "score_chosen": 8.5, "score_rejected": 1}) + "\n")
    assert load(str(tmp_path / "p.jsonl.gz"), "paired") == [
        {"prompt": [{"role": "user", "content": "p"}], "chosen": "c", "rejected": "r", "score_chosen": 8.5,
         "score_rejected": 1.0, "prompt_text": "p", "conversational": False}]
    assert len(load(str(tmp_path), "paired")) == 1  # a directory's .jsonl.gz files are read too


def test_parse_hh_transcript_multi_turn():
    text = "\n\nHuman: hi\n\nAssistant: hello!\n\nHuman: a joke?\nplease\n\nAssistant: Why did…"
    assert parse_hh_transcript(text) == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "a joke?\nplease"}, {"role": "assistant", "content": "Why did…"}]
    # the first turn may lack its blank line; an empty final turn ("Assistant:") parses as ""
    assert parse_hh_transcript("Human: q\n\nAssistant:") == [{"role": "user", "content": "q"},
                                                            {"role": "assistant", "content": ""}]
    with pytest.raises(ValueError, match="no '\\\\n\\\\nHuman: ' or"):
        parse_hh_transcript("just text")
    with pytest.raises(ValueError, match="text before the first turn"):
        parse_hh_transcript("preamble\n\nHuman: q\n\nAssistant: a")


def test_hh_rlhf_rows(tmp_path):
    head = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: "
    path = write_jsonl(tmp_path / "train.jsonl", [{"chosen": head + "fine", "rejected": head + "go away"}])
    [row] = load(path, "hh_rlhf")
    assert row == {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                              {"role": "user", "content": "how are you?"}],
                   "chosen": "fine", "rejected": "go away", "prompt_text": head, "conversational": True}


HH = "\n\nHuman: q\n\nAssistant: "


@pytest.mark.parametrize(("row", "field", "message"), [
    ({"chosen": HH + "a"}, "rejected", "missing"),
    ({"chosen": "\n\nHuman: q\n\nHuman: a", "rejected": HH + "b"}, "chosen", "no '\\\\n\\\\nAssistant: ' turn"),
    ({"chosen": HH + "a", "rejected": HH + "b\n\nHuman: more?"}, "rejected", "does not end with an assistant turn"),
    ({"chosen": "q: a", "rejected": HH + "b"}, "chosen", "not an HH-RLHF transcript: no"),
    ({"chosen": HH + "a", "rejected": "\n\nHuman: other\n\nAssistant: b"}, "rejected", "differ before the final"),
    ({"chosen": HH + "a", "rejected": HH}, "rejected", "empty completion"),
    ({"chosen": "\n\nAssistant: a", "rejected": "\n\nAssistant: b"}, "chosen", "no turns before the final"),
    ({"chosen": ["not", "a", "transcript"], "rejected": HH + "b"}, "chosen", "expected a transcript string"),
])
def test_bad_hh_rows(tmp_path, row, field, message):
    path = write_jsonl(tmp_path / "train.jsonl", [{"chosen": HH + "a", "rejected": HH + "b"}, row])
    with pytest.raises(DataError, match=f"train.jsonl: row 1: field '{field}': .*{message}"):
        load(path, "hh_rlhf")
    assert len(load(path, "hh_rlhf", skip_bad_rows=True)) == 1


def test_step_rows(tmp_path):
    rows = [{"prompt": "solve 2x=4", "prefix": "", "chosen_step": "x = 4/2", "rejected_step": "x = 4*2"},
            {"prompt": [{"role": "user", "content": "solve 2x=4"}], "prefix": "x = 4/2\n", "chosen_step": "x = 2",
             "rejected_step": "x = 3", "step_index": 1}]  # other columns are ignored
    out = load(write_jsonl(tmp_path / "s.jsonl", rows), "step")
    assert out[0] == {"prompt": [{"role": "user", "content": "solve 2x=4"}], "prefix": "", "chosen": "x = 4/2",
                      "rejected": "x = 4*2", "prompt_text": "solve 2x=4", "conversational": False}
    assert out[1] == {"prompt": [{"role": "user", "content": "solve 2x=4"}], "prefix": "x = 4/2\n", "chosen": "x = 2",
                      "rejected": "x = 3", "conversational": True}


@pytest.mark.parametrize(("row", "field", "message"), [
    ({"prompt": "p", "chosen_step": "a", "rejected_step": "b"}, "prefix", "missing"),
    ({"prompt": "p", "prefix": 3, "chosen_step": "a", "rejected_step": "b"}, "prefix", "expected a string"),
    ({"prompt": "p", "prefix": "", "chosen_step": "", "rejected_step": "b"}, "chosen_step", "empty completion"),
    ({"prompt": "p", "prefix": "", "chosen_step": "a", "rejected_step": ["b"]}, "rejected_step", "expected a string"),
])
def test_bad_step_rows(tmp_path, row, field, message):
    path = write_jsonl(tmp_path / "s.jsonl", [row])
    with pytest.raises(DataError, match=f"s.jsonl: row 0: field '{field}': .*{message}"):
        load(path, "step")
