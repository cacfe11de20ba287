"""The online modes of the ``train`` task (``loss.name`` in pojax.config.ONLINE_LOSSES):
preference pairs are sampled from the current policy during training and labelled by a reward
callable, instead of being read from a fixed data set.

Each optimizer step s:
  1. takes ``train.batch_size`` fresh prompts of the gym (seeded by (train.seed, s), so a resumed
     run sees the same prompts);
  2. samples two completions per prompt with the KV-cache sampler (``online.temperature``, key
     fold_in(seed, s)): online_dpo samples both from the current policy (TRL's OnlineDPOTrainer);
     xpo samples one from the policy and one from the frozen reference (TRL's XPOTrainer);
  3. labels each pair with ``reward_fn(prompts, completions) -> [B]`` (the gym's gold reward for
     ``online.reward = "gold"``; pass any callable, e.g. a judge or reward model, to run_online):
     chosen = the higher reward; a tied pair carries no preference and gets weight 0 (its
     whole loss, XPO's exploration term included; TRL keeps ties with the first sample chosen);
  4. runs the jitted train step of pojax.train.step (the same optimizer, non-finite guard and
     checkpoint layout as pojax.train.loop) on the loss of the mode against the frozen SFT start.

Every step asks the reward for train.batch_size comparisons: the ``labels`` metric counts them
(ties included), the budget an offline run spends as max_steps × batch_size fixed pairs.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from pojax import fs, losses, sharding
from pojax.config import ConfigError, loss_hparams
from pojax.data import gym as gym_lib
from pojax.objectives import pair_logps
from pojax.sampling import generate
from pojax.train import metrics as metrics_lib
from pojax.train.checkpoint import Checkpoints
from pojax.train.data import gym_data
from pojax.train.evaluate import gold_eval
from pojax.train.loop import _batch_sharding, tokens_in
from pojax.train.optim import make_optimizer
from pojax.train.run import _copy, build_model, check_batch, export, mesh_and_rules, sft_stage, write_plots
from pojax.train.step import NonFiniteError, init_state, make_train_step

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


def online_objective(config, ref_graphdef):
    """``(model, batch, loss_state, ref_state) -> (loss, metrics, loss_state)`` of the online
    step: the registered loss on the pairs, averaged with the pairs' weights (ties count 0)."""
    name, hparams, chunk = config.loss.name, loss_hparams(config), config.likelihood.chunk_size
    fn = losses.get(name)

    def objective(m, batch, ls, ref_state):
        # fresh arrays at this trace level (see pojax.train.loop.run_stage)
        ref = nnx.merge(ref_graphdef, jax.tree.map(lambda x: x, ref_state))
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


def run_online(config, workdir: str | None, reward_fn: RewardFn | None = None) -> dict:
    """SFT stage (train.sft_steps > 0) → online training for train.max_steps steps → the gym's
    gold-reward evaluation against the SFT start, export, plots and results.json.

    ``reward_fn(prompts [B, P], completions [B, N]) -> [B]`` labels the pairs (default: the
    reward of ``online.reward``). A run restarted on the same workdir resumes from its latest
    checkpoint (workdir/checkpoints/train, the layout of pojax.train.loop)."""
    workdir = workdir or os.path.join("workdirs", "run")
    fs.makedirs(workdir)
    if jax.process_count() > 1:
        raise ConfigError("distributed.initialize", "the online loop runs in one process for now")
    data = gym_data(config)
    gym = data.gym
    reward_fn = reward_fn or reward_from_config(config, gym)
    mesh, rules = mesh_and_rules(config)
    model = build_model(config, data.vocab_size, mesh, rules)
    bs, seed, steps = check_batch(config), config.train.seed, config.train.max_steps
    if data.sft is not None:
        model = sft_stage(model, data.sft, config, workdir, mesh, rules, steps=config.train.sft_steps,
                          learning_rate=config.train.sft_learning_rate)
    reference = _copy(model)  # frozen SFT start: the DPO reference, XPO's sampler and the evaluation baseline

    graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
    ref_graphdef, ref_state = nnx.split(reference)
    tx = make_optimizer(config, steps)
    step_fn = make_train_step(graphdef, online_objective(config, ref_graphdef), tx)
    state = init_state(params, tx, None)
    state_sh = sharding.param_shardings(state, mesh, rules)
    state = jax.device_put(state, state_sh)
    frozen_sh = sharding.param_shardings(frozen, mesh, rules)
    ref_sh = sharding.param_shardings(ref_state, mesh, rules)
    t = gym.seq_len
    shapes = {k: (bs, t) for k in ("chosen_ids", "rejected_ids", "chosen_mask", "rejected_mask")} | {"weight": (bs,)}
    if config.loss.name == "xpo":
        shapes["ref_sample_chosen"] = (bs,)
    batch_sh = _batch_sharding(mesh, rules, shapes)
    jitted = jax.jit(step_fn, in_shardings=(state_sh, batch_sh, frozen_sh, ref_sh), out_shardings=(state_sh, None),
                     donate_argnums=(0,))

    ckpt = Checkpoints(os.path.join(workdir, "checkpoints", "train"), keep=config.checkpoint.keep)
    writer = metrics_lib.MetricsWriter(workdir, "metrics.jsonl", tensorboard="train")
    start = 0
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)
        state = jax.device_put(state, state_sh)
        start = int(meta["step"])
        logging.info("online: resumed from step %d", start)
    writer.truncate_after(start)
    base_key = jax.random.key(seed + 19)
    for step in range(start, steps):
        t0 = time.perf_counter()
        policy = nnx.merge(graphdef, state.params, frozen)
        prompts = step_prompts(gym, seed, step, bs)
        host_batch, sample_metrics = sample_pairs(config, gym, policy, reference, prompts,
                                                  jax.random.fold_in(base_key, step), reward_fn)
        with sharding.use_mesh(mesh, rules):
            state, m = jitted(state, jax.device_put(host_batch, batch_sh), frozen, ref_state)
        m = jax.device_get(m)
        skipped = int(m.pop("skipped"))
        if skipped and config.train.nan_policy == "stop":
            ckpt.close()
            writer.close()
            raise NonFiniteError("train", step + 1, {k: float(v) for k, v in m.items()})
        dt = time.perf_counter() - t0
        metrics = {k: float(v) for k, v in m.items()} | sample_metrics | dict(
            labels=(step + 1) * bs, skipped=skipped, step_time_s=dt, tokens_per_s=tokens_in(host_batch) / dt)
        if (step + 1) % config.logging.every_steps == 0 or step + 1 == steps:
            writer.write(step + 1, metrics)
        if (step + 1) % config.checkpoint.every_steps == 0 or step + 1 == steps:
            ckpt.save(step + 1, state, {"step": step + 1})
            writer.flush()  # a remote metrics.jsonl is uploaded with every checkpoint
    ckpt.close()
    writer.close()
    nnx.update(model, state.params)

    results = {"loss": config.loss.name, "steps": steps, "sft_steps": config.train.sft_steps, "labels": steps * bs}
    if config.train.export_final:
        export(model, config, os.path.join(workdir, "final"))
    results.update(gold_eval(gym, model, reference, config))
    metrics_lib.write_results(workdir, results)
    if config.logging.plots:
        write_plots(workdir)
    logging.info("results: %s", results)
    return results
