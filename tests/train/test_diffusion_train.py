"""likelihood.kind = diffusion through the trainer on a tiny LLaDA-style model: the first ELBO-KTO
/ ELBO-DPO losses sit at their policy = reference values, a precomputed reference (same draws)
trains exactly like the frozen copy, and the diffusion quickstart's switches validate."""
import math

import numpy as np
import pytest

from pojax.config import ConfigError, validate
from pojax.train.run import run_train
from tests.train.helpers import override, read_jsonl, recipe

TINY = {"train.sft_steps": 4, "train.max_steps": 3, "train.batch_size": 8, "data.gym.num_train": 64,
        "eval.num_examples": 8, "data.gym.num_eval": 8, "likelihood.n_mc": 2, "logging.plots": False,
        "train.export_final": False}


def config(**overrides):
    return override(recipe("quickstart_diffusion"), {"logging.progress": False, **TINY, **overrides})


@pytest.mark.parametrize(("loss", "first"), [("kto", 0.5), ("sigmoid", math.log(2))])
def test_first_loss_is_the_policy_equals_reference_value(tmp_path, loss, first):
    c = config(**{"loss.name": loss})
    validate(c)
    results = run_train(c, str(tmp_path))
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    np.testing.assert_allclose(rows[0]["loss"], first, atol=1e-6)
    assert rows[0]["rewards/margins" if loss != "kto" else "rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert "eval_loss" in results and 0.0 <= results["gold_win_rate"] <= 1.0


def test_precomputed_reference_trains_like_the_frozen_copy(tmp_path):
    runs = {}
    for mode in ("copy", "precomputed"):
        run_train(config(**{"reference.mode": mode}), str(tmp_path / mode))
        runs[mode] = [r["loss"] for r in read_jsonl(tmp_path / mode / "metrics.jsonl")]
    np.testing.assert_allclose(runs["precomputed"], runs["copy"], rtol=1e-5, atol=1e-6)


def test_diffusion_needs_a_masked_diffusion_model_and_sequence_losses():
    with pytest.raises(ConfigError, match="config key model.family"):
        validate(config(**{"model.family": "llama"}))
    with pytest.raises(ConfigError, match="config key loss.ld_alpha"):
        validate(config(**{"loss.name": "sigmoid", "loss.ld_alpha": 0.5}))
    with pytest.raises(ConfigError, match="config key likelihood.n_mc"):
        validate(config(**{"likelihood.n_mc": 0}))


def test_pretrain_task_lowers_the_masked_diffusion_loss(tmp_path):
    from pojax.train.tasks import run_pretrain

    c = config(**{"task": "pretrain", "train.max_steps": 150, "optimizer.learning_rate": 3e-3,
                  "optimizer.warmup_steps": 0, "data.gym.num_train": 256, "train.batch_size": 16})
    validate(c)
    results = run_pretrain(c, str(tmp_path))
    losses = [r["loss"] for r in read_jsonl(tmp_path / "metrics_pretrain.jsonl")]
    assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 0.1, (np.mean(losses[:20]), np.mean(losses[-20:]))
    assert results["task"] == "pretrain" and results["pretrain_examples"] == 256
