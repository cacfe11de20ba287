"""Per-pair scores for madpo and curry_dpo: the gym's gold rewards as score columns, MADPO's
reward margins computed once, Curry-DPO's easy → hard order (numpy reference), its stream
resumable from the iterator state, and rows without scores named by file, row and field."""
import json

import numpy as np
import pytest

from pojax.data import formats
from pojax.data import gym as gym_lib
from pojax.data.pipeline import (
    curriculum_order,
    make_dataset,
    make_iterator,
    restore_iterator,
)
from pojax.train.data import _score_arrays, curriculum, with_reward_margin


def test_gym_scores_are_the_gold_rewards_of_the_pairs():
    gym = gym_lib.Gym()
    rows = gym_lib.training_rows(gym, "paired", 3, 50, scores=True)
    d = gym.paired_set(3, 50)
    resp = lambda ids: ids[:, 2 + gym.prompt_len:]
    np.testing.assert_allclose(rows["score_chosen"], gym.gold_reward(d["prompts"], resp(rows["chosen_ids"])), rtol=1e-6)
    np.testing.assert_allclose(rows["score_rejected"], gym.gold_reward(d["prompts"], resp(rows["rejected_ids"])), rtol=1e-6)
    assert (rows["score_chosen"] >= rows["score_rejected"]).all()  # no label noise
    assert "score_chosen" not in gym_lib.training_rows(gym, "paired", 3, 5)  # only when asked


def test_reward_margin_is_chosen_minus_rejected():
    rows = {"score_chosen": np.array([2.0, 0.5, 1.0]), "score_rejected": np.array([1.5, 1.0, 1.0])}
    out = with_reward_margin(rows)
    np.testing.assert_allclose(out["reward_margin"], [0.5, -0.5, 0.0])
    assert out["reward_margin"].dtype == np.float32
    assert "reward_margin" not in with_reward_margin({"x": np.zeros(2)}) and with_reward_margin(None) is None


def test_curriculum_order_sorts_by_descending_gap_with_seeded_ties():
    rng = np.random.default_rng(0)
    gap = rng.integers(0, 4, 40).astype(np.float32)  # many ties
    order = curriculum_order(gap, seed=7)
    assert sorted(order) == list(range(40))
    np.testing.assert_array_equal(gap[order], np.sort(gap)[::-1])  # easy (large gap) first
    np.testing.assert_array_equal(order, curriculum_order(gap, seed=7))
    assert not np.array_equal(order, curriculum_order(gap, seed=8))  # ties broken by the seed
    # within a tie group, the seed's permutation order (numpy reference)
    perm = np.random.default_rng([7, 8]).permutation(40)
    for g in np.unique(gap):
        np.testing.assert_array_equal(order[gap[order] == g], perm[gap[perm] == g])
    with pytest.raises(ValueError, match="finite"):
        curriculum_order(np.array([1.0, np.nan]), 0)


def test_curriculum_stream_is_the_order_and_resumes_identically():
    rng = np.random.default_rng(1)
    n = 20
    rows = {"id": np.arange(n), "score_chosen": rng.random(n).astype(np.float32),
            "score_rejected": rng.random(n).astype(np.float32) / 2}
    ordered = curriculum(rows, seed=3)
    ds = make_dataset(ordered, batch_size=4, seed=3, shuffle=False, shard_index=0, shard_count=1)
    it = make_iterator(ds)
    stream = [next(it)["id"] for _ in range(8)]  # two epochs: the curriculum repeats
    gap = rows["score_chosen"] - rows["score_rejected"]
    np.testing.assert_array_equal(np.concatenate(stream[:5]), curriculum_order(gap, 3))
    np.testing.assert_array_equal(np.concatenate(stream[5:]), curriculum_order(gap, 3)[:12])
    it = make_iterator(ds)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    resumed = restore_iterator(make_iterator(make_dataset(curriculum(rows, seed=3), batch_size=4, seed=3,
                                                          shuffle=False, shard_index=0, shard_count=1)), state)
    for expected in stream[3:]:
        np.testing.assert_array_equal(next(resumed)["id"], expected)


