"""The ``diffpo`` task: trajectories → aligner training → refinement of base policies' answers.

On the gym (``diffpo.trajectory_source = "gym"``):

1. Trajectories (pojax.diffpo.trajectories): one response per prompt from each of
   ``diffpo.train_policies``, sorted by gold reward; y(T) is the best.
2. The aligner (a small random causal LM of ``model.*`` sizes) is trained with
   L = L_AR + ω · L_consistency (pojax.diffpo.loss) by the shared trainer
   (pojax.train.loop.run_stage); the state y(t) of each example is drawn uniformly from
   y(0) … y(T-1) at every step (``diffpo.t_sampling = "uniform"``).
3. Every policy of ``diffpo.eval_policies`` answers held-out prompts; the aligner refines the
   answers by Jacobi iteration (pojax.diffpo.jacobi) with k = each of ``diffpo.eval_steps`` and to
   convergence, each answer's first r tokens kept as they are, r uniform on
   0 … ``diffpo.reserve_tokens`` per held-out prompt (the authors' reserved prefix,
   pojax.diffpo.refine.draw_reserved_prefix, seeded by train.seed: the same r for a prompt at every
   step budget and for every policy); results.json reports, per policy, the gold reward before
   and after, the Jacobi updates and forward passes per response, and Best-of-N by gold reward with N = k samples of
   the same policy (the inference-time baseline at an equal number of forward passes).

From files (``diffpo.trajectory_source`` = "ranked" | "ultrafeedback", ``data.path``; see
pojax.diffpo.text_data): the aligner is the Hugging Face checkpoint ``model.path`` with its
tokenizer; trajectories are each prompt's scored responses in ascending order; the base policies
are the systems that wrote the held-out rows' responses (``diffpo.eval_path``, or
``eval.num_examples`` rows held out of data.path); each one's answers are refined (with the same
reserved prefix rule, r drawn per held-out row) and, with
``eval.reward_model_path`` and / or ``eval.judge_path``, compared with the (block-truncated) base
answers through pojax.eval: rm_win_rate / win_rate of aligned vs base per base policy and step
budget, in the gym's layout ({metric: {k1: …, converged: …}}).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from pojax import fs, preflight
from pojax.config import ConfigError
from pojax.diffpo.jacobi import jacobi_refine
from pojax.diffpo.loss import CONSISTENCY_MASKS, DIVERGENCES, diffpo_model_loss
from pojax.diffpo.refine import OVERFLOW, draw_reserved_prefix
from pojax.diffpo.text_data import SOURCES
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
    if d.trajectory_source not in SOURCES:
        raise ConfigError("diffpo.trajectory_source", f"{d.trajectory_source!r} is not one of {', '.join(SOURCES)}")
    if d.trajectory_source == "gym" and config.data.format != "gym":
        raise ConfigError("data.format", f"{config.data.format!r}: diffpo.trajectory_source='gym' needs data.format="
                          "'gym' (or set diffpo.trajectory_source to ranked | ultrafeedback for files)")
    if d.trajectory_source != "gym" and not config.data.path:
        raise ConfigError("data.path", f"diffpo.trajectory_source={d.trajectory_source!r} reads trajectories from "
                          "data.path: set it to a JSONL / JSON / parquet file or directory")
    if not d.temperature >= 0:
        raise ConfigError("diffpo.temperature", f"must be >= 0 (0 = greedy Jacobi updates), got {d.temperature!r}")
    if d.on_overflow not in OVERFLOW:
        raise ConfigError("diffpo.on_overflow", f"{d.on_overflow!r} is not one of {', '.join(OVERFLOW)}")
    if int(d.max_states) < 1:
        raise ConfigError("diffpo.max_states", f"must be >= 1, got {d.max_states!r}")
    if d.divergence not in DIVERGENCES:
        raise ConfigError("diffpo.divergence", f"{d.divergence!r} is not one of {', '.join(DIVERGENCES)}")
    if d.consistency_mask not in CONSISTENCY_MASKS:
        raise ConfigError("diffpo.consistency_mask",
                          f"{d.consistency_mask!r} is not one of {', '.join(CONSISTENCY_MASKS)}")
    if not 0.0 <= d.label_smoothing < 1.0:
        raise ConfigError("diffpo.label_smoothing", f"must be in [0, 1), got {d.label_smoothing!r}")
    if int(d.reserve_tokens) < 0:
        raise ConfigError("diffpo.reserve_tokens", f"must be >= 0 (0 = no reserved prefix), got {d.reserve_tokens!r}")
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


def draw_states(key, states_BKL, num_states_B=None):
    """One state row per example, t ~ U{0 … K − 1}, or U{0 … num_states − 1} for ragged
    trajectories (slots at and after num_states are filler and never drawn).

    Args:
      key: PRNG key of this step.
      states_BKL: [B, K, L] int32 state rows y(0) … y(K − 1).
      num_states_B: [B] int32 real states per example (1 … K), or None (all K).

    Returns:
      [B, L] int32.
    """
    b, k = states_BKL.shape[:2]
    if num_states_B is None:
        t_B = jax.random.randint(key, (b,), 0, k)
    else:
        u_B = jax.random.uniform(key, (b,))
        t_B = jnp.minimum((u_B * num_states_B).astype(jnp.int32), num_states_B - 1)
    return jnp.take_along_axis(states_BKL, t_B[:, None, None], axis=1)[:, 0]


def diffpo_objective(config):
    """(objective, initial loss state) for run_stage: the state y(t) of each example is drawn with
    a key folded from a step counter (the loss state), so a resumed run draws the same states."""
    d, chunk = config.diffpo, config.likelihood.chunk_size
    base = jax.random.PRNGKey(config.train.seed + 11)

    def objective(model, ref, batch, counter):
        del ref
        state_BL = draw_states(jax.random.fold_in(base, counter), batch["state_ids"], batch.get("num_states"))
        loss_B, metrics = diffpo_model_loss(model, batch["target_ids"], state_BL, batch["response_mask"],
                                            omega=d.omega, kind=d.divergence, label_smoothing=float(d.label_smoothing),
                                            consistency_mask=d.consistency_mask, chunk_size=chunk)
        return jnp.mean(loss_B), {k_: jnp.mean(v) for k_, v in metrics.items()}, counter + 1

    return objective, jnp.zeros((), jnp.int32)


def refine_gym(aligner, gym, prompts, responses, *, max_steps, temperature=0.0, key=None, prefix_cache=False,
               reserved=None):
    """Jacobi-refines gym responses [n, N] of prompts [n, P] with the aligner.

    Args:
      reserved: [n] int reserved-prefix lengths (the first r tokens of a response stay as they
        are and the rest is refined after them; r ≥ N keeps the whole response), or None (none).

    Returns:
      (refined responses [n, N] np.int, updates [n], forward passes [n]).
    """
    ids, mask = gym.sequence(prompts, responses)
    n0 = ids.shape[1] - gym.response_len
    if reserved is not None:  # the reserved tokens join the fixed tokens: the slots start after them
        mask = mask & (np.arange(ids.shape[1])[None, :] >= n0 + np.asarray(reserved)[:, None])
    res = jacobi_refine(aligner, jnp.asarray(ids), jnp.asarray(mask), max_steps=max_steps, temperature=temperature,
                        key=key, prefix_cache=prefix_cache)
    return np.asarray(res.ids)[:, n0:], np.asarray(res.updates), np.asarray(res.forward_passes)


def evaluate_policies(aligner, gym, config) -> dict:
    """The results.json entries of every eval policy (see the module docstring)."""
    d = config.diffpo
    rng = np.random.default_rng(config.train.seed + 2)
    prompts = gym.prompts(rng, config.data.gym.num_eval)
    reserved = draw_reserved_prefix(len(prompts), int(d.reserve_tokens), config.train.seed + 4)
    budgets = [(f"k{int(k)}", int(k)) for k in d.eval_steps] + [("converged", None)]
    out = {}
    for name in d.eval_policies:
        base = policy_responses(gym, name, rng, prompts)
        entry = {"used_for_training": name in tuple(d.train_policies),
                 "gold_reward_base": float(gym.gold_reward(prompts, base).mean()),
                 "gold_reward_aligned": {}, "steps": {}, "forward_passes": {}, "best_of_n": {}}
        for label, k in budgets:
            refined, updates, passes = refine_gym(aligner, gym, prompts, base, max_steps=k, temperature=d.temperature,
                                                  key=jax.random.PRNGKey(config.train.seed + 3),
                                                  prefix_cache=d.prefix_cache, reserved=reserved)
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


def _train_aligner(aligner, rows: dict, config, workdir: str, mesh, rules):
    """(the aligner trained on trajectory ``rows`` for train.max_steps steps, the logged metrics):
    stage "diffpo" of pojax.train.loop, metrics in metrics_diffpo.jsonl."""
    from pojax.data.pipeline import ArraySource, make_dataset
    from pojax.train import metrics as metrics_lib
    from pojax.train.loop import run_stage
    from pojax.train.optim import make_optimizer
    from pojax.train.run import check_batch

    objective, loss_state = diffpo_objective(config)
    steps = config.train.max_steps
    aligner, _, _ = run_stage(
        "diffpo", aligner, objective=objective, loss_state=loss_state,
        dataset=make_dataset(ArraySource(rows), batch_size=check_batch(config), seed=config.train.seed + 1),
        steps=steps, tx=make_optimizer(config, steps), workdir=workdir, config=config, mesh=mesh, rules=rules,
        metrics_file="metrics_diffpo.jsonl")
    return aligner, metrics_lib.MetricsWriter(workdir, "metrics_diffpo.jsonl").read()


def run_diffpo(config, workdir: str | None) -> dict:
    """The ``diffpo`` task (gym): writes metrics_diffpo.jsonl and results.json to ``workdir``."""
    from pojax.data.gym import from_config
    from pojax.train import metrics as metrics_lib
    from pojax.train.run import build_model, mesh_and_rules

    validate_diffpo(config)
    workdir = preflight.absolute_workdir(workdir)
    fs.makedirs(workdir)
    d = config.diffpo
    if d.trajectory_source != "gym":
        return run_diffpo_files(config, workdir)
    gym = make_gym(from_config(config), d.get("gym_rule", "successor"))
    traj = gym_trajectories(gym, config.train.seed, config.data.gym.num_train, tuple(d.train_policies),
                            order=d.trajectory_order)
    rows = training_rows(gym, traj)
    mesh, rules = mesh_and_rules(config)
    aligner = build_model(config, gym.vocab_size, mesh, rules)
    aligner, logged = _train_aligner(aligner, rows, config, workdir, mesh, rules)
    steps = config.train.max_steps
    results = {"task": "diffpo", "steps": steps, "omega": float(d.omega), "divergence": d.divergence,
               "label_smoothing": float(d.label_smoothing), "consistency_mask": d.consistency_mask,
               "reserve_tokens": int(d.reserve_tokens), "trajectory_source": "gym", "temperature": float(d.temperature),
               "trajectory_order": d.trajectory_order,
               "gym_rule": d.get("gym_rule", "successor"), "train_policies": list(d.train_policies),
               "trajectory_gold_reward": [float(r) for r in traj["rewards"].mean(0)],
               "final_loss": logged[-1]["loss"] if logged else None,
               "base_policies": evaluate_policies(aligner, gym, config)}
    metrics_lib.write_results(workdir, results)
    return results


def _split_rows(config, rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows): diffpo.eval_path when set, else the last eval.num_examples
    rows of data.path after a shuffle seeded by train.seed."""
    from pojax.diffpo.text_data import read_scored

    d = config.diffpo
    if d.eval_path:
        return rows, read_scored(d.eval_path, d.trajectory_source, score_field=d.score_field,
                                 skip_bad_rows=config.data.skip_bad_rows)
    n_eval = int(config.eval.num_examples)
    if not 0 < n_eval < len(rows):
        raise ConfigError("eval.num_examples", f"{n_eval} held-out rows of the {len(rows)} in data.path leave no "
                          "training rows (or none to evaluate); lower it or set diffpo.eval_path")
    perm = np.random.default_rng(config.train.seed).permutation(len(rows))
    return [rows[i] for i in perm[:-n_eval]], [rows[i] for i in perm[-n_eval:]]


