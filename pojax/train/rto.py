"""RTO's second stage: PPO on DPO-derived token rewards (Zhong et al., "DPO Meets PPO:
Reinforced Token Optimization for RLHF", arXiv 2404.18922, its practical implementation), an
online mode of pojax.train.online selected by ``loss.name = "rto"`` with a
``reference.guide_path`` (without one, ``rto`` is the offline DPO stage that trains the guide).

Each rollout (``online.ppo_epochs`` optimizer steps share one):
  1. one completion per prompt of ``step_prompts`` sampled from the current policy with the KV
     cache (``online.temperature``);
  2. per-token log-probs of π_dpo (the DPO model of reference.guide_path), π_ref (the frozen SFT
     start) and π_old (the policy now, at temperature 1), and the value head's V(s_t);
  3. the token rewards of ``pojax.losses.rto_token_rewards``, shaped as the authors' code does
     (zkshan2002/RTO at f2c1294, an OpenRLHF fork: ``_compute_dpo_rewards`` and
     ``compute_reward``; coefficients of ``examples/scripts/train_rto_llama_8b.sh``):
        r_t = clip(β₁ log π_dpo/π_ref, ±c₁) − β₂ log π_old/π_ref + 1[last] β₃ clip((r − μ)/σ, ±c₃),
     β₁ = online.rto_dpo_beta (0.05), c₁ = online.rto_dpo_clip (0.05), β₂ = online.rto_kl_coef
     (0.01), β₃ = online.rto_seq_coef (1) with r = online.reward, μ, σ = online.rto_seq_mean /
     rto_seq_std (unset: ``sequence_reward_stats``), c₃ = online.rto_seq_clip (10);
  4. GAE advantages and returns (``pojax.losses.ppo.gae``; γ = online.gamma, λ =
     online.gae_lambda), the advantages whitened over the batch's tokens;
  5. ``online.ppo_epochs`` optimizer steps of the clipped PPO loss plus the value loss
     (``pojax.losses.ppo.ppo_loss``; ε = online.ppo_clip, c_v = online.value_coef), each on the
     whole rollout (one minibatch per epoch).

Departures from the authors' code. The critic: theirs is a separate model initialised from the
reward model (``--critic_pretrain $RM``), with its own optimizer (lr 9e-6) and value clipping
(0.2); pojax's is a linear value head on the policy's final hidden states (``PolicyWithValue``),
zero-initialized, on stop_gradient(h), so the value loss trains the head only, never the
policy's trunk: a probe of the policy's features is the smallest critic that keeps the value
loss from pulling on the policy, and the gym has no trained reward model to start one from. The
reward model: on the gym the sequence reward is ``online.reward`` (the gold reward) where they
score with a trained reward model (RTO-RL/Llama3.2-1B-RewardModel), so the PPO stage spends gold
labels (results.json's ``labels`` counts one per sampled completion; measuring μ and σ, when
unset, scores 2 × ``STATS_PAIRS`` held-out responses once more); online.rto_seq_coef = 0 trains
on the DPO token rewards alone. The schedule: theirs samples 1,024 prompts per rollout and takes
one epoch of optimizer steps on 128 of them each; pojax takes ``online.ppo_epochs`` full-batch
steps per rollout of train.batch_size prompts.

Resumption: a rollout is a pure function of its index and the policy at its first step, and
checkpoints fall on rollout boundaries (checkpoint.every_steps is a multiple of
online.ppo_epochs, pojax.config), so a resumed run samples exactly what the uninterrupted one did.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pojax.likelihood import autoregressive as ar
from pojax.losses import rto_token_rewards
from pojax.losses.ppo import gae, ppo_loss, whiten
from pojax.models.layers import param
from pojax.sampling import generate
from pojax.train.optim import make_optimizer


class PolicyWithValue(nnx.Module):
    """The policy and its value head V(s_t) = w · stop_gradient(h_t) + b (h = final hidden states)."""

    def __init__(self, policy: nnx.Module, hidden_size: int):
        self.policy = policy
        self.value_w = param(None, (hidden_size,), ("embed",), jnp.float32, init="zeros")
        self.value_b = param(None, (), (), jnp.float32, init="zeros")

    def logps_and_values(self, ids_BT, targets_BT, *, chunk_size: int):
        """(log π(targets) [B, T] float32, V [B, T] float32) from one forward of the policy."""
        h = self.policy.hidden_states(ids_BT)
        w = self.policy.lm_head_weight().astype(h.dtype)
        logps = ar.token_logps_from_hidden(h, w, targets_BT, chunk_size=chunk_size,
                                           logit_soft_cap=ar.soft_cap_of(self.policy))
        values = jnp.einsum("btd,d->bt", jax.lax.stop_gradient(h).astype(jnp.float32), self.value_w[...]) + self.value_b[...]
        return logps, values


def token_logps(model, ids_BT, mask_BT, *, chunk_size: int):
    """(log p [B, T] float32, the shifted action mask [B, T] bool) of a causal LM's rows."""
    targets, tmask = ar.shift_targets(ids_BT, mask_BT)
    return ar.token_logps(model, ids_BT, targets, chunk_size=chunk_size), tmask


