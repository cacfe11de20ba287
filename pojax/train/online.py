"""The online modes of the ``train`` task (``loss.name`` in pojax.config.ONLINE_LOSSES):
preference pairs are sampled from the current policy during training and labelled by a reward
callable, instead of being read from a fixed data set.

Each optimizer step s:
  1. takes ``train.batch_size`` fresh prompts of the gym (seeded by (train.seed, s), so a resumed
     run sees the same prompts);
  2. samples two completions per prompt with the KV-cache sampler (``online.temperature``, key
     fold_in(seed, s)): online_dpo samples both from the current policy (TRL's OnlineDPOTrainer);
     xpo samples one from the policy and one from the frozen reference (TRL's XPOTrainer);
     ofs_dpo samples both from its fast LoRA module (pojax.train.ofs: two LoRA modules with
     different learning rates over the frozen SFT start, swapping roles);
  3. labels each pair with ``reward_fn(prompts, completions) -> [B]`` (the gym's gold reward for
     ``online.reward = "gold"``; pass any callable, e.g. a judge or reward model, to run_online):
     chosen = the higher reward; a tied pair carries no preference and gets weight 0 (its
     whole loss, XPO's exploration term included; TRL keeps ties with the first sample chosen);
  4. runs pojax.train.loop.run_stage with these pairs as its batch source (``OnlineBatches``):
     the same jitted step, optimizer, non-finite guard, progress bar, metrics and checkpoint
     layout as offline training, on the loss of the mode against the frozen SFT start.

RTO's PPO stage (``loss.name = "rto"`` with ``reference.guide_path``, pojax.train.rto) runs in
the same loop with its own batch source: one completion per prompt, token rewards of the DPO
guide, GAE and the clipped PPO loss instead of labelled pairs.

Every step asks the reward for train.batch_size comparisons: the ``labels`` metric counts them
(ties included), the budget an offline run spends as max_steps × batch_size fixed pairs.
"""
from __future__ import annotations

import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pojax import fs, losses, preflight
from pojax.config import ConfigError, loss_hparams, rto_ppo
from pojax.data import gym as gym_lib
from pojax.objectives import pair_logps
from pojax.sampling import generate
from pojax.train import metrics as metrics_lib
from pojax.train import ofs, rto
from pojax.train.data import gym_data
from pojax.train.evaluate import gold_eval
from pojax.train.guide import load_guide
from pojax.train.loop import run_stage
from pojax.train.optim import make_optimizer
from pojax.train.run import (
    _copy,
    build_model,
    check_batch,
    export,
    mesh_and_rules,
    sft_stage,
    write_plots,
)

RewardFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (prompts [B, P], completions [B, N]) -> [B]


def reward_from_config(config, gym: gym_lib.Gym) -> RewardFn:
    """The labelling reward of ``online.reward``: "gold" is the gym's gold reward."""
    if config.online.reward == "gold":
        return gym.gold_reward
    raise ConfigError("online.reward", f"{config.online.reward!r} is not a known reward")


def label_pairs(gym: gym_lib.Gym, prompts: np.ndarray, a: np.ndarray, b: np.ndarray, reward_fn: RewardFn) -> dict:
    """The paired batch of completions ``a`` and ``b`` [B, N] of ``prompts`` [B, P], ordered by
    ``reward_fn``: chosen = the higher reward. Returns the batch arrays (chosen_ids,
    rejected_ids, chosen_mask, rejected_mask [B, T]; weight [B] float32, 0 on ties;
    a_chosen [B] bool) and the rewards reward_a, reward_b [B]."""
    ra, rb = (np.asarray(reward_fn(prompts, x), np.float32) for x in (a, b))
    a_chosen = ra >= rb
    chosen, rejected = np.where(a_chosen[:, None], a, b), np.where(a_chosen[:, None], b, a)
    c_ids, mask = gym.sequence(prompts, chosen)
    r_ids, _ = gym.sequence(prompts, rejected)
    return {"chosen_ids": c_ids, "rejected_ids": r_ids, "chosen_mask": mask, "rejected_mask": mask,
            "weight": (ra != rb).astype(np.float32), "a_chosen": a_chosen, "reward_a": ra, "reward_b": rb}


