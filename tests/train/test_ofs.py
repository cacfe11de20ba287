"""OFS-DPO's training mode (pojax.train.ofs): the two LoRA modules share one frozen base, the slow
module's AdamW steps are the fast one's over fast_lr_ratio, a swap exchanges adapters and moments,
and a short online run on the gym raises the labelling reward, swaps, and resumes from a
mid-run checkpoint onto the uninterrupted run; configs it cannot serve fail naming the key."""
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from pojax.config import ConfigError, validate
from pojax.train import ofs, online
from pojax.train.run import build_model
from tests.train.helpers import quick_config, read_jsonl
from tests.train.test_online import stub_reward


@pytest.fixture(scope="module")
def tiny():
    """(number of base parameter arrays, a FastSlow over a tiny random model)."""
    model = build_model(quick_config(), 24)
    n_base = len(jax.tree.leaves(nnx.state(model)))
    return n_base, ofs.fast_slow(model, rank=4, alpha=8.0, rngs=nnx.Rngs(0))


@pytest.fixture
def xla_cache(tmp_path):
    """A persistent compilation cache for one test (restored after): the resumed run reuses the
    first run's executables instead of compiling them again."""
    from jax.experimental.compilation_cache import compilation_cache

    keys = {"jax_compilation_cache_dir": str(tmp_path / "xla"), "jax_persistent_cache_min_compile_time_secs": 0.0,
            "jax_persistent_cache_min_entry_size_bytes": 0}
    saved = {k: getattr(jax.config, k) for k in keys}
    compilation_cache.reset_cache()
    for k, v in keys.items():
        jax.config.update(k, v)
    yield
    for k, v in saved.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()


def test_modules_share_the_base_and_start_equal(tiny):
    n_base, fs = tiny
    _, adapters, frozen = nnx.split(fs, nnx.LoRAParam, ...)
    assert len(jax.tree.leaves(frozen)) == n_base  # one copy of the base, not two
    assert set(adapters.keys()) == {"fast", "slow"}
    # identical adapters, B = 0: both modules start as the base
    for (path, a), b in zip(nnx.to_flat_state(adapters["fast"]), jax.tree.leaves(adapters["slow"])):
        np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b))
        assert path[-1] != "lora_b" or not np.any(np.asarray(b))


