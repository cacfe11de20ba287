"""RTO's PPO stage (pojax.train.rto): the token rewards of a rollout equal β·(log π_dpo − log
π_ref) − β₂·(log π − log π_ref) at every sampled token, computed here from the full logits of
three tiny models; a tiny online run trains, logs its PPO metrics and resumes exactly; the
switch (rto + reference.guide_path) and its keys fail with the key named."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pojax.config import ConfigError, is_online, rto_ppo, validate
from pojax.data import gym as gym_lib
from pojax.models import save_pretrained
from pojax.train import online, rto
from pojax.train.run import build_model
from tests.train.helpers import quick_config, read_jsonl

GYM = gym_lib.Gym()
SMALL = {"model.num_layers": 1, "model.hidden_size": 32, "model.intermediate_size": 64}  # compiles faster


def _config(tmp_path=None, **overrides):
    base = {"loss.name": "rto", "train.sft_steps": 0, "train.max_steps": 4, "train.batch_size": 8,
            "optimizer.learning_rate": 1e-2, "optimizer.warmup_steps": 0, "optimizer.schedule": "constant",
            "checkpoint.every_steps": 2, "online.ppo_epochs": 2, "data.gym.num_eval": 8, "eval.num_samples": 1,
            "logging.plots": False, "train.export_final": False}
    if tmp_path is not None:
        base["reference.guide_path"] = str(tmp_path / "guide")
    return quick_config(**{**SMALL, **base, **overrides})


def _model(seed):
    return build_model(quick_config(**SMALL, **{"train.seed": seed}), GYM.vocab_size)


def test_token_rewards_match_full_logits():
    policy, ref, guide = (_model(s) for s in (1, 2, 3))
    model = rto.PolicyWithValue(policy, policy.config.hidden_size)
    rng = np.random.default_rng(0)
    prompts = GYM.prompts(rng, 5)
    ids, mask = GYM.sequence(prompts, GYM.prompts(rng, 5)[:, :GYM.response_len])
    arrays, _ = rto.score_rollout(model, ref, guide, jnp.asarray(ids), jnp.asarray(mask), jnp.zeros(5), beta=0.7,
                                  kl_coef=0.3, seq_coef=0.0, gamma=1.0, lam=0.95, chunk_size=4)
    logits = nnx.jit(lambda m, x: m(x))

    def logp(m):  # log-softmax of the full logits at each completion token, position t - 1 scoring token t
        lp = np.asarray(jax.nn.log_softmax(logits(m, jnp.asarray(ids)).astype(jnp.float32), -1))
        return np.take_along_axis(lp[:, :-1], ids[:, 1:, None], -1)[..., 0]

    lp_pi, lp_ref, lp_dpo = logp(policy), logp(ref), logp(guide)
    want = 0.7 * (lp_dpo - lp_ref) - 0.3 * (lp_pi - lp_ref)
    got = np.asarray(arrays["token_rewards"])
    scored = mask[:, 1:]  # the completion tokens, shifted onto the positions that score them
    assert scored.sum() == 5 * GYM.response_len
    np.testing.assert_allclose(got[:, :-1][scored], want[scored], rtol=1e-4, atol=1e-5)
    assert not got[:, :-1][~scored].any() and not got[:, -1].any()
    np.testing.assert_allclose(np.asarray(arrays["old_logps"])[:, :-1][scored], lp_pi[scored], rtol=1e-4, atol=1e-5)
    assert abs(want[scored]).min() > 0  # the three models differ: every term is exercised


def test_rollouts_are_shared_by_the_epochs_and_reproducible(tmp_path):
    """Steps 2k and 2k + 1 train on one rollout; a fresh source (a resumed run) given the same
    policy at a rollout's first step samples and scores exactly the same batch."""
    config = _config(tmp_path)
    model = rto.PolicyWithValue(_model(0), 32)
    ref, guide = _model(0), _model(3)
    first = rto.Rollouts(config, GYM, ref, guide, GYM.gold_reward, 8)
    b0, m0 = first.next(0, lambda: model)
    b1, m1 = first.next(1, lambda: model)
    b2, m2 = first.next(2, lambda: model)
    assert b1 is b0 and (m0["rollouts"], m1["rollouts"], m2["rollouts"]) == (1, 1, 2)
    assert not np.array_equal(b2["input_ids"], b0["input_ids"])  # new prompts and samples
    again, _ = rto.Rollouts(config, GYM, ref, guide, GYM.gold_reward, 8).next(2, lambda: model)
    for k in b2:
        np.testing.assert_array_equal(again[k], b2[k], err_msg=k)
    assert set(b2) == set(first.example()) and all(b2[k].shape == v.shape for k, v in first.example().items())


def test_rto_runs_and_resumes(tmp_path):
    save_pretrained(_model(5), str(tmp_path / "guide"))  # the guide ≠ the seed-0 SFT start
    online.run_online(_config(tmp_path, **{"train.max_steps": 2}), str(tmp_path))
    config = _config(tmp_path)
    validate(config)
    results = online.run_online(config, str(tmp_path))  # resumes at step 2: the second rollout
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and [r["rollouts"] for r in rows] == [1, 1, 2, 2]
    for key in ("loss", "ppo/policy_loss", "ppo/value_loss", "ppo/clipfrac", "ppo/approx_kl", "rto/token_reward",
                "rto/kl", "objective/scores", "grad_norm"):
        assert key in rows[-1], key
    # a rollout's first step is on-policy (ratio 1, nothing clipped), the resumed one included:
    # it was sampled and scored by the restored policy
    for r in (rows[0], rows[2]):
        assert r["ppo/ratio"] == pytest.approx(1.0, abs=1e-5) and r["ppo/clipfrac"] == 0.0
    assert rows[0]["rto/kl"] == pytest.approx(0.0, abs=1e-5)  # π = π_ref before any step
    assert rows[2]["rto/kl"] != pytest.approx(0.0, abs=1e-3)  # the restored policy has moved
    assert rows[1]["ppo/approx_kl"] > 0 and rows[3]["ppo/approx_kl"] > 0  # the 2nd epoch: after a step
    assert results["stage"] == "ppo" and results["samples"] == 2 * 8 and results["labels"] == 0
    assert sorted(os.listdir(tmp_path / "checkpoints" / "train")) == ["2", "4"]


def test_the_switch_and_its_keys():
    offline = _config()
    assert not rto_ppo(offline) and not is_online(offline)  # rto without a guide: the DPO stage
    ppo = _config(**{"reference.guide_path": "/some/dpo/final"})
    assert rto_ppo(ppo) and is_online(ppo)
    validate(ppo)
    with pytest.raises(ConfigError, match="config key reference.guide_path: is read by losses 'tgdpo' and 'rto'"):
        validate(_config(**{"loss.name": "sigmoid", "reference.guide_path": "/x"}))


@pytest.mark.parametrize("key, value", [("online.gamma", 1.5), ("online.gae_lambda", -0.1), ("online.ppo_clip", 0.0),
                                        ("online.value_coef", -1.0), ("online.rto_kl_coef", -0.1),
                                        ("online.ppo_epochs", 0), ("online.ppo_epochs", 3)])
def test_rto_config_errors_name_the_key(key, value):
    with pytest.raises(ConfigError) as e:
        validate(_config(**{"reference.guide_path": "/some/dpo/final", key: value}))
    assert e.value.key == key  # ppo_epochs = 3 does not divide checkpoint.every_steps = 2