# held-out pairs whose rewards give the sequence reward's μ and σ when the config leaves them unset
STATS_PAIRS = 1024


def sequence_reward_stats(gym, reward_fn, seed: int) -> tuple[float, float]:
    """(μ, σ) that normalize the sequence reward: the mean and the unbiased standard deviation
    (at least 1e-8) of ``reward_fn`` over the chosen and the rejected responses of ``STATS_PAIRS``
    gym pairs drawn with ``seed`` (the held-out seed, train.seed + 5). The authors' reward model
    carries the same two numbers, measured by OpenRLHF's reward-model trainer on its held-out
    preference pairs (chosen and rejected scores together) and applied at scoring time with
    ``--normalize_reward``: fixed for the whole PPO run, not a running or per-batch statistic."""
    pairs = gym.paired_set(seed, STATS_PAIRS)
    start = 2 + gym.prompt_len  # BOS, prompt, SEP, then the response
    scores = np.concatenate([np.asarray(reward_fn(pairs["prompts"], pairs[k][:, start:]), np.float64)
                             for k in ("chosen_ids", "rejected_ids")])
    return float(scores.mean()), float(max(scores.std(ddof=1), 1e-8))


def shaping(config, gym, reward_fn) -> dict:
    """The keyword arguments of ``pojax.losses.rto_token_rewards`` for this run's online.rto_*
    keys (the sequence reward's μ and σ measured by ``sequence_reward_stats`` when unset)."""
    o = config.online
    mean, std = o.rto_seq_mean, o.rto_seq_std
    if mean is None and float(o.rto_seq_coef) > 0:
        mean, std = sequence_reward_stats(gym, reward_fn, config.train.seed + 5)
    return dict(beta=float(o.rto_dpo_beta), rto_dpo_clip=float(o.rto_dpo_clip), rto_kl_coef=float(o.rto_kl_coef),
                rto_seq_coef=float(o.rto_seq_coef), rto_seq_mean=float(mean or 0.0),
                rto_seq_std=float(1.0 if std is None else std), rto_seq_clip=float(o.rto_seq_clip))


def rollout_arrays(model: PolicyWithValue, reference, guide, ids_BT, mask_BT, sequence_reward_B, *, gamma, lam,
                   chunk_size, beta, rto_kl_coef, rto_seq_coef, rto_dpo_clip=0.0, rto_seq_mean=0.0, rto_seq_std=1.0,
                   rto_seq_clip=0.0):
    """The PPO inputs of sampled rows ``ids_BT`` / ``mask_BT`` (completion tokens): a dict of
    [B, T] float32 old_logps, advantages (whitened), returns, token_rewards, and metrics. The
    reward keywords are ``rto_token_rewards``'s (``shaping``). Pure: jit it with the three models
    as arguments."""
    targets, tmask = ar.shift_targets(ids_BT, mask_BT)
    old, values = model.logps_and_values(ids_BT, targets, chunk_size=chunk_size)
    ref, _ = token_logps(reference, ids_BT, mask_BT, chunk_size=chunk_size)
    dpo, _ = token_logps(guide, ids_BT, mask_BT, chunk_size=chunk_size)
    rewards = rto_token_rewards(dpo, ref, tmask, beta=beta, rto_dpo_clip=rto_dpo_clip, policy_token_logps=old,
                                rto_kl_coef=rto_kl_coef, sequence_reward=sequence_reward_B, rto_seq_coef=rto_seq_coef,
                                rto_seq_mean=rto_seq_mean, rto_seq_std=rto_seq_std, rto_seq_clip=rto_seq_clip)
    dpo_rewards = rto_token_rewards(dpo, ref, tmask, beta=beta, rto_dpo_clip=rto_dpo_clip)
    adv, returns = gae(rewards, values, tmask, gamma=gamma, lam=lam)
    n, rows = jnp.maximum(jnp.sum(tmask), 1).astype(jnp.float32), tmask.shape[0]
    masked_sum = lambda x: jnp.sum(jnp.where(tmask, x, 0.0))
    clipped = jnp.abs(beta * (dpo - ref)) > (rto_dpo_clip if rto_dpo_clip > 0 else jnp.inf)
    # per token: the reward, the value and how often c₁ binds; per completion: Σ_t of the clipped
    # DPO token reward and Σ_t log π_old/π_ref
    metrics = {"rto/token_reward": masked_sum(rewards) / n, "ppo/values": masked_sum(values) / n,
               "rto/dpo_reward": masked_sum(dpo_rewards) / rows, "rto/dpo_clipfrac": masked_sum(clipped) / n,
               "rto/kl": masked_sum(old - ref) / rows}
    arrays = {"old_logps": old, "advantages": whiten(adv, tmask), "returns": returns, "token_rewards": rewards}
    return arrays, metrics


