"""TFDS builders read preference data in its upstream layout, store normalized rows in
array_record files, and give them back with random access through grain — without TensorFlow."""
import glob
import gzip
import json
import os
import pickle
import sys

import grain
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pojax.data import builders, formats
from pojax.data.formats import DataError


def hh(prompt_turns, final):
    """An HH-RLHF transcript: alternating Human / Assistant turns, then the final answer."""
    roles = ["Human", "Assistant"]
    return "".join(f"\n\n{roles[k % 2]}: {t}" for k, t in enumerate(prompt_turns)) + f"\n\nAssistant: {final}"


def hh_rows(tag, n):
    rows = [{"chosen": hh([f"{tag} q{i}"], f"good {i}"), "rejected": hh([f"{tag} q{i}"], f"bad {i}")} for i in range(n)]
    # a multi-turn dialogue: the earlier turns are the shared prompt
    turns = [f"{tag} hi", "hello, how can I help?", "tell me a joke"]
    rows.append({"chosen": hh(turns, "Why did the chicken…"), "rejected": hh(turns, "No.")})
    return rows


def write_jsonl(path, rows, gz=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with (gzip.open if gz else open)(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def write_parquet(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def msg(role, content):
    return {"role": role, "content": content}


def expected(rows, fmt):
    return [formats.normalize(r, fmt, "-", i) for i, r in enumerate(rows)]


def read_all(source):
    ds = grain.MapDataset.source(source)
    return [ds[i] for i in range(len(ds))]


def array_record_files(data_dir):
    return glob.glob(os.path.join(data_dir, "**", "*.array_record*"), recursive=True)


@pytest.fixture
def hh_dir(tmp_path):
    """The upstream HH-RLHF layout: gzipped JSONL per subset, plus red-team data that is not pairs."""
    root = tmp_path / "hh-rlhf"
    files = {"harmless-base/train.jsonl.gz": hh_rows("harmless", 2),
             "harmless-base/test.jsonl.gz": hh_rows("harmless-test", 1),
             "helpful-base/train.jsonl.gz": hh_rows("helpful", 3),
             "helpful-base/test.jsonl.gz": hh_rows("helpful-test", 1),
             "helpful-online/train.jsonl": hh_rows("online", 1)}  # a plain, un-gzipped copy works too
    for name, rows in files.items():
        write_jsonl(str(root / name), rows, gz=name.endswith(".gz"))
    write_jsonl(str(root / "red-team-attempts/red_team_attempts.jsonl.gz"), [{"transcript": "x", "rating": 1}], gz=True)
    return root, files


def test_hh_rlhf_round_trips_in_source_order(hh_dir, tmp_path):
    root, files = hh_dir
    data_dir = str(tmp_path / "tfds")
    sources = builders.prepare("hh_rlhf", str(root), data_dir)
    assert list(sources) == ["train", "test"]
    train = (files["harmless-base/train.jsonl.gz"] + files["helpful-base/train.jsonl.gz"]
             + files["helpful-online/train.jsonl"])
    test = files["harmless-base/test.jsonl.gz"] + files["helpful-base/test.jsonl.gz"]
    assert len(sources["train"]) == len(train) == 9 and len(sources["test"]) == len(test) == 4
    assert read_all(sources["train"]) == expected(train, "hh_rlhf")
    assert read_all(sources["test"]) == expected(test, "hh_rlhf")
    # grain's worker processes get the source pickled
    assert read_all(pickle.loads(pickle.dumps(sources["test"]))) == expected(test, "hh_rlhf")
    ds = grain.MapDataset.source(sources["train"])
    assert ds[6] == formats.normalize(train[6], "hh_rlhf", "-", 0)  # random access, any order
    assert ds[2]["prompt"] == [msg("user", "harmless hi"), msg("assistant", "hello, how can I help?"),
                               msg("user", "tell me a joke")]
    assert ds[2]["chosen"] == "Why did the chicken…" and ds[2]["prompt_text"] + ds[2]["chosen"] == train[2]["chosen"]
    names = sorted(os.path.basename(f) for f in array_record_files(data_dir))
    assert names == ["hh_rlhf-test.array_record-00000-of-00001", "hh_rlhf-train.array_record-00000-of-00001"]
    assert sources["train"].skipped_rows == 0
    assert "tensorflow" not in sys.modules  # prepared and read without TensorFlow


def test_prepare_once_per_source_version(hh_dir, tmp_path):
    root, files = hh_dir
    data_dir = str(tmp_path / "tfds")
    builders.prepare("hh_rlhf", str(root), data_dir)
    [first] = [f for f in array_record_files(data_dir) if "train" in f]
    stamp = os.stat(first).st_mtime_ns
    assert len(builders.prepare("hh_rlhf", str(root), data_dir)["train"]) == 9
    assert os.stat(first).st_mtime_ns == stamp  # reused, not rewritten
    write_jsonl(str(root / "helpful-online/train.jsonl"), hh_rows("online", 4))  # the source changed
    assert len(builders.prepare("hh_rlhf", str(root), data_dir)["train"]) == 12
    assert len(glob.glob(os.path.join(data_dir, "hh_rlhf", "*", str(builders.base.PreferenceBuilder.VERSION)))) == 2


def test_hh_rlhf_bad_row_names_file_row_and_field(hh_dir, tmp_path):
    root, files = hh_dir
    rows = files["helpful-base/train.jsonl.gz"]
    rows[1] = {"chosen": rows[1]["chosen"], "rejected": "\n\nHuman: q1\n\nAssistant: hmm\n\nHuman: no answer"}
    write_jsonl(str(root / "helpful-base/train.jsonl.gz"), rows, gz=True)
    with pytest.raises(DataError, match=r"helpful-base/train.jsonl.gz: row 1: field 'rejected': .*does not end with an "
                                        r"assistant turn"):
        builders.prepare("hh_rlhf", str(root), str(tmp_path / "tfds"))
    assert not array_record_files(str(tmp_path / "tfds"))  # nothing half-written is left to be reused
    sources = builders.prepare("hh_rlhf", str(root), str(tmp_path / "tfds"), skip_bad_rows=True)
    assert len(sources["train"]) == 8 and sources["train"].skipped_rows == 1 and sources["test"].skipped_rows == 0


def uf_row(i, prompt, good, bad, score_chosen, score_rejected):
    return {"prompt": prompt, "prompt_id": f"id{i}", "chosen": [msg("user", prompt), msg("assistant", good)],
            "rejected": [msg("user", prompt), msg("assistant", bad)],
            "messages": [msg("user", prompt), msg("assistant", good)],
            "score_chosen": score_chosen, "score_rejected": score_rejected}


def test_ultrafeedback_binarized_upstream_layout(tmp_path):
    root = tmp_path / "ultrafeedback_binarized"
    train = [uf_row(0, "name a color", "blue", "seven", 8.5, 0.1), uf_row(1, "2+2?", "4", "5", 10.0, 3.25),
             uf_row(2, "capital of France?", "Paris", "Lyon", 7.0, 6.0)]
    test = [uf_row(3, "hi", "hello", "go away", 9.0, 1.0)]
    write_parquet(str(root / "data/train_prefs-00000-of-00001.parquet"), train)
    write_parquet(str(root / "data/test_prefs-00000-of-00001.parquet"), test)
    write_parquet(str(root / "data/train_sft-00000-of-00001.parquet"), train[:1])  # other upstream splits: not read
    (root / "README.md").write_text("# card\n")
    data_dir = str(tmp_path / "tfds")
    sources = builders.prepare("ultrafeedback_binarized", str(root), data_dir)
    assert list(sources) == ["train_prefs", "test_prefs"]
    assert read_all(sources["train_prefs"]) == expected(train, "paired")
    assert read_all(sources["test_prefs"]) == expected(test, "paired")
    row = grain.MapDataset.source(sources["train_prefs"])[0]
    assert row == {"prompt": [msg("user", "name a color")], "chosen": "blue", "rejected": "seven",
                   "score_chosen": 8.5, "score_rejected": 0.1, "prompt_text": "name a color",  # scores exact
                   "conversational": True, "chosen_messages": [msg("assistant", "blue")],
                   "rejected_messages": [msg("assistant", "seven")]}
    assert len(array_record_files(data_dir)) == 2

    train[2]["rejected"] = [msg("user", "capital of France?")]  # no assistant answer
    write_parquet(str(root / "data/train_prefs-00000-of-00001.parquet"), train)
    with pytest.raises(DataError, match=r"data/train_prefs-00000-of-00001.parquet: row 2: field 'rejected': "
                                        r"the last message must be the assistant's"):
        builders.prepare("ultrafeedback_binarized", str(root), data_dir)


def test_kto_mix_upstream_layout(tmp_path):
    root = tmp_path / "kto-mix-14k"
    train = [{"prompt": [msg("user", f"q{i}")], "completion": [msg("assistant", f"a{i}")], "label": i % 2 == 0}
             for i in range(5)]
    test = [{"prompt": [msg("user", "t"), msg("assistant", "u"), msg("user", "v")], "completion": [msg("assistant", "w")],
             "label": False}]
    write_parquet(str(root / "data/train-00000-of-00001.parquet"), train)
    write_parquet(str(root / "data/test-00000-of-00001.parquet"), test)
    sources = builders.prepare("kto_mix", str(root), str(tmp_path / "tfds"))
    assert list(sources) == ["train", "test"] and len(sources["train"]) == 5 and len(sources["test"]) == 1
    assert read_all(sources["train"]) == expected(train, "unpaired")
    assert read_all(sources["test"]) == expected(test, "unpaired")
    assert grain.MapDataset.source(sources["train"])[3]["label"] is False
    assert array_record_files(str(tmp_path / "tfds"))

    train[3]["label"] = None
    write_parquet(str(root / "data/train-00000-of-00001.parquet"), train)
    with pytest.raises(DataError, match=r"data/train-00000-of-00001.parquet: row 3: field 'label': expected true/false"):
        builders.prepare("kto_mix", str(root), str(tmp_path / "tfds"))
    assert len(builders.prepare("kto_mix", str(root), str(tmp_path / "tfds"), skip_bad_rows=True)["train"]) == 4


LOCAL_ROWS = {
    "paired": [{"prompt": "2+2?", "chosen": "4", "rejected": "5"},
               {"chosen": [msg("user", "a"), msg("assistant", "b")], "rejected": [msg("user", "a"), msg("assistant", "c")]}],
    "unpaired": [{"prompt": "p", "completion": "c", "label": True}, {"prompt": [msg("user", "q")], "completion": "d",
                                                                     "label": False}],
    "ranked": [{"prompt": "q", "completions": ["x", "y", "z"], "scores": [1, 3.5, 2]},
               {"prompt": "r", "completions": ["u", "v"], "scores": [0.1, 0.2]}],
    "step": [{"prompt": "solve 2x=4", "prefix": "", "chosen_step": "x = 4/2", "rejected_step": "x = 4*2"},
             {"prompt": "solve 2x=4", "prefix": "x = 4/2\n", "chosen_step": "x = 2", "rejected_step": "x = 3"}],
}


@pytest.mark.parametrize("fmt", sorted(LOCAL_ROWS))
def test_local_file_is_split_train(tmp_path, fmt):
    rows = LOCAL_ROWS[fmt]
    write_jsonl(str(tmp_path / "src" / "rows.jsonl"), rows)
    sources = builders.prepare(fmt, str(tmp_path / "src" / "rows.jsonl"), str(tmp_path / "tfds"))
    assert list(sources) == ["train"] and read_all(sources["train"]) == expected(rows, fmt)
    assert glob.glob(str(tmp_path / "tfds" / "local_preference" / f"{fmt}_*" / str(builders.base.PreferenceBuilder.VERSION) / "*.array_record*"))


def test_local_directory_with_train_and_test_files(tmp_path):
    rows = LOCAL_ROWS["ranked"]
    write_jsonl(str(tmp_path / "src" / "train-a.jsonl"), rows)
    write_parquet(str(tmp_path / "src" / "train-b.parquet"), rows[:1])
    write_jsonl(str(tmp_path / "src" / "test.jsonl.gz"), rows[1:], gz=True)
    sources = builders.prepare("ranked", str(tmp_path / "src"), str(tmp_path / "tfds"))
    assert read_all(sources["train"]) == expected(rows + rows[:1], "ranked")
    assert read_all(sources["test"]) == expected(rows[1:], "ranked")

    write_jsonl(str(tmp_path / "src" / "extra.jsonl"), rows)
    with pytest.raises(DataError, match=r"extra.jsonl: the directory .*starts with neither"):
        builders.prepare("ranked", str(tmp_path / "src"), str(tmp_path / "tfds"))


def test_local_bad_row_and_unreadable_sources(tmp_path):
    rows = LOCAL_ROWS["step"] + [{"prompt": "p", "prefix": None, "chosen_step": "a", "rejected_step": "b"}]
    write_jsonl(str(tmp_path / "steps.jsonl"), rows)
    with pytest.raises(DataError, match=r"steps.jsonl: row 2: field 'prefix': expected a string"):
        builders.prepare("step", str(tmp_path / "steps.jsonl"), str(tmp_path / "tfds"))
    with pytest.raises(DataError, match="no such file or directory"):
        builders.prepare("paired", str(tmp_path / "nope"), str(tmp_path / "tfds"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no data files found; expected HH-RLHF's layout"):
        builders.prepare("hh_rlhf", str(tmp_path / "empty"), str(tmp_path / "tfds"))
    with pytest.raises(ValueError, match="unknown format 'gym'; known: hh_rlhf, ultrafeedback_binarized, kto_mix"):
        builders.prepare("gym", str(tmp_path / "steps.jsonl"), str(tmp_path / "tfds"))