def test_slow_module_steps_at_the_lower_learning_rate_and_swap_moves_moments(tiny):
    _, fs = tiny
    params = nnx.split(fs, nnx.LoRAParam, ...)[1]
    ones = jax.tree.map(jnp.ones_like, params)
    tx = optax.chain(optax.adam(1e-2), ofs.scale_module("slow", 0.25))
    state = tx.init(params)
    updates, state = tx.update(ones, state, params)
    u_fast, u_slow = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(updates[k])]) for k in ("fast", "slow"))
    np.testing.assert_allclose(u_slow, 0.25 * u_fast, rtol=1e-6)  # AdamW: a scaled update is a scaled learning rate
    # give the modules different moments, then swap: adapters and moments move together
    grads = jax.tree_util.tree_map_with_path(lambda p, g: g * (3.0 if p[0].key == "slow" else 1.0), ones)
    _, state = tx.update(grads, state, params)
    moved = jax.tree_util.tree_map_with_path(lambda p, x: x + (1.0 if p[0].key == "slow" else 0.0), params)
    s_params, s_state = ofs.swap_modules(moved), ofs.swap_modules(state)
    assert jax.tree.structure(s_params) == jax.tree.structure(moved)
    assert jax.tree.structure(s_state) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(s_params["fast"]), jax.tree.leaves(moved["slow"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    mu, s_mu = state[0][0].mu, s_state[0][0].mu  # chain(scale_by_adam, scale_by_lr)
    for a, b in zip(jax.tree.leaves(s_mu["fast"]), jax.tree.leaves(mu["slow"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(s_state[0][0].count) == int(state[0][0].count)


def test_swap_rule():
    assert ofs.should_swap(0, fast_loss=0.6, slow_loss=0.5, swap_every=1)
    assert not ofs.should_swap(0, fast_loss=0.5, slow_loss=0.6, swap_every=1)
    assert not ofs.should_swap(0, fast_loss=0.6, slow_loss=0.5, swap_every=2)  # checked after steps 2, 4, ...
    assert ofs.should_swap(1, fast_loss=0.6, slow_loss=0.5, swap_every=2)
    assert not ofs.should_swap(9, fast_loss=0.6, slow_loss=0.5, swap_every=0)  # 0 = never


def _config(**overrides):
    return quick_config(**{"loss.name": "ofs_dpo", "train.sft_steps": 0, "train.max_steps": 6, "train.batch_size": 32,
                           "optimizer.learning_rate": 3e-2, "optimizer.warmup_steps": 0,
                           "optimizer.schedule": "constant", "loss.beta": 0.5, "checkpoint.every_steps": 3,
                           "data.gym.num_eval": 16, "eval.num_samples": 1, "logging.plots": False,
                           "train.export_final": False, **overrides})


def test_ofs_run_swaps_and_resumes_onto_the_uninterrupted_run(tmp_path, xla_cache):
    config = _config()
    validate(config)
    results = online.run_online(config, str(tmp_path), reward_fn=stub_reward)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7)) and results["labels"] == 6 * 32
    for key in ("loss", "loss/fast_dpo", "loss/slow_dpo", "loss/ofs_reg", "rewards/slow_margins", "ofs/swapped",
                "rewards/accuracies", "objective/scores", "labels"):
        assert key in rows[-1], key
    assert abs(rows[0]["loss"] - 3 * np.log(2)) < 1e-4  # both modules = reference: three terms of log 2
    assert sum(r["ofs/swapped"] for r in rows) >= 1  # measured: swaps after steps 3 and 4
    assert rows[-1]["loss/fast_dpo"] < rows[0]["loss/fast_dpo"] - 0.1  # measured 0.69 → 0.41
    # kill-and-resume: drop the last checkpoint and the lines after step 3, run again on the workdir
    shutil.rmtree(tmp_path / "checkpoints" / "train" / "6")
    resumed = online.run_online(config, str(tmp_path), reward_fn=stub_reward)
    again = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in again] == list(range(1, 7))
    for want, got in zip(rows[3:], again[3:]):
        for key in ("loss", "loss/slow_dpo", "ofs/swapped", "objective/scores"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
    assert resumed["gold_reward_after"] == results["gold_reward_after"]


@pytest.mark.parametrize("overrides, key", [
    ({"online.fast_lr_ratio": 0.0}, "online.fast_lr_ratio"),
    ({"online.swap_every": -1}, "online.swap_every"),
    ({"online.lora_rank": 0}, "online.lora_rank"),
    ({"online.lora_alpha": -1.0}, "online.lora_alpha"),
    ({"reference.mode": "lora_base"}, "reference.mode"),
    ({"loss.alpha": 0.1}, "loss.alpha"),
])
def test_ofs_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        validate(_config(**overrides))
    assert e.value.key == key
    assert str(e.value).startswith(f"config key {key}:")


def test_swap_hook_compares_window_means_and_empties_the_window(tiny):
    from pojax.train.step import init_state

    _, fs = tiny
    params = nnx.split(fs, nnx.LoRAParam, ...)[1]
    params = jax.tree_util.tree_map_with_path(lambda p, x: x + (1.0 if p[0].key == "slow" else 0.0), params)
    tx = optax.adam(1e-2)
    on_step = ofs.swap_hook(_config(**{"online.swap_every": 2}))
    # window of 2 steps: Σ fast = 1.2, Σ slow = 1.0 → slow is ahead on average → swap after step 2
    state = init_state(params, tx, jnp.asarray([1.2, 1.0, 2.0], jnp.float32))
    same, m = on_step(0, state, {})
    assert m == {"ofs/swapped": 0.0} and same is state  # not a check step: nothing changes
    swapped, m = on_step(1, state, {})
    assert m == {"ofs/swapped": 1.0}
    np.testing.assert_array_equal(np.asarray(swapped.loss_state), np.zeros(3))
    for a, b in zip(jax.tree.leaves(swapped.params["fast"]), jax.tree.leaves(params["slow"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    kept, m = on_step(1, init_state(params, tx, jnp.asarray([1.0, 1.2, 2.0], jnp.float32)), {})
    assert m == {"ofs/swapped": 0.0}
    np.testing.assert_array_equal(np.asarray(kept.loss_state), np.zeros(3))
