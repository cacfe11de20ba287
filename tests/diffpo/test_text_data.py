"""Trajectories from files: ranked rows and UltraFeedback's per-completion scores become ordered
y(0) … y(T) with the best as target; bad rows name file, row and field."""
import json
import re

import numpy as np
import pytest

from pojax.data.formats import DataError
from pojax.diffpo.text_data import base_answers, read_scored, training_rows
from tests.data.tokenizer_fixture import make_tokenizer


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _uf(instruction, answers):
    return {"instruction": instruction, "completions": [
        {"model": m, "response": r, "overall_score": s, "fine-grained_score": None if s is None else -s} for m, r, s in answers]}


RANKED = [
    {"prompt": "hi", "completions": ["go away", "hello", "good yes", "bad"], "scores": [1, 9, 5, 1],
     "models": ["m1", "m2", "m3", "m4"]},
    {"prompt": "name a color", "completions": ["blue", "seven"], "scores": [2.5, -1]},
]


def test_ranked_rows_become_ascending_trajectories(tmp_path):
    tok = make_tokenizer()
    rows = read_scored(_write(tmp_path / "r.jsonl", RANKED), "ranked")
    assert rows[1]["models"] == ["completion_0", "completion_1"]
    out = training_rows(rows, tok, max_prompt_length=6, max_completion_length=4, max_states=2, chat=False)
    assert out["target_ids"].shape == (2, 10) and out["state_ids"].shape == (2, 2, 10)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    p0 = tok("hi")["input_ids"]
    eos, pad = tok.eos_token_id, tok.pad_token_id
    # row 0: order by score (ties keep file order): go away (1), bad (1), good yes (5), hello (9)
    np.testing.assert_array_equal(out["target_ids"][0, :len(p0) + 2], p0 + ids("hello") + [eos])
    assert out["response_mask"][0].tolist() == [False] * len(p0) + [True] * 2 + [False] * (8 - len(p0))
    assert out["num_states"].tolist() == [2, 1]
    # the 2 best states below the target, nearest last: bad, good yes
    np.testing.assert_array_equal(out["state_ids"][0, 0, :len(p0) + 2], p0 + ids("bad") + [eos])
    np.testing.assert_array_equal(out["state_ids"][0, 1, :len(p0) + 3], p0 + ids("good yes") + [eos])
    assert np.all(out["state_ids"][0, 1, len(p0) + 3:] == pad)
    # row 1: target "blue" (2.5), one real state "seven" repeated in the second slot
    np.testing.assert_array_equal(out["state_ids"][1, 0], out["state_ids"][1, 1])
    p1 = tok("name a color")["input_ids"]
    np.testing.assert_array_equal(out["target_ids"][1, :len(p1) + 2], p1 + ids("blue") + [eos])
    answers = base_answers(rows)
    assert answers["m2"] == ([0], ["hello"]) and answers["completion_1"] == ([1], ["seven"])


def test_ultrafeedback_layout_and_score_field(tmp_path):
    path = _write(tmp_path / "uf.jsonl", [_uf("hi", [("a", "yes", 3.0), ("b", "no", 8.5), ("c", "hello", 6)])])
    (row,) = read_scored(path, "ultrafeedback")
    assert row["completions"] == ["yes", "no", "hello"] and row["models"] == ["a", "b", "c"]  # file order
    assert row["prompt"] == [{"role": "user", "content": "hi"}] and row["scores"] == [3.0, 8.5, 6.0]
    tok = make_tokenizer()
    best = training_rows([row], tok, max_prompt_length=4, max_completion_length=2, max_states=5, chat=True)
    chat_prompt = tok(tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False),
                      add_special_tokens=False)["input_ids"][-4:]
    np.testing.assert_array_equal(best["target_ids"][0, :6], chat_prompt + [tok.convert_tokens_to_ids("no"),
                                                                            tok.eos_token_id])
    assert best["num_states"].tolist() == [2]
    (flipped,) = read_scored(path, "ultrafeedback", score_field="fine-grained_score")
    worst = training_rows([flipped], tok, max_prompt_length=4, max_completion_length=2, max_states=5, chat=True)
    assert worst["target_ids"][0, 4] == tok.convert_tokens_to_ids("yes")  # lowest overall = best fine-grained


@pytest.mark.parametrize("source,row,field,message", [
    ("ultrafeedback", _uf("hi", [("a", "yes", 3.0), ("b", "no", None)]), "completions[1].overall_score",
     "expected a finite number, got None"),
    ("ultrafeedback", _uf("hi", [("a", "", 3.0), ("b", "no", 1)]), "completions[0].response", "non-empty string"),
    ("ultrafeedback", {"completions": []}, "instruction", "expected a non-empty string"),
    ("ultrafeedback", _uf("hi", [("a", "yes", 3.0)]), "completions", "at least 2 completions"),
    ("ranked", {"prompt": "hi", "completions": ["a", "b"], "scores": [1]}, "scores", "expected 2 numbers"),
    ("ranked", {"prompt": "hi", "completions": ["a", "b"], "scores": [1, 2], "models": ["x"]}, "models",
     "expected 2 non-empty names"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, source, row, field, message):
    good = RANKED[1] if source == "ranked" else _uf("hi", [("a", "yes", 1), ("b", "no", 2)])
    path = _write(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(DataError, match=rf"bad.jsonl: row 1: field '{re.escape(field)}': .*{message}"):
        read_scored(path, source)
    assert len(read_scored(path, source, skip_bad_rows=True)) == 1
    with pytest.raises(DataError, match="no such file"):
        read_scored(str(tmp_path / "missing.jsonl"), source)


def test_misuse_is_named(tmp_path):
    from pojax.config import ConfigError
    from pojax.train.diffpo import _split_rows
    from tests.diffpo.test_task import _config

    path = _write(tmp_path / "r.jsonl", RANKED)
    with pytest.raises(ValueError, match="unknown trajectory source 'gym'; use ranked, ultrafeedback"):
        read_scored(path, "gym")
    with pytest.raises(ValueError, match="max_states must be >= 1, got 0"):
        training_rows(read_scored(path, "ranked"), make_tokenizer(), max_prompt_length=4, max_completion_length=4,
                      max_states=0, chat=False)
    with pytest.raises(DataError, match="bad.jsonl: row 0: not valid JSON"):
        read_scored(str(_write_text(tmp_path / "bad.jsonl", "{oops\n")), "ranked")
    config = _config()
    config.eval.num_examples = 2
    with pytest.raises(ConfigError, match="eval.num_examples: 2 held-out rows of the 2 in data.path leave no training"):
        _split_rows(config, read_scored(path, "ranked"))
    config.eval.num_examples = 1
    train, held = _split_rows(config, read_scored(path, "ranked"))
    assert len(train) == len(held) == 1 and train[0]["prompt"] != held[0]["prompt"]


def _write_text(path, text):
    path.write_text(text)
    return path
