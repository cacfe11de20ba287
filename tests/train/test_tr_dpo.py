"""TR-DPO (reference.sync_ref_model; Gorbatovski et al., arXiv 2404.09656): the reference after a
sync is α·policy + (1 − α)·reference, checked against numpy on the update itself and on the
reference a training run checkpoints; the loss after a sync differs from the loss without it
(and with α = 1, τ = 1 every step starts from policy = reference: loss log 2); a run resumed
from a checkpoint between syncs follows the uninterrupted run."""
import math
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from pojax.config import ConfigError, validate
from pojax.data import gym as gym_lib
from pojax.models import CausalLM, ModelConfig
from pojax.train.run import build_model, run_train
from pojax.train.step import sync_reference
from tests.train.helpers import losses, quick_config

TINY = {"train.sft_steps": 0, "train.batch_size": 8, "data.gym.num_train": 64, "data.gym.num_eval": 8,
        "eval.num_samples": 1, "eval.num_examples": 8, "eval.every_steps": 100, "optimizer.learning_rate": 1e-2,
        "optimizer.warmup_steps": 0, "train.export_final": False, "logging.plots": False}


def _config(**overrides):
    return quick_config(**TINY, **overrides)


def _flat(tree) -> dict:
    """path → numpy array of a (possibly nested-dict) tree of arrays or nnx Variables."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path): np.asarray(v) for path, v in leaves}


def test_sync_reference_is_the_mix_in_numpy():
    mc = ModelConfig(model_type="llama", vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, dtype="float32", param_dtype="float32",
                     max_position_embeddings=32)
    policy, reference = CausalLM(mc, rngs=nnx.Rngs(0)), CausalLM(mc, rngs=nnx.Rngs(1))
    _, params, _ = nnx.split(policy, nnx.Param, ...)
    _, ref_state = nnx.split(reference)
    p, r = _flat(params), _flat(ref_state)
    out = _flat(jax.jit(lambda a, b: sync_reference(a, b, alpha=0.3))(ref_state, params))
    assert set(p) <= set(out) == set(r)
    for key, value in out.items():
        want = 0.3 * p[key] + 0.7 * r[key] if key in p else r[key]  # non-parameters unchanged
        np.testing.assert_allclose(value, want, rtol=1e-6, atol=1e-7)
    moved = [k for k in p if not np.allclose(p[k], r[k])]  # the random matrices (norms start at 1 in both)
    assert len(moved) > len(p) // 2 and all(not np.allclose(out[k], r[k]) for k in moved)


def test_run_checkpoints_the_synced_reference(tmp_path):
    """τ = max_steps = 2: one sync, after the last update: reference = α·π₂ + (1 − α)·π₀."""
    alpha = 0.3
    config = _config(**{"train.max_steps": 2, "reference.sync_ref_model": True,
                        "reference.ref_model_mixup_alpha": alpha, "reference.ref_model_sync_steps": 2})
    validate(config)
    start = _flat(nnx.split(build_model(config, gym_lib.from_config(config).vocab_size), nnx.Param, ...)[1])
    run_train(config, str(tmp_path))
    manager = ocp.CheckpointManager(str(tmp_path / "checkpoints" / "train"))
    saved = manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                       reference=ocp.args.StandardRestore()))
    policy, reference = _flat(saved.state["params"]), _flat(saved.reference)
    assert set(policy) == set(start) and set(policy) <= set(reference)
    for key in policy:
        assert not np.allclose(policy[key], start[key])  # the policy trained
        np.testing.assert_allclose(reference[key], alpha * policy[key] + (1 - alpha) * start[key], rtol=1e-5, atol=1e-6)


def test_sync_changes_the_loss_after_it(tmp_path):
    """τ = 1: the reference moves after every step. α = 1 makes it the policy, so each step starts
    at policy = reference (loss exactly log 2); without sync step 2's loss is not log 2; α = 0.5
    lands elsewhere."""
    base = {"train.max_steps": 3, "reference.ref_model_sync_steps": 1}
    runs = {}
    for name, sync, alpha in (("off", False, 0.6), ("hard", True, 1.0), ("half", True, 0.5)):
        config = _config(**base, **{"reference.sync_ref_model": sync, "reference.ref_model_mixup_alpha": alpha})
        run_train(config, str(tmp_path / name))
        runs[name] = losses(tmp_path / name)
    assert runs["off"][0] == runs["hard"][0] == runs["half"][0]  # step 1: no sync has happened yet
    np.testing.assert_allclose(runs["hard"], [math.log(2)] * 3, atol=1e-6)
    assert abs(runs["off"][1] - math.log(2)) > 1e-3
    assert abs(runs["half"][1] - runs["off"][1]) > 1e-4 and abs(runs["half"][1] - math.log(2)) > 1e-4


def test_resume_between_syncs_is_exact(tmp_path):
    """Checkpoints at steps 2 and 4, syncs after steps 1 and 3: a run resumed from step 2 (its
    step-4 checkpoint removed) logs the losses of the uninterrupted run at steps 3 and 4, which
    needs the reference as synced at step 1."""
    config = _config(**{"train.max_steps": 4, "checkpoint.every_steps": 2, "checkpoint.keep": 3,
                        "reference.sync_ref_model": True, "reference.ref_model_mixup_alpha": 0.5,
                        "reference.ref_model_sync_steps": 1})
    run_train(config, str(tmp_path / "clean"))
    run_train(config, str(tmp_path / "resumed"))
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "train" / "4")
    run_train(config, str(tmp_path / "resumed"))
    clean, resumed = losses(tmp_path / "clean"), losses(tmp_path / "resumed")
    assert len(resumed) == 4
    np.testing.assert_allclose(resumed, clean, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("overrides", "match"), [
    ({"reference.mode": "precomputed"}, "reference.sync_ref_model: TR-DPO syncs a reference copy"),
    ({"reference.mode": "lora_base"}, "reference.sync_ref_model: TR-DPO syncs a reference copy"),
    ({"loss.name": "simpo", "loss.beta": 2.0}, "reference.sync_ref_model: loss 'simpo' is reference-free"),
    ({"reference.ref_model_mixup_alpha": 1.5}, r"reference.ref_model_mixup_alpha: must be a number in \[0, 1\]"),
    ({"reference.ref_model_sync_steps": 0}, "reference.ref_model_sync_steps: must be a positive integer"),
])
def test_sync_config_errors(overrides, match):
    config = _config(**{"reference.sync_ref_model": True, **overrides})
    with pytest.raises(ConfigError, match=f"config key {match}"):
        validate(config)
