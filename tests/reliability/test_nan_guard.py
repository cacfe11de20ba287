"""Non-finite loss or gradients: the jitted step drops the update on the device (no host sync);
train.nan_policy=skip carries on with the parameters bit-identical, stop raises naming the step
and leaves the last good checkpoint as the latest."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from pojax import sharding
from pojax.data.pipeline import make_dataset
from pojax.models import CausalLM, ModelConfig
from pojax.objectives import sft_loss
from pojax.train.checkpoint import Checkpoints
from pojax.train.loop import run_stage
from pojax.train.step import NonFiniteError, init_state, make_train_step
from tests.train.helpers import quick_config, read_jsonl

B, T, POISONED = 8, 8, 3  # batch, length, the (1-based) step whose batch carries a NaN


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _linear_step(tx):
    graphdef, params, rest = nnx.split(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), nnx.Param, ...)

    def objective(model, batch, loss_state, ref_state):
        loss = jnp.mean((model(batch["x"]) - batch["y"]) ** 2)
        return loss, {}, loss_state

    step = jax.jit(make_train_step(graphdef, objective, tx))
    return (lambda state, batch, frozen, ref: step(state, batch, rest, ref)), init_state(params, tx)


def _batch(poison=False):
    x = np.ones((4, 3), np.float32)
    if poison:
        x[1, 2] = np.nan
    return {"x": jnp.asarray(x), "y": jnp.zeros((4, 2))}


def test_step_drops_a_non_finite_update():
    step, state = _linear_step(optax.adam(0.1))
    state, m = step(state, _batch(), None, None)
    assert int(m["skipped"]) == 0
    before = jax.tree.map(jnp.copy, state)
    state, m = step(state, _batch(poison=True), None, None)
    assert int(m["skipped"]) == 1 and not np.isfinite(float(m["loss"]))
    assert _leaves_equal(state.params, before.params) and _leaves_equal(state.opt_state, before.opt_state)
    assert int(state.step) == 2  # the step counter still moves: it counts calls, not updates
    state, m = step(state, _batch(), None, None)
    assert int(m["skipped"]) == 0 and not _leaves_equal(state.params, before.params)


def test_multisteps_drops_the_micro_batch_and_its_accumulation():
    """With optax.MultiSteps (k=2) a non-finite micro-batch leaves the accumulator and its
    counter untouched: the update lands after the next two finite micro-batches."""
    step, state = _linear_step(optax.MultiSteps(optax.sgd(0.1), every_k_schedule=2))
    p0 = jax.tree.map(jnp.copy, state.params)
    state, _ = step(state, _batch(), None, None)  # micro 1 of 2
    state, m = step(state, _batch(poison=True), None, None)  # dropped
    assert int(m["skipped"]) == 1 and _leaves_equal(state.params, p0)
    assert int(state.opt_state.mini_step) == 1
    state, _ = step(state, _batch(), None, None)  # micro 2 of 2: the update
    ref_step, ref = _linear_step(optax.MultiSteps(optax.sgd(0.1), every_k_schedule=2))
    for _ in range(2):
        ref, _ = ref_step(ref, _batch(), None, None)
    assert _leaves_equal(state.params, ref.params)


def _stage(tmp_path, policy, steps):
    config = quick_config(**{"train.nan_policy": policy, "checkpoint.every_steps": 1, "checkpoint.keep": 10})
    mc = ModelConfig(model_type="llama", vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, dtype="float32", param_dtype="float32",
                     max_position_embeddings=64)
    mesh, rules = sharding.mesh_from_config(config), sharding.rules_from_config(config)
    model = sharding.shard_module(CausalLM(mc, rngs=nnx.Rngs(0)), mesh, rules)
    rng = np.random.default_rng(0)
    n = B * steps
    poison = np.zeros(n, np.float32)
    poison[(POISONED - 1) * B + 5] = np.nan  # one row of the batch of step 3 (no shuffling below)
    rows = {"input_ids": rng.integers(1, 32, (n, T)).astype(np.int32),
            "completion_mask": np.tile(np.arange(T) >= T // 2, (n, 1)), "poison": poison}

    def objective(m, ref, batch, ls):  # a "hook": the poison column adds NaN to one batch's loss
        loss, metrics = sft_loss(m, batch)
        return loss + jnp.sum(batch["poison"]), metrics, ls

    return run_stage("train", model, objective=objective, steps=steps, tx=optax.adam(1e-2), workdir=str(tmp_path),
                     dataset=make_dataset(rows, batch_size=B, seed=0, shuffle=False), config=config, mesh=mesh,
                     rules=rules), config


def test_skip_policy_keeps_params_and_training_continues(tmp_path):
    (_, state, _), config = _stage(tmp_path, "skip", steps=5)
    lines = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["skipped"] for r in lines] == [0, 0, 1, 0, 0]
    assert all(np.isfinite(r["loss"]) for i, r in enumerate(lines) if i != POISONED - 1)
    assert lines[-1]["loss"] != lines[1]["loss"]
    ckpt = Checkpoints(str(tmp_path / "checkpoints" / "train"), keep=10)
    s2, _ = ckpt.restore(state, step=POISONED - 1)
    s3, _ = ckpt.restore(state, step=POISONED)
    s4, _ = ckpt.restore(state, step=POISONED + 1)
    ckpt.close()
    assert _leaves_equal(s3.params, s2.params) and _leaves_equal(s3.opt_state, s2.opt_state)
    assert not _leaves_equal(s4.params, s3.params)


def test_stop_policy_raises_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteError, match=rf"train: step {POISONED}: non-finite loss or gradients.*nan_policy=stop"):
        _stage(tmp_path, "stop", steps=5)
    ckpt = Checkpoints(str(tmp_path / "checkpoints" / "train"), keep=10)
    assert ckpt.latest_step() == POISONED - 1
    ckpt.close()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == list(range(1, POISONED))