def test_rows_without_scores_are_named_by_row_and_field():
    rows = [{"prompt": [], "chosen": "a", "rejected": "b", "score_chosen": 1.0, "score_rejected": 0.0},
            {"prompt": [], "chosen": "a", "rejected": "b", "score_chosen": 2.0}]
    with pytest.raises(formats.DataError, match="data.jsonl: row 1: field 'score_rejected': missing"):
        _score_arrays(rows, "data.jsonl")
    np.testing.assert_array_equal(_score_arrays(rows[:1], "x")["score_chosen"], [1.0])


def test_file_rows_carry_their_scores_through_the_seeded_split(tmp_path):
    from pojax.config import base_config
    from pojax.train.data import file_data
    from tests.data.tokenizer_fixture import make_tokenizer

    words = ["hi", "hello", "go", "away", "4", "5", "blue", "seven"]
    # standard rows are tokenized as prompt + completion text (TRL): the completions start with a space
    lines = [json.dumps({"prompt": words[i % 8], "chosen": " " + words[(i + 1) % 8], "rejected": " " + words[(i + 2) % 8],
                         "score_chosen": float(i), "score_rejected": float(-i)}) for i in range(12)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines))
    config = base_config()
    config.data.format, config.data.path, config.loss.name = "paired", str(path), "madpo"
    config.eval.num_examples = 3
    data = file_data(config, make_tokenizer())
    tok = make_tokenizer()
    for rows in (data.preference, data.held_out):
        for ids, mask, score in zip(rows["chosen_ids"], rows["chosen_mask"], rows["score_chosen"]):
            completion = tok.convert_ids_to_tokens(ids[mask].tolist())
            assert completion[0] == words[(int(score) + 1) % 8]  # each score stays with its row
        np.testing.assert_array_equal(rows["score_rejected"], -rows["score_chosen"])
    assert len(data.preference["score_chosen"]) == 9 and len(data.held_out["score_chosen"]) == 3
    path.write_text(lines[0] + "\n" + json.dumps({"prompt": "hi", "chosen": "go", "rejected": "away"}))
    with pytest.raises(formats.DataError, match="row 1: field 'score_chosen': missing"):
        file_data(config, make_tokenizer())


def test_ranked_rows_become_best_versus_lower_pairs_for_the_curriculum():
    rows = [{"prompt": [{"role": "user", "content": "q"}], "completions": ["a", "b", "c", "d"],
             "scores": [2.0, 5.0, 1.0, 5.0]},  # b and d tie for best: d makes no pair
            {"prompt": [{"role": "user", "content": "r"}], "completions": ["x", "y"], "scores": [3.0, 3.0]}]
    pairs = formats.ranked_pairs(rows)
    assert [(p["chosen"], p["rejected"], p["score_chosen"], p["score_rejected"]) for p in pairs] == [
        ("b", "c", 5.0, 1.0), ("b", "a", 5.0, 2.0)]  # (best, worst) first; a tie is no preference
    gap = np.array([p["score_chosen"] - p["score_rejected"] for p in pairs])
    np.testing.assert_array_equal(curriculum_order(gap, 0), [0, 1])


def test_curry_dpo_trains_on_ranked_files_only_as_pairs():
    from pojax.config import ConfigError, base_config, validate
    from pojax.train.data import row_format

    config = base_config()
    config.data.format, config.loss.name = "ranked", "curry_dpo"
    validate(config)
    assert row_format(config) == "paired"
    config.loss.name = "madpo"
    with pytest.raises(ConfigError, match="config key loss.name: 'madpo' does not take data.format='ranked'"):
        validate(config)


def test_ranked_file_rows_reach_the_trainer_as_scored_pairs(tmp_path):
    from pojax.config import base_config
    from pojax.train.data import file_data
    from tests.data.tokenizer_fixture import make_tokenizer

    path = tmp_path / "ranked.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": "hi", "completions": ["go", "away", "blue"], "scores": [i, 0, 9]})
                              for i in range(4)))
    config = base_config()
    config.data.format, config.data.path, config.loss.name = "ranked", str(path), "curry_dpo"
    config.eval.num_examples = 0
    rows = file_data(config, make_tokenizer()).preference
    assert rows["chosen_ids"].shape[0] == 8  # 4 prompts × 2 pairs (best "blue" vs each lower one)
    np.testing.assert_array_equal(rows["score_chosen"], 9.0)
    assert sorted(rows["score_rejected"]) == [0, 0, 0, 0, 0, 1, 2, 3]
