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
    ("consistency_mask", "prefix", "config key diffpo.consistency_mask: 'prefix' is not one of response, "
                                   "first_difference"),
    ("label_smoothing", 1.0, "config key diffpo.label_smoothing: must be in [0, 1), got 1.0"),
    ("reserve_tokens", -1, "config key diffpo.reserve_tokens: must be >= 0 (0 = no reserved prefix), got -1"),
])
def test_bad_keys_are_named(key, value, message):
    config = _config()
    config.diffpo[key] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
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
    assert (saved["reserve_tokens"], saved["label_smoothing"], saved["consistency_mask"]) == (1, 0.1, "first_difference")


def test_gym_refinement_keeps_the_drawn_prefix():
    """refine_gym with the task's draws: each response's first r tokens are the base policy's, the rest
    is the aligner's greedy continuation of them (to convergence), with or without the prefix cache;
    r = N keeps the whole response."""
    import numpy as np
    from flax import nnx

    from pojax.data.gym import Gym
    from pojax.diffpo.jacobi import greedy_next
    from pojax.diffpo.refine import draw_reserved_prefix
    from pojax.diffpo.trajectories import make_gym, policy_responses
    from pojax.models import CausalLM, ModelConfig
    from pojax.train.diffpo import refine_gym

    gym = make_gym(Gym(), "chain")
    model = CausalLM(ModelConfig(vocab_size=gym.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    prompts = gym.prompts(rng, 6)
    base = policy_responses(gym, "skill_0.3", rng, prompts)
    reserved = draw_reserved_prefix(6, 2, seed=1)
    reserved[-1] = gym.response_len
    out, _, _ = refine_gym(model, gym, prompts, base, max_steps=None, reserved=reserved)
    cached, _, _ = refine_gym(model, gym, prompts, base, max_steps=None, reserved=reserved, prefix_cache=True)
    np.testing.assert_array_equal(cached, out)
    assert len(set(reserved.tolist())) > 1
    n0 = 2 + gym.prompt_len
    for i, r in enumerate(reserved):
        np.testing.assert_array_equal(out[i, :r], base[i, :r])
        row, _ = gym.sequence(prompts[i:i + 1], out[i:i + 1])
        nxt = np.asarray(greedy_next(model, row))[0]  # a fixed point: every refined slot is the greedy token
        np.testing.assert_array_equal(out[i, r:], nxt[n0 + r - 1:n0 + gym.response_len - 1])


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