def _prompt_rows(prompts: np.ndarray) -> np.ndarray:
    """[B, P + 2] BOS + prompt + SEP: what the sampler continues."""
    n = prompts.shape[0]
    return np.concatenate([np.full((n, 1), gym_lib.BOS), prompts, np.full((n, 1), gym_lib.SEP)], 1).astype(np.int32)


def step_prompts(gym: gym_lib.Gym, seed: int, step: int, n: int) -> np.ndarray:
    """The prompts of optimizer step ``step`` (a pure function of seed and step: resumable)."""
    return gym.prompts(np.random.default_rng([seed, 17, step]), n)


def online_objective(config):
    """``(model, reference, batch, loss_state) -> (loss, metrics, loss_state)`` of the online
    step: the registered loss on the pairs, averaged with the pairs' weights (ties count 0)."""
    name, hparams, chunk = config.loss.name, loss_hparams(config), config.likelihood.chunk_size
    fn = losses.get(name)

    def objective(m, ref, batch, ls):
        logps = pair_logps(m, ref, batch, chunk_size=chunk)
        extra = {"ref_sample_chosen": batch["ref_sample_chosen"]} if "ref_sample_chosen" in batch else {}
        out = fn(logps, **hparams, **extra)
        w = batch["weight"].astype(jnp.float32)
        total = jnp.maximum(jnp.sum(w), 1.0)
        mean = lambda v: jnp.sum(w * v.astype(jnp.float32)) / total if jnp.ndim(v) else v
        return mean(out.loss), {k: mean(v) for k, v in out.metrics.items()}, ls

    return objective


def sample_pairs(config, gym, policy, reference, prompts: np.ndarray, key, reward_fn: RewardFn) -> tuple[dict, dict]:
    """(host batch, metrics) of one online step: two completions per prompt (policy, policy for
    online_dpo; policy, reference for xpo) labelled by ``reward_fn``."""
    rows, b = _prompt_rows(prompts), prompts.shape[0]
    kw = dict(max_new_tokens=gym.response_len, temperature=float(config.online.temperature))
    k_policy, k_ref = jax.random.split(key)
    if config.loss.name == "xpo":
        a = np.asarray(generate(policy, jnp.asarray(rows), k_policy, **kw))
        y_ref = np.asarray(generate(reference, jnp.asarray(rows), k_ref, **kw))
        pairs = label_pairs(gym, prompts, a, y_ref, reward_fn)
    else:
        both = np.asarray(generate(policy, jnp.asarray(np.concatenate([rows, rows])), k_policy, **kw))
        pairs = label_pairs(gym, prompts, both[:b], both[b:], reward_fn)
    batch = {k: pairs[k] for k in ("chosen_ids", "rejected_ids", "chosen_mask", "rejected_mask", "weight")}
    # objective/scores: mean reward of the policy's samples (TRL's name); with xpo the second
    # sample is the reference's, reported as objective/ref_scores
    metrics = {"objective/scores_chosen": float(np.maximum(pairs["reward_a"], pairs["reward_b"]).mean()),
               "labels/ties": float(1.0 - pairs["weight"].mean())}
    if config.loss.name == "xpo":
        batch["ref_sample_chosen"] = ~pairs["a_chosen"]
        metrics |= {"objective/scores": float(pairs["reward_a"].mean()), "objective/ref_scores": float(pairs["reward_b"].mean())}
    else:
        metrics["objective/scores"] = float((pairs["reward_a"].mean() + pairs["reward_b"].mean()) / 2)
    return batch, metrics