def _instruction(prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt if m["role"] == "user")


def _judges(config, dtype):
    """(reward model, its tokenizer, judge, its tokenizer), each None when not configured."""
    from transformers import AutoTokenizer

    from pojax.models import CheckpointError, from_pretrained, reward

    e, out = config.eval, [None] * 4
    for i, (key, path) in enumerate((("eval.reward_model_path", e.reward_model_path), ("eval.judge_path", e.judge_path))):
        if not path:
            continue
        try:
            out[2 * i] = (reward.from_pretrained if i == 0 else from_pretrained)(path, dtype=dtype)
            out[2 * i + 1] = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        except (CheckpointError, OSError, ValueError) as err:
            raise ConfigError(key, f"{path}: {err}") from None
    return tuple(out)


def evaluate_answers(aligner, tokenizer, rows: list[dict], config) -> dict:
    """results.json entries per base policy of held-out text rows (module docstring): Jacobi
    updates and forward passes per response at each step budget, and with a reward model / judge
    the win rate of the refined answers against the base answers (cut to the block budget)."""
    from pojax.data import tokenize
    from pojax.diffpo.refine import refine
    from pojax.diffpo.text_data import base_answers
    from pojax.eval.judge import DEFAULT_TEMPLATE, judge_preferences
    from pojax.eval.rewards import reward_win_rates
    from pojax.eval.win_rates import win_rates

    d, data = config.diffpo, config.data
    chat = tokenize.use_chat_template(tokenizer, data.chat_template)
    rm, rm_tok, judge, judge_tok = _judges(config, aligner.config.dtype)
    budgets = [(f"k{int(k)}", int(k)) for k in d.eval_steps] + ([("converged", None)] if d.eval_converged else [])
    n, batch = int(data.max_completion_length), config.train.batch_size // config.train.grad_accum_steps
    # one reserved-prefix length per held-out row: the same for every base policy and step budget
    reserved_rows = draw_reserved_prefix(len(rows), int(d.reserve_tokens), config.train.seed + 4)
    out = {}
    for name, (idx, answers) in sorted(base_answers(rows).items()):
        prompts = [rows[i]["prompt"] for i in idx]
        p_ids = [tokenize.prompt_ids(tokenizer, rows[i], chat)[-data.max_prompt_length:] for i in idx]
        full_ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
        reserved = reserved_rows[idx]
        b_ids, guesses = full_ids, full_ids
        if d.on_overflow == "truncate":  # the base answer cut to the block; the guess is the block after the reserve
            b_ids = [b[:n] for b in full_ids]
            guesses = [b[:n + int(r)] for b, r in zip(full_ids, reserved)]
        base_text = [tokenizer.decode(b, skip_special_tokens=True) for b in b_ids]
        entry = {"num_prompts": len(idx), "steps": {}, "forward_passes": {}}
        if rm is not None:
            entry["rm_reward_base"] = None
        for label, k in budgets:
            toks, stats = refine(aligner, None, p_ids, guesses, max_steps=k, block_size=n,
                                 eos_id=tokenizer.eos_token_id, pad_id=tokenize.pad_id(tokenizer),
                                 on_overflow=d.on_overflow, batch_size=batch, return_stats=True,
                                 temperature=d.temperature, prefix_cache=d.prefix_cache,
                                 key=jax.random.PRNGKey(config.train.seed + 3), reserved_prefix=reserved)
            text = [tokenizer.decode(t, skip_special_tokens=True) for t in toks]
            entry["steps"][label] = float(np.mean(stats["updates"]))
            entry["forward_passes"][label] = float(np.mean(stats["forward_passes"]))
            len_a, len_b = [max(1, len(t)) for t in toks], [max(1, len(b)) for b in b_ids]
            figures = {}
            if rm is not None:
                rates = reward_win_rates(rm, rm_tok, prompts, text, base_text, len_a, len_b, batch_size=batch,
                                         seed=config.train.seed)
                entry["rm_reward_base"] = rates.pop("rm_reward_ref")
                figures.update(rates, rm_reward_aligned=rates.pop("rm_reward_policy"))
            if judge is not None:
                pref = judge_preferences(judge, judge_tok, [_instruction(p) for p in prompts], text, base_text,
                                         template=config.eval.judge_template or DEFAULT_TEMPLATE, batch_size=batch)
                figures.update(win_rates(pref, len_a, len_b, seed=config.train.seed))
            for key, value in figures.items():
                entry.setdefault(key, {})[label] = value
        out[name] = entry
    return out


