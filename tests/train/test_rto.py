"""RTO's PPO stage (pojax.train.rto): the token rewards match a numpy port of the authors' reward
shaping (zkshan2002/RTO at f2c1294) with the config's default coefficients, including values past
both clips; the token rewards of a rollout, computed here from the full logits of three tiny
models, are clip(β₁·(log π_dpo − log π_ref)) − β₂·(log π − log π_ref) + the normalized, clamped
sequence reward on the last token; a tiny online run trains, logs its PPO metrics and resumes
exactly; the switch (rto + reference.guide_path) and its keys fail with the key named."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pojax.config import ConfigError, is_online, rto_ppo, validate
from pojax.data import gym as gym_lib
from pojax.losses import rto_token_rewards
from pojax.models import save_pretrained
from pojax.train import online, rto
from pojax.train.run import build_model
from tests.train.helpers import override, quick_config, read_jsonl, recipe

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
    seq = np.array([0.9, -0.4, 0.1, 3.0, -2.5], np.float32)  # (seq - 0.2) / 0.5 passes ±2 on the last two rows
    arrays, metrics = rto.score_rollout(model, ref, guide, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(seq),
                                        beta=0.7, rto_dpo_clip=0.02, rto_kl_coef=0.3, rto_seq_coef=1.5,
                                        rto_seq_mean=0.2, rto_seq_std=0.5, rto_seq_clip=2.0, gamma=1.0, lam=0.95,
                                        chunk_size=4)
    logits = nnx.jit(lambda m, x: m(x))

    def logp(m):  # log-softmax of the full logits at each completion token, position t - 1 scoring token t
        lp = np.asarray(jax.nn.log_softmax(logits(m, jnp.asarray(ids)).astype(jnp.float32), -1))
        return np.take_along_axis(lp[:, :-1], ids[:, 1:, None], -1)[..., 0]

    lp_pi, lp_ref, lp_dpo = logp(policy), logp(ref), logp(guide)
    want = np.clip(0.7 * (lp_dpo - lp_ref), -0.02, 0.02) - 0.3 * (lp_pi - lp_ref)
    want[:, -1] += 1.5 * np.clip((seq - 0.2) / 0.5, -2.0, 2.0)  # the last completion token of every row
    got = np.asarray(arrays["token_rewards"])
    scored = mask[:, 1:]  # the completion tokens, shifted onto the positions that score them
    assert scored.sum() == 5 * GYM.response_len and scored[:, -1].all()
    clipped = np.abs(0.7 * (lp_dpo - lp_ref))[scored] > 0.02
    assert 0 < clipped.mean() < 1  # the clip binds on some tokens, not all
    np.testing.assert_allclose(metrics["rto/dpo_clipfrac"], clipped.mean(), rtol=1e-5)
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
    # the default sequence reward (the gold reward) is trained on: one label per sample
    assert results["stage"] == "ppo" and results["samples"] == 2 * 8 and results["labels"] == 2 * 8
    assert sorted(os.listdir(tmp_path / "checkpoints" / "train")) == ["2", "4"]


def authors_token_rewards(dpo_logps, base_logps, actor_logps, action_mask, rm_scores, rm_mean, rm_std, *,
                          dpo_reward_scale, dpo_reward_clip, kl_coef):
    """numpy port of the authors' reward shaping (zkshan2002/RTO, commit f2c12948, an OpenRLHF fork),
    written from their code, not from pojax's:
    - the reward model's score, normalized in ``RewardModel.forward`` (openrlhf/models/model.py,
      eval mode with --normalize_reward): (r − mean) / std, mean and std fixed in its config.json;
    - ``NaiveExperienceMaker._compute_dpo_rewards`` (openrlhf/trainer/ppo_utils/experience_maker.py
      l. 221-232): (log π_dpo − log π_init) · action_mask, then × scale (only if scale ≠ 1 and
      scale > 0), then clamped to ±clip (only if clip > 0), π_init being the SFT start;
    - ``compute_reward`` (openrlhf/models/utils.py l. 30-74): −kl_coef · (log π_actor − log π_init)
      · action_mask, the score clamped to ±10 and put on the last action of action_mask, plus the
      DPO token rewards.
    Arrays are [B, A] over the actions (the completion), action_mask a prefix of ones."""
    m = action_mask.astype(np.float64)
    dpo = (dpo_logps - base_logps) * m
    if dpo_reward_scale != 1.0 and dpo_reward_scale > 0:
        dpo = dpo * dpo_reward_scale
    if dpo_reward_clip > 0:
        dpo = np.clip(dpo, -dpo_reward_clip, dpo_reward_clip)
    r = np.clip((rm_scores - rm_mean) / rm_std, -10, 10)
    kl_reward = -max(kl_coef, 0.0) * (actor_logps - base_logps) * m
    eos = m.shape[1] - 1 - np.argmax(m[:, ::-1], axis=1)
    last = np.zeros_like(m)
    last[np.arange(m.shape[0]), eos] = r
    return last + kl_reward + dpo


def authors_rm_stats(scores):
    """OpenRLHF's reward-model trainer (openrlhf/trainer/rm_trainer.py, evaluate): the mean and the
    torch.std (unbiased) of the chosen and rejected scores, std clamped at 1e-8."""
    return scores.mean(), max(scores.std(ddof=1), 1e-8)


def test_default_token_rewards_match_the_authors_code():
    """The default config's shaping (rto.shaping → rto_token_rewards) against the numpy port with
    the flags of their train_rto_llama_8b.sh (scale 0.05, clip 0.05, init_kl_coef 0.01,
    normalize_reward): log-ratios and scores well past both clips. The old shaping (β = 0.1, no
    clip, β₂ = 0.05, no sequence reward) fails it."""
    config = _config(**{"reference.guide_path": "/some/dpo/final"})
    reward_fn = lambda p, y: 40.0 * GYM.gold_reward(p, y) - 7.0  # a reward model with its own scale
    kw = rto.shaping(config, GYM, reward_fn)
    pairs = GYM.paired_set(config.train.seed + 5, rto.STATS_PAIRS)  # the held-out pairs the stats are read on
    start = 2 + GYM.prompt_len
    mean, std = authors_rm_stats(np.concatenate([reward_fn(pairs["prompts"], pairs[k][:, start:])
                                                 for k in ("chosen_ids", "rejected_ids")]))
    np.testing.assert_allclose([kw["rto_seq_mean"], kw["rto_seq_std"]], [mean, std], rtol=1e-12)

    rng = np.random.default_rng(11)
    b, t = 16, 9
    base = -rng.uniform(0.1, 4.0, (b, t))
    dpo = base + rng.normal(0, 3.0, (b, t))  # |0.05 · log-ratio| > 0.05 on about 3 tokens in 4
    actor = base + rng.normal(0, 1.0, (b, t))
    lens = rng.integers(1, t + 1, b)
    mask = np.arange(t)[None, :] < lens[:, None]
    scores = mean + std * rng.normal(0, 12.0, b)  # normalized scores past ±10 on about 2 rows in 5
    want = authors_token_rewards(dpo, base, actor, mask, scores, mean, std, dpo_reward_scale=0.05,
                                 dpo_reward_clip=0.05, kl_coef=0.01)
    assert 0.3 < (np.abs(0.05 * (dpo - base))[mask] > 0.05).mean() < 0.95
    assert 0 < (np.abs((scores - mean) / std) > 10).mean() < 1
    f = lambda x: jnp.asarray(x, jnp.float32)
    got = rto_token_rewards(f(dpo), f(base), jnp.asarray(mask), policy_token_logps=f(actor), sequence_reward=f(scores),
                            **kw)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the recipe carries the same shaping
    assert rto.shaping(recipe("rto", **{"reference.guide_path": "/x"}), GYM, reward_fn) == kw
    # the old defaults do not match
    old = rto_token_rewards(f(dpo), f(base), jnp.asarray(mask), beta=0.1, policy_token_logps=f(actor), rto_kl_coef=0.05)
    assert not np.allclose(old, want, rtol=1e-3, atol=1e-3)


def test_sequence_reward_stats_are_measured_once_or_set():
    config = _config(**{"reference.guide_path": "/some/dpo/final"})
    mean, std = rto.sequence_reward_stats(GYM, GYM.gold_reward, 5)
    p = GYM.base_skill + (1 - GYM.base_skill) / GYM.num_symbols  # P(a base token follows the rule)
    assert mean == pytest.approx(p, abs=0.02) and std == pytest.approx(np.sqrt(p * (1 - p) / GYM.response_len), abs=0.02)
    set_ = rto.shaping(override(config, {"online.rto_seq_mean": 0.5, "online.rto_seq_std": 2.0}), GYM, GYM.gold_reward)
    assert (set_["rto_seq_mean"], set_["rto_seq_std"]) == (0.5, 2.0)
    off = rto.shaping(_config(**{"online.rto_seq_coef": 0.0}), GYM, None)  # no sequence reward: nothing measured
    assert (off["rto_seq_coef"], off["rto_seq_mean"], off["rto_seq_std"]) == (0.0, 0.0, 1.0)


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
                                        ("online.ppo_epochs", 0), ("online.ppo_epochs", 3),
                                        ("online.rto_dpo_beta", 0.0), ("online.rto_dpo_clip", -0.05),
                                        ("online.rto_seq_coef", -1.0), ("online.rto_seq_clip", -10.0),
                                        ("online.rto_seq_std", 0.0), ("online.rto_seq_mean", 0.5)])
def test_rto_config_errors_name_the_key(key, value):
    with pytest.raises(ConfigError) as e:
        validate(_config(**{"reference.guide_path": "/some/dpo/final", key: value}))
    assert e.value.key == key  # ppo_epochs = 3 does not divide checkpoint.every_steps = 2