# one compiled scorer per process and shape (shared by every Rollouts and run)
score_rollout = nnx.jit(rollout_arrays, static_argnames=("gamma", "lam", "chunk_size", "beta", "rto_kl_coef",
                                                         "rto_seq_coef", "rto_dpo_clip", "rto_seq_mean", "rto_seq_std",
                                                         "rto_seq_clip"))


def objective(config):
    """``(model, reference, batch, loss_state) -> (loss, metrics, loss_state)``: ``ppo_loss`` of a
    PolicyWithValue on a rollout batch (input_ids, completion_mask, old_logps, advantages,
    returns), averaged over its rows."""
    o, chunk = config.online, config.likelihood.chunk_size

    def obj(m, ref, batch, ls):
        targets, tmask = ar.shift_targets(batch["input_ids"], batch["completion_mask"])
        logps, values = m.logps_and_values(batch["input_ids"], targets, chunk_size=chunk)
        loss, metrics = ppo_loss(logps, batch["old_logps"], batch["advantages"], values, batch["returns"], tmask,
                                 clip=float(o.ppo_clip), value_coef=float(o.value_coef))
        return jnp.mean(loss), {k: jnp.mean(v) for k, v in metrics.items()}, ls

    return obj


class Rollouts:
    """The batch source (pojax.train.loop.BatchSource) of RTO's PPO stage: optimizer step s
    trains on rollout s // online.ppo_epochs, sampled at its first step from the policy of that
    step (module docstring); ``online_lib`` is pojax.train.online (prompts and prompt rows)."""

    iterator = None

    def __init__(self, config, gym, reference, guide, reward_fn, batch_size: int):
        # the online loop imports this module: a lazy import breaks the cycle
        from pojax.train import online

        self.config, self.gym, self.reference, self.guide = config, gym, reference, guide
        self.reward_fn, self.batch_size, self.online = reward_fn, batch_size, online
        self.key = jax.random.key(config.train.seed + 29)
        self.cached = (None, None)  # (rollout index, (batch, metrics))
        o = config.online
        self.kw = shaping(config, gym, reward_fn) | dict(gamma=float(o.gamma), lam=float(o.gae_lambda),
                                                          chunk_size=config.likelihood.chunk_size)

    def example(self) -> dict:
        n, t = self.batch_size, self.gym.seq_len
        batch = {"input_ids": np.zeros((n, t), np.int32), "completion_mask": np.zeros((n, t), bool)}
        return batch | {k: np.zeros((n, t), np.float32) for k in ("old_logps", "advantages", "returns")}

    def rollout(self, index: int, model: PolicyWithValue) -> tuple[dict, dict]:
        prompts = self.online.step_prompts(self.gym, self.config.train.seed, index, self.batch_size)
        rows = self.online._prompt_rows(prompts)
        completions = np.asarray(generate(model.policy, jnp.asarray(rows), jax.random.fold_in(self.key, index),
                                          max_new_tokens=self.gym.response_len,
                                          temperature=float(self.config.online.temperature)))
        ids, mask = self.gym.sequence(prompts, completions)
        scores = np.asarray(self.reward_fn(prompts, completions), np.float32)
        arrays, metrics = score_rollout(model, self.reference, self.guide, jnp.asarray(ids), jnp.asarray(mask),
                                        jnp.asarray(scores), **self.kw)
        batch = {"input_ids": ids, "completion_mask": mask}
        batch |= {k: np.asarray(arrays[k], np.float32) for k in ("old_logps", "advantages", "returns")}
        return batch, {k: float(v) for k, v in metrics.items()} | {"objective/scores": float(scores.mean())}

    def next(self, step: int, policy) -> tuple[dict, dict]:
        index = step // int(self.config.online.ppo_epochs)
        if self.cached[0] != index:
            self.cached = (index, self.rollout(index, policy()))
        batch, metrics = self.cached[1]
        return batch, metrics | {"rollouts": index + 1, "samples": (index + 1) * self.batch_size}

    def seek(self, index: int) -> None:
        pass  # a rollout depends only on its index and the policy at its first step

    def close(self) -> None:
        pass


def stage(config, model: nnx.Module, steps: int, *, reference, guide, gym, reward_fn, batch_size: int):
    """(the PolicyWithValue to train, run_stage's keyword arguments, the sampler: it -> the
    policy) of RTO's PPO stage on ``model`` (the SFT start)."""
    trained = PolicyWithValue(model, model.config.hidden_size)
    source = Rollouts(config, gym, reference, guide, reward_fn, batch_size)
    return trained, {"objective": objective(config), "tx": make_optimizer(config, steps), "source": source}, \
        lambda m: m.policy