def run_diffpo_files(config, workdir: str) -> dict:
    """The ``diffpo`` task on trajectories from files (module docstring)."""
    from pojax.data import tokenize
    from pojax.diffpo.text_data import read_scored, training_rows
    from pojax.train import metrics as metrics_lib
    from pojax.train.run import build_model, load_tokenizer, mesh_and_rules

    d, data = config.diffpo, config.data
    tokenizer = load_tokenizer(config)
    rows = read_scored(data.path, d.trajectory_source, score_field=d.score_field, skip_bad_rows=data.skip_bad_rows)
    train_rows, eval_rows = _split_rows(config, rows)
    arrays = training_rows(train_rows, tokenizer, max_prompt_length=data.max_prompt_length,
                           max_completion_length=data.max_completion_length, max_states=int(d.max_states),
                           chat=tokenize.use_chat_template(tokenizer, data.chat_template))
    mesh, rules = mesh_and_rules(config)
    aligner = build_model(config, len(tokenizer), mesh, rules)
    if len(tokenizer) > aligner.config.vocab_size:
        raise ConfigError("data.tokenizer", f"tokenizer mismatch: {len(tokenizer)} tokens but the aligner's vocabulary "
                          f"has {aligner.config.vocab_size}; use the aligner checkpoint's own tokenizer")
    aligner, logged = _train_aligner(aligner, arrays, config, workdir, mesh, rules)
    steps = config.train.max_steps
    results = {"task": "diffpo", "steps": steps, "omega": float(d.omega), "divergence": d.divergence,
               "label_smoothing": float(d.label_smoothing), "consistency_mask": d.consistency_mask,
               "reserve_tokens": int(d.reserve_tokens), "trajectory_source": d.trajectory_source,
               "temperature": float(d.temperature),
               "num_trajectories": len(train_rows), "mean_states": float(arrays["num_states"].mean()),
               "final_loss": logged[-1]["loss"] if logged else None,
               "base_policies": evaluate_answers(aligner, tokenizer, eval_rows, config)}
    metrics_lib.write_results(workdir, results)
    return results