class OnlineBatches:
    """The batch source (pojax.train.loop.BatchSource) of an online run: the pairs of step s are
    sampled from the current policy on ``step_prompts(s)`` and labelled by ``reward_fn``. They
    are a pure function of the step and the policy, so nothing but the parameters is saved."""

    iterator = None

    def __init__(self, config, gym: gym_lib.Gym, reference, reward_fn: RewardFn, batch_size: int,
                 sampler: Callable | None = None):
        self.config, self.gym, self.reference, self.reward_fn, self.batch_size = config, gym, reference, reward_fn, batch_size
        self.sampler = sampler or (lambda model: model)  # trained model -> the module that samples (OFS: the fast one)
        self.key = jax.random.key(config.train.seed + 19)

    def example(self) -> dict:
        n, t = self.batch_size, self.gym.seq_len
        batch = {k: np.zeros((n, t), np.int32) for k in ("chosen_ids", "rejected_ids")}
        batch |= {k: np.zeros((n, t), bool) for k in ("chosen_mask", "rejected_mask")}
        batch["weight"] = np.zeros((n,), np.float32)
        if self.config.loss.name == "xpo":
            batch["ref_sample_chosen"] = np.zeros((n,), bool)
        return batch

    def next(self, step: int, policy) -> tuple[dict, dict]:
        prompts = step_prompts(self.gym, self.config.train.seed, step, self.batch_size)
        batch, metrics = sample_pairs(self.config, self.gym, self.sampler(policy()), self.reference, prompts,
                                      jax.random.fold_in(self.key, step), self.reward_fn)
        return batch, metrics | {"labels": (step + 1) * self.batch_size}

    def seek(self, index: int) -> None:
        pass  # nothing to move: the batches of a step depend only on the step

    def close(self) -> None:
        pass


def run_online(config, workdir: str | None, reward_fn: RewardFn | None = None) -> dict:
    """SFT stage (train.sft_steps > 0) → online training for train.max_steps steps → the gym's
    gold-reward evaluation against the SFT start, export, plots and results.json.

    ``reward_fn(prompts [B, P], completions [B, N]) -> [B]`` labels the pairs (default: the
    reward of ``online.reward``). A run restarted on the same workdir resumes from its latest
    checkpoint (workdir/checkpoints/train, the layout of pojax.train.loop)."""
    workdir = preflight.absolute_workdir(workdir)
    fs.makedirs(workdir)
    if jax.process_count() > 1:
        raise ConfigError("distributed.initialize", "the online loop runs in one process for now")
    if config.train.grad_accum_steps != 1:
        raise ConfigError("train.grad_accum_steps", "online modes sample one batch per optimizer step; set it to 1")
    data = gym_data(config)
    gym = data.gym
    reward_fn = reward_fn or reward_from_config(config, gym)
    mesh, rules = mesh_and_rules(config)
    model = build_model(config, data.vocab_size, mesh, rules)
    bs, steps = check_batch(config), config.train.max_steps
    if data.sft is not None:
        model = sft_stage(model, data.sft, config, workdir, mesh, rules, steps=config.train.sft_steps,
                          learning_rate=config.train.sft_learning_rate)
    reference = _copy(model)  # frozen SFT start: the DPO reference, XPO's sampler and the evaluation baseline
    if config.loss.name == "ofs_dpo":  # fast and slow LoRA modules over the SFT start (pojax.train.ofs)
        trained, stage, sampler = ofs.stage(config, model, steps)
    elif rto_ppo(config):  # RTO's PPO stage on a DPO guide's token rewards (pojax.train.rto)
        guide = load_guide(config, data.vocab_size, mesh, rules)
        trained, stage, sampler = rto.stage(config, model, steps, reference=reference, guide=guide, gym=gym,
                                            reward_fn=reward_fn, batch_size=bs)
    else:
        trained, sampler = model, None
        stage = {"objective": online_objective(config), "tx": make_optimizer(config, steps)}
    source = stage.pop("source", None) or OnlineBatches(config, gym, reference, reward_fn, bs, sampler)
    trained, _, _ = run_stage("train", trained, steps=steps, source=source,
                              workdir=workdir, config=config, mesh=mesh, rules=rules, reference=reference, **stage)
    model = sampler(trained) if sampler else trained

    results = {"loss": config.loss.name, "steps": steps, "sft_steps": config.train.sft_steps, "labels": steps * bs}
    if rto_ppo(config):  # one sampled completion per prompt and rollout; the reward labels them only
        samples = -(-steps // config.online.ppo_epochs) * bs  # when it is trained on (online.rto_seq_coef > 0)
        results = dict(results, labels=samples if config.online.rto_seq_coef > 0 else 0, stage="ppo", samples=samples)
    if config.train.export_final:
        export(model, config, os.path.join(workdir, "final"), lora=config.loss.name == "ofs_dpo")
    results.update(gold_eval(gym, model, reference, config))
    metrics_lib.write_results(workdir, results)
    if config.logging.plots:
        write_plots(workdir)
    logging.info("results: %s", results)
    return results
