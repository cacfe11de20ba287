"""The ``diffpo`` task on the gym: trajectories → aligner training → refinement of base policies.

1. Trajectories (pojax.diffpo.trajectories): one response per prompt from each of
   ``diffpo.train_policies``, sorted by gold reward; y(T) is the best.
2. The aligner (a small random causal LM of ``model.*`` sizes) is trained with
   L = L_AR + ω · L_consistency (pojax.diffpo.loss) by the shared trainer
   (pojax.train.loop.run_stage); the state y(t) of each example is drawn uniformly from
   y(0) … y(T-1) at every step (``diffpo.t_sampling = "uniform"``).
3. Every policy of ``diffpo.eval_policies`` answers held-out prompts; the aligner refines the
   answers by Jacobi iteration (pojax.diffpo.jacobi) with k = each of ``diffpo.eval_steps`` and to
   convergence; results.json reports, per policy, the gold reward before and after, the Jacobi
   updates and forward passes per response, and Best-of-N by gold reward with N = k samples of
   the same policy (the inference-time baseline at an equal number of forward passes).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from pojax import fs
from pojax.config import ConfigError
from pojax.diffpo.jacobi import jacobi_refine
from pojax.diffpo.loss import DIVERGENCES, diffpo_model_loss
from pojax.diffpo.trajectories import (
    RULES,
    check_policy_name,
    gym_trajectories,
    make_gym,
    policy_responses,
    training_rows,
)

T_SAMPLING = ("uniform",)


def validate_diffpo(config) -> None:
    """ConfigError for the first bad ``diffpo.*`` key (or a missing section)."""
    if "diffpo" not in config:
        raise ConfigError("diffpo", "task 'diffpo' needs a diffpo section (start from configs/diffpo.py)")
    d = config.diffpo
    if config.data.format != "gym":
        raise ConfigError("data.format", f"{config.data.format!r}: the diffpo task runs on the gym only so far")
    if d.divergence not in DIVERGENCES:
        raise ConfigError("diffpo.divergence", f"{d.divergence!r} is not one of {', '.join(DIVERGENCES)}")
    if d.t_sampling not in T_SAMPLING:
        raise ConfigError("diffpo.t_sampling", f"{d.t_sampling!r} is not one of {', '.join(T_SAMPLING)}")
    if d.get("gym_rule", "successor") not in RULES:
        raise ConfigError("diffpo.gym_rule", f"{d.gym_rule!r} is not one of {', '.join(RULES)}")
    if d.trajectory_order not in ("reward", "shuffled"):
        raise ConfigError("diffpo.trajectory_order", f"{d.trajectory_order!r} is not one of reward, shuffled")
    if not d.omega >= 0:
        raise ConfigError("diffpo.omega", f"must be >= 0, got {d.omega!r}")
    if len(tuple(d.train_policies)) < 2:
        raise ConfigError("diffpo.train_policies", f"needs at least 2 base policies, got {tuple(d.train_policies)}")
    if any(int(k) < 0 for k in d.eval_steps):
        raise ConfigError("diffpo.eval_steps", f"step budgets must be >= 0, got {tuple(d.eval_steps)}")
    for key in ("train_policies", "eval_policies"):
        for name in d[key]:
            try:
                check_policy_name(name)
            except ValueError as e:
                raise ConfigError(f"diffpo.{key}", str(e).removeprefix("diffpo: ")) from None


def diffpo_objective(config):
    """(objective, initial loss state) for run_stage: the state y(t) of each example is drawn with
    a key folded from a step counter (the loss state), so a resumed run draws the same states."""
    d, chunk = config.diffpo, config.likelihood.chunk_size
    base = jax.random.PRNGKey(config.train.seed + 11)

    def objective(model, ref, batch, counter):
        del ref
        states_BKL = batch["state_ids"]
        b, k = states_BKL.shape[:2]
        t_B = jax.random.randint(jax.random.fold_in(base, counter), (b,), 0, k)
        state_BL = jnp.take_along_axis(states_BKL, t_B[:, None, None], axis=1)[:, 0]
        loss_B, metrics = diffpo_model_loss(model, batch["target_ids"], state_BL, batch["response_mask"],
                                            omega=d.omega, kind=d.divergence, chunk_size=chunk)
        return jnp.mean(loss_B), {k_: jnp.mean(v) for k_, v in metrics.items()}, counter + 1

    return objective, jnp.zeros((), jnp.int32)


def refine_gym(aligner, gym, prompts, responses, *, max_steps):
    """Jacobi-refines gym responses [n, N] of prompts [n, P] with the aligner.

    Returns:
      (refined responses [n, N] np.int, updates [n], forward passes [n]).
    """
    ids, mask = gym.sequence(prompts, responses)
    res = jacobi_refine(aligner, jnp.asarray(ids), jnp.asarray(mask), max_steps=max_steps)
    n0 = ids.shape[1] - gym.response_len
    return np.asarray(res.ids)[:, n0:], np.asarray(res.updates), np.asarray(res.forward_passes)


def evaluate_policies(aligner, gym, config) -> dict:
    """The results.json entries of every eval policy (see the module docstring)."""
    d = config.diffpo
    rng = np.random.default_rng(config.train.seed + 2)
    prompts = gym.prompts(rng, config.data.gym.num_eval)
    budgets = [(f"k{int(k)}", int(k)) for k in d.eval_steps] + [("converged", None)]
    out = {}
    for name in d.eval_policies:
        base = policy_responses(gym, name, rng, prompts)
        entry = {"used_for_training": name in tuple(d.train_policies),
                 "gold_reward_base": float(gym.gold_reward(prompts, base).mean()),
                 "gold_reward_aligned": {}, "steps": {}, "forward_passes": {}, "best_of_n": {}}
        for label, k in budgets:
            refined, updates, passes = refine_gym(aligner, gym, prompts, base, max_steps=k)
            entry["gold_reward_aligned"][label] = float(gym.gold_reward(prompts, refined).mean())
            entry["steps"][label] = float(updates.mean())
            entry["forward_passes"][label] = float(passes.mean())
        for k in d.eval_steps:  # Best-of-N by gold reward, N = k samples: k base forward passes
            if int(k) < 1:
                continue
            samples = np.stack([policy_responses(gym, name, rng, prompts) for _ in range(int(k))], 1)
            rewards = np.stack([gym.gold_reward(prompts, samples[:, j]) for j in range(int(k))], 1)
            entry["best_of_n"][f"n{int(k)}"] = float(rewards.max(1).mean())
        out[name] = entry
    return out


def run_diffpo(config, workdir: str | None) -> dict:
    """The ``diffpo`` task (gym): writes metrics_diffpo.jsonl and results.json to ``workdir``."""
    from pojax.data.gym import from_config
    from pojax.data.pipeline import ArraySource, make_dataset
    from pojax.train import metrics as metrics_lib
    from pojax.train.loop import run_stage
    from pojax.train.optim import make_optimizer
    from pojax.train.run import build_model, check_batch, mesh_and_rules

    validate_diffpo(config)
    workdir = workdir or os.path.join("workdirs", "run")
    fs.makedirs(workdir)
    d = config.diffpo
    gym = make_gym(from_config(config), d.get("gym_rule", "successor"))
    traj = gym_trajectories(gym, config.train.seed, config.data.gym.num_train, tuple(d.train_policies),
                            order=d.trajectory_order)
    rows = training_rows(gym, traj)
    mesh, rules = mesh_and_rules(config)
    aligner = build_model(config, gym.vocab_size, mesh, rules)
    objective, loss_state = diffpo_objective(config)
    steps = config.train.max_steps
    aligner, _, _ = run_stage(
        "diffpo", aligner, objective=objective, loss_state=loss_state,
        dataset=make_dataset(ArraySource(rows), batch_size=check_batch(config), seed=config.train.seed + 1),
        steps=steps, tx=make_optimizer(config, steps), workdir=workdir, config=config, mesh=mesh, rules=rules,
        metrics_file="metrics_diffpo.jsonl")
    logged = metrics_lib.MetricsWriter(workdir, "metrics_diffpo.jsonl").read()
    results = {"task": "diffpo", "steps": steps, "omega": float(d.omega), "divergence": d.divergence,
               "trajectory_order": d.trajectory_order,
               "gym_rule": d.get("gym_rule", "successor"), "train_policies": list(d.train_policies),
               "trajectory_gold_reward": [float(r) for r in traj["rewards"].mean(0)],
               "final_loss": logged[-1]["loss"] if logged else None,
               "base_policies": evaluate_policies(aligner, gym, config)}
    metrics_lib.write_results(workdir, results)
    return results
