"""The diffpo task: the recipe builds and validates, bad keys are named, a tiny run writes
results.json in the documented layout."""
import json

import pytest

from pojax.config import ConfigError, validate
from pojax.train.diffpo import run_diffpo, validate_diffpo


def _config():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "diffpo.py"
    spec = importlib.util.spec_from_file_location("diffpo_cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def test_recipe_builds_and_validates():
    config = _config()
    validate(config)
    validate_diffpo(config)
    assert config.task == "diffpo"


@pytest.mark.parametrize("key,value,message", [
    ("divergence", "js", "config key diffpo.divergence: 'js' is not one of kl, soft_ce"),
    ("omega", -1.0, "config key diffpo.omega: must be >= 0"),
    ("eval_policies", ("skill_0.5", "oracle"), "config key diffpo.eval_policies: unknown base policy 'oracle'"),
    ("gym_rule", "xor", "config key diffpo.gym_rule: 'xor' is not one of successor, chain"),
    ("trajectory_order", "random", "config key diffpo.trajectory_order: 'random' is not one of reward, shuffled"),
    ("trajectory_source", "csv", "config key diffpo.trajectory_source: 'csv' is not one of gym, ranked, ultrafeedback"),
    ("trajectory_source", "ranked", "config key data.path: diffpo.trajectory_source='ranked' reads trajectories"),
    ("temperature", -0.5, "config key diffpo.temperature: must be >= 0"),
    ("on_overflow", "drop", "config key diffpo.on_overflow: 'drop' is not one of error, truncate, blocks"),
    ("max_states", 0, "config key diffpo.max_states: must be >= 1"),
])
def test_bad_keys_are_named(key, value, message):
    config = _config()
    config.diffpo[key] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate_diffpo(config)


def test_tiny_run_writes_results(tmp_path):
    config = _config()
    config.train.max_steps = 3
    config.train.batch_size = 8
    config.data.gym.num_train = 32
    config.data.gym.num_eval = 8
    config.logging.progress = False
    config.diffpo.eval_policies = ("skill_0.5", "copy")
    config.diffpo.eval_steps = (1, 2)
    results = run_diffpo(config, str(tmp_path))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["base_policies"]) == {"skill_0.5", "copy"}
    entry = saved["base_policies"]["copy"]
    assert not entry["used_for_training"] and saved["base_policies"]["skill_0.5"]["used_for_training"]
    for key in ("gold_reward_aligned", "steps", "forward_passes"):
        assert set(entry[key]) == {"k1", "k2", "converged"}
    assert set(entry["best_of_n"]) == {"n1", "n2"}
    assert entry["forward_passes"]["k1"] == 1.0 and entry["forward_passes"]["converged"] <= 7
    assert results["steps"] == 3


def test_ragged_trajectories_draw_only_real_states():
    """Row b, slot t holds 10·b + t: a draw below num_states is a real state, and every real one
    comes up; without num_states all K slots do."""
    import jax
    import numpy as np

    from pojax.train.diffpo import draw_states

    b, k = 4, 3
    states = np.broadcast_to((10 * np.arange(b)[:, None] + np.arange(k))[:, :, None], (b, k, 2)).astype(np.int32)
    num = np.asarray([1, 2, 3, 3], np.int32)
    draws = np.stack([np.asarray(draw_states(jax.random.key(i), states, num))[:, 0] for i in range(40)])
    slots = draws - 10 * np.arange(b)
    assert np.all(slots < num) and np.all(slots >= 0)
    assert [len(set(slots[:, r])) for r in range(b)] == [1, 2, 3, 3]
    full = np.stack([np.asarray(draw_states(jax.random.key(i), states))[:, 0] for i in range(40)]) - 10 * np.arange(b)
    assert set(full.ravel()) == {0, 1, 2}
