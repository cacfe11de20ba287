"""The trainer feeds tdpo (per-token KL), tgdpo (guide token rewards), madpo (reward margins)
and curry_dpo (curriculum order) end to end on the gym: a few steps each, starting at DPO's
log 2 (policy = reference), with the loss's own metrics in metrics.jsonl. The gold-reward gains
of the full recipes (configs/tdpo.py, tgdpo.py, madpo.py, curry_dpo.py) are measured in README.md."""
import math

import numpy as np
import pytest

from pojax.config import ConfigError
from pojax.data import gym as gym_lib
from pojax.data.pipeline import make_dataset
from pojax.models import save_pretrained
from pojax.train.run import build_model, run_train
from tests.train.helpers import quick_config, read_jsonl

TINY = {"train.sft_steps": 0, "train.max_steps": 3, "train.batch_size": 8, "data.gym.num_train": 64,
        "eval.num_examples": 0, "data.gym.num_eval": 4, "eval.num_samples": 1, "train.export_final": False,
        "logging.plots": False, "checkpoint.every_steps": 100}


def _run(tmp_path, weight_key=None, **overrides):
    results = run_train(quick_config(**TINY, **overrides), str(tmp_path))
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert len(rows) == 3 and "gold_reward_after" in results
    weight = rows[0][weight_key] if weight_key else 1.0  # MADPO: the mean of w(h)·log 2
    np.testing.assert_allclose(rows[0]["loss"], weight * math.log(2), rtol=1e-5)  # policy = reference at step 1
    return rows


def test_tdpo_runs_with_the_token_kl(tmp_path):
    rows = _run(tmp_path, **{"loss.name": "tdpo", "loss.tdpo_alpha": 0.5})
    assert rows[0]["kl/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert rows[-1]["kl/rejected"] > 0  # the policy moved away from the reference


def test_tgdpo_runs_with_guide_rewards(tmp_path):
    config = quick_config(**TINY, **{"train.seed": 1})
    guide_dir = str(tmp_path / "guide")
    save_pretrained(build_model(config, gym_lib.from_config(config).vocab_size), guide_dir)  # ≠ the seed-0 policy
    with pytest.raises(ConfigError, match="config key reference.guide_path: loss 'tgdpo' needs a guide"):
        run_train(quick_config(**TINY, **{"loss.name": "tgdpo"}), str(tmp_path / "no_guide"))
    rows = _run(tmp_path / "run", **{"loss.name": "tgdpo", "reference.guide_path": guide_dir})
    assert abs(rows[0]["tgdpo/token_reward_chosen"]) > 1e-4


def test_madpo_runs_with_gold_reward_margins(tmp_path):
    rows = _run(tmp_path, "madpo/weight", **{"loss.name": "madpo", "loss.madpo_tau": 0.5, "loss.madpo_lambda": 8.0})
    assert rows[0]["madpo/weight"] > 1.0  # gym margins < τ: the pairs count as hard, amplified


def test_curry_dpo_runs_in_curriculum_order(tmp_path, monkeypatch):
    import pojax.train.run as run_lib

    seen = []

    def spy(source, **kw):
        seen.append((source, kw))
        return make_dataset(source, **kw)

    monkeypatch.setattr(run_lib, "make_dataset", spy)
    _run(tmp_path, **{"loss.name": "curry_dpo"})
    source, kw = seen[-1]  # the preference stage's dataset
    gap = source.arrays["score_chosen"] - source.arrays["score_rejected"]
    assert kw["shuffle"] is False and len(gap) == 64
    assert (np.diff(gap) <= 0).all() and gap[0] > gap[-1]  # easy (large gap) → hard
