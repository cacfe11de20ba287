"""What the trainer feeds the token-level and scored losses, against numpy references from the
models' full logits: TDPO's per-token KL in TokenLogps.extra, TGDPO's guide token rewards
(computed once, columns of the rows), MADPO's reward_margin passed from the batch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pojax.losses as L
from pojax.config import ConfigError, base_config
from pojax.models import CausalLM, ModelConfig, save_pretrained
from pojax.objectives import pair_logps, preference_loss
from pojax.train.guide import guide_token_rewards, load_guide

V = 29
CONFIG = ModelConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1)


def model(seed):
    return CausalLM(CONFIG, rngs=nnx.Rngs(seed))


def batch(b=3, t=9, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros((b, t), bool)
    mask[:, 4:] = True
    mask[0, 7:] = False  # a shorter completion (right padding)
    return {"chosen_ids": rng.integers(0, V, (b, t)).astype(np.int32),
            "rejected_ids": rng.integers(0, V, (b, t)).astype(np.int32), "chosen_mask": mask, "rejected_mask": mask}


full_logits = nnx.jit(lambda m, ids: m(ids))  # [B, T, V], one compile (eager would compile op by op)


def log_softmax(m, ids):
    z = np.asarray(full_logits(m, jnp.asarray(ids)), np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def shifted_mask(mask):
    return np.concatenate([mask[:, 1:], np.zeros_like(mask[:, :1])], 1)


def test_token_kl_extra_equals_full_softmax_reference():
    policy, ref, b = model(0), model(1), batch()
    lp = nnx.jit(lambda p, r, x: pair_logps(p, r, x, chunk_size=4, with_token_kl=True))(policy, ref, b)
    plain = nnx.jit(lambda p, r, x: pair_logps(p, r, x, chunk_size=4))(policy, ref, b)
    for side, tokens, plain_tokens in (("chosen", lp.chosen_tokens, plain.chosen_tokens),
                                       ("rejected", lp.rejected_tokens, plain.rejected_tokens)):
        lp_p, lp_q = log_softmax(policy, b[f"{side}_ids"]), log_softmax(ref, b[f"{side}_ids"])
        want = (np.exp(lp_q) * (lp_q - lp_p)).sum(-1)
        got = np.asarray(tokens.extra[L.TOKEN_KL])
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)
        np.testing.assert_array_equal(tokens.mask, shifted_mask(b[f"{side}_mask"]))
        # the shared forward gives the same log-probs as the plain path
        np.testing.assert_allclose(tokens.policy, plain_tokens.policy, atol=1e-5)
        np.testing.assert_allclose(tokens.ref, plain_tokens.ref, atol=1e-5)
    with pytest.raises(ValueError, match="needs a reference model"):
        pair_logps(policy, None, b, with_token_kl=True)


def test_tdpo_trains_through_the_kl_and_reduces_to_dpo_at_alpha_zero():
    policy, ref, b = model(0), model(1), batch()
    graphdef, params, rest = nnx.split(policy, nnx.Param, ...)

    def loss(p, name, alpha):
        hp = {"beta": 0.1, "tdpo_alpha": alpha} if name == "tdpo" else {"beta": 0.1}
        return preference_loss(nnx.merge(graphdef, p, rest), ref, b, loss_name=name, hparams=hp)[0]

    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)  # alpha traced: one compile
    (tdpo0, g0), (tdpo1, g1) = (value_and_grad(params, "tdpo", a) for a in (0.0, 0.5))
    sigmoid, g_sig = value_and_grad(params, "sigmoid", 0.0)
    np.testing.assert_allclose(tdpo0, sigmoid, rtol=1e-6)
    for a, c in zip(jax.tree.leaves(g0), jax.tree.leaves(g_sig)):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-7)
    assert abs(float(tdpo1) - float(sigmoid)) > 1e-5
    diff = max(float(jnp.max(jnp.abs(a - c))) for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)))
    assert diff > 1e-6  # the KL term reaches the policy's gradient


def test_reward_margin_and_token_rewards_come_from_the_batch():
    policy, ref, b = model(0), model(1), batch()
    margin = np.array([0.5, -1.0, 3.0], np.float32)
    loss = nnx.jit(lambda p, r, x, name: preference_loss(p, r, x, loss_name=name, hparams={"beta": 0.1})[0],
                   static_argnums=3)
    got = loss(policy, ref, dict(b, reward_margin=margin), "madpo")
    lp = nnx.jit(pair_logps)(policy, ref, b)
    want = jnp.mean(L.get("madpo")(lp, beta=0.1, reward_margin=margin).loss)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(loss(policy, ref, dict(b, reward_margin=0 * margin), "madpo"),
                               jnp.mean(L.get("madpo")(lp, beta=0.1, reward_margin=0 * margin).loss), rtol=1e-6)
    assert abs(float(got) - float(loss(policy, ref, dict(b, reward_margin=0 * margin), "madpo"))) > 1e-6
    # losses without the argument ignore the column
    np.testing.assert_allclose(loss(policy, ref, dict(b, reward_margin=margin), "sigmoid"), loss(policy, ref, b, "sigmoid"))
    rewards = np.random.default_rng(1).standard_normal((3, 9)).astype(np.float32)
    lp = nnx.jit(pair_logps)(policy, ref, dict(b, chosen_token_rewards=rewards, rejected_token_rewards=-rewards))
    np.testing.assert_array_equal(lp.chosen_tokens.extra[L.TOKEN_REWARDS], rewards)
    np.testing.assert_array_equal(lp.rejected_tokens.extra[L.TOKEN_REWARDS], -rewards)


def test_guide_token_rewards_equal_beta_log_ratio_of_full_softmaxes():
    guide, ref, b = model(2), model(1), batch()
    out = guide_token_rewards(guide, ref, b, beta=0.3, batch_size=2, chunk_size=4)
    for side in ("chosen", "rejected"):
        ids = b[f"{side}_ids"]
        targets = np.concatenate([ids[:, 1:], np.zeros_like(ids[:, :1])], 1)
        def pick(lp, targets=targets):
            return np.take_along_axis(lp, targets[..., None], -1)[..., 0]

        want = 0.3 * (pick(log_softmax(guide, ids)) - pick(log_softmax(ref, ids)))
        want = np.where(shifted_mask(b[f"{side}_mask"]), want, 0.0)
        np.testing.assert_allclose(out[f"{side}_token_rewards"], want, rtol=1e-4, atol=1e-6)
    assert np.abs(out["chosen_token_rewards"]).max() > 1e-3


def test_guide_errors_name_reference_guide_path(tmp_path):
    config = base_config()
    with pytest.raises(ConfigError, match="config key reference.guide_path: loss 'tgdpo' needs a guide"):
        load_guide(config, V)
    config.reference.guide_path = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="config key reference.guide_path: .*not a readable"):
        load_guide(config, V)
    save_pretrained(model(0), str(tmp_path / "guide"))
    config.reference.guide_path = str(tmp_path / "guide")
    with pytest.raises(ConfigError, match=f"vocabulary of {V} tokens, the policy has {V + 1}"):
        load_guide(config, V + 1)
    assert load_guide(config, V).config.vocab_size == V
