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
    c = config(**{"loss.name": loss, "likelihood.mc_stderr": True})
    validate(c)
    results = run_train(c, str(tmp_path))
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    np.testing.assert_allclose(rows[0]["loss"], first, atol=1e-6)
    assert rows[0]["rewards/margins" if loss != "kto" else "rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert "eval_loss" in results and 0.0 <= results["gold_win_rate"] <= 1.0
    # likelihood.mc_stderr: logged with every evaluation; the trained policy differs from the
    # reference, so the two half budgets disagree
    assert rows[-1]["eval_loss_mc_stderr"] == results["eval_loss_mc_stderr"]
    assert 0.0 < results["eval_loss_mc_stderr"] < 1.0


def test_mc_stderr_of_the_evaluator_is_the_half_budget_formula():
    """eval_loss_mc_stderr = sqrt(Σ_b (a_b − c_b)² / 4) / N over the held-out rows, accumulated over
    evaluation batches, with the run's draw key; 0 at policy = reference (shared draws cancel)."""
    import jax.numpy as jnp

    from pojax.objectives import diffusion as diff_obj
    from pojax.train.data import gym_data
    from pojax.train.evaluate import preference_evaluator
    from pojax.train.objectives import _draw_key, mask_id_of, with_example_ids
    from pojax.train.run import _copy, build_model

    c = config(**{"loss.name": "sigmoid", "likelihood.mc_stderr": True, "eval.num_examples": 12,
                  "likelihood.n_mc": 4, "train.batch_size": 8})
    data = gym_data(c)
    reference = build_model(c, data.vocab_size)
    policy = _copy(reference)
    policy.embed_tokens[...] = policy.embed_tokens[...] * 1.5  # some distance from the reference
    held, mask_id = with_example_ids(data.held_out, offset=1000), mask_id_of(reference, c)
    evaluate = preference_evaluator(c, mask_id=mask_id)
    got = evaluate(policy, reference, held)["eval_loss_mc_stderr"]
    a, b = diff_obj.half_budget_losses(policy, reference, {k: jnp.asarray(v) for k, v in held.items()},
                                       loss_name="sigmoid", hparams={"beta": c.loss.beta}, key=_draw_key(c),
                                       n_mc=4, mask_id=mask_id, chunk_size=c.likelihood.chunk_size)
    want = float(np.sqrt(np.sum(np.square(np.asarray(a) - np.asarray(b))) / 4) / 12)
    assert want > 0
    np.testing.assert_allclose(got, want, rtol=1e-5)  # two evaluation batches (8 + 4 rows) = one of 12
    # policy = reference as at a run's first step: an equal copy (the same object twice is another
    # trace, and compiling it took 30 s on 2 cores)
    assert evaluate(_copy(reference), reference, held)["eval_loss_mc_stderr"] == 0.0
    assert a.shape == b.shape == (12,)  # per-row losses


def test_mc_stderr_needs_diffusion_an_even_n_mc_and_the_reference_model():
    with pytest.raises(ConfigError, match="config key likelihood.n_mc: likelihood.mc_stderr splits the draws into "
                                          "two halves: n_mc must be even and at least 2, got 3"):
        validate(config(**{"likelihood.mc_stderr": True, "likelihood.n_mc": 3}))
    with pytest.raises(ConfigError, match="config key likelihood.mc_stderr: estimates the Monte Carlo error of "
                                          "diffusion ELBOs; likelihood.kind='autoregressive' has none"):
        validate(override(recipe("quickstart"), {"likelihood.mc_stderr": True}))
    with pytest.raises(ConfigError, match="config key likelihood.mc_stderr: needs the reference model's ELBOs"):
        validate(config(**{"likelihood.mc_stderr": True, "reference.mode": "precomputed"}))


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


@pytest.mark.parametrize("kind", ["diffusion", "autoregressive"])
def test_unpaired_eval_margins_are_whole_set_label_means(kind):
    """KTO evaluation of the gym's held-out unpaired rows (all desirable, then all undesirable):
    batches of 4 over 12 rows are [D D D D], [D D U U], [U U U U], so two batches have no per-batch
    margin (NaN) and the labels are unevenly spread. Every eval metric is finite, and
    eval_rewards/chosen, /rejected and /margins are, over the whole set, mean β·r of the
    desirable rows, of the undesirable rows, and their difference, with r computed here in one
    batch of all 12 rows and averaged with numpy."""
    import jax.numpy as jnp

    from pojax.objectives import diffusion as diff_obj
    from pojax.objectives import unpaired_logps
    from pojax.train.data import gym_data
    from pojax.train.evaluate import preference_evaluator
    from pojax.train.objectives import _draw_key, mask_id_of, with_example_ids
    from pojax.train.run import _copy, build_model

    base = config() if kind == "diffusion" else override(recipe("quickstart"), {"logging.progress": False, **TINY})
    c = override(base, {"loss.name": "kto", "eval.num_examples": 6, "train.batch_size": 4, "likelihood.n_mc": 2})
    data = gym_data(c)
    reference = build_model(c, data.vocab_size)
    policy = _copy(reference)
    policy.embed_tokens[...] = policy.embed_tokens[...] * 1.5  # some distance from the reference
    held, mask_id = with_example_ids(data.held_out, offset=1000), mask_id_of(reference, c)
    label = np.asarray(held["label"], bool)
    assert label.tolist() == [True] * 6 + [False] * 6  # the layout that made per-batch margins NaN

    got = preference_evaluator(c, mask_id=mask_id)(policy, reference, held)

    whole = {k: jnp.asarray(v) for k, v in held.items()}
    if kind == "diffusion":
        lp = diff_obj.unpaired_elbos(policy, reference, whole, _draw_key(c), n_mc=2, mask_id=mask_id,
                                     estimator=c.likelihood.estimator, chunk_size=c.likelihood.chunk_size)
    else:
        lp = unpaired_logps(policy, reference, whole, chunk_size=c.likelihood.chunk_size)
    rewards = c.loss.beta * (np.asarray(lp.completion, np.float64) - np.asarray(lp.ref_completion, np.float64))
    chosen, rejected = rewards[label].mean(), rewards[~label].mean()
    assert abs(chosen - rejected) > 1e-3  # the policy moved: a margin to get right
    assert all(np.isfinite(v) for v in got.values()), got
    np.testing.assert_allclose(got["eval_rewards/chosen"], chosen, rtol=1e-4)
    np.testing.assert_allclose(got["eval_rewards/rejected"], rejected, rtol=1e-4)
    np.testing.assert_allclose(got["eval_rewards/margins"], chosen - rejected, rtol=1e-4, atol=1e-6)
    assert got["eval_num_examples"] == 12
