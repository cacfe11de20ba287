"""Preference-data diagnostics on the gold-reward gym (pojax.eval.diagnostics).

  python -m experiments.diagnostics            # both studies, figures printed as JSON
  python -m experiments.diagnostics --study=ches

ches         CHES vs likelihood displacement (arXiv 2410.08847): a tiny causal LM, briefly
             SFT-ed on the gym, then each pair trained on alone for a few DPO steps (all pairs
             at once under vmap); the Spearman correlation of each pair's (length-normalized)
             CHES with the change of its chosen log-likelihood, and the mean change of the
             flagged top fraction vs the rest.
generalization  implicit DPO reward vs an explicit Bradley-Terry reward model trained on the same
             pairs (arXiv 2409.03650), accuracy on held-out pairs in distribution (responses of
             the base policy that made the training pairs) and out of it (a more skilled policy).
"""
from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pojax.data import gym as gym_lib
from pojax.eval import diagnostics as diag
from pojax.likelihood import autoregressive as ar
from pojax.models import CausalLM, ModelConfig
from pojax.models.reward import RewardModel


def tiny_model(vocab_size: int, seed: int, *, hidden_size: int = 32, num_layers: int = 1) -> CausalLM:
    return CausalLM(ModelConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                                num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=2),
                    rngs=nnx.Rngs(seed))


def paired_rows(gym: gym_lib.Gym, seed: int, n: int) -> dict:
    return gym_lib.training_rows(gym, "paired", seed, n)


def edited_pairs(gym: gym_lib.Gym, seed: int, n: int) -> dict:
    """Pairs of graded similarity: chosen = a base-policy response, rejected = the same response
    with its last m tokens redrawn (m uniform in 1..response_len, every redrawn token differs), so
    the responses share prefixes of every length; also "num_edited" [n]."""
    rng = np.random.default_rng(seed)
    p = gym.prompts(rng, n)
    chosen = gym.base_responses(rng, p)
    m = rng.integers(1, gym.response_len + 1, n)
    shift = gym_lib.N_SPECIAL + (chosen - gym_lib.N_SPECIAL + rng.integers(1, gym.num_symbols, chosen.shape)) % gym.num_symbols
    edited = np.arange(gym.response_len)[None] >= (gym.response_len - m)[:, None]
    rejected = np.where(edited, shift, chosen)
    c_ids, mask = gym.sequence(p, chosen)
    r_ids, _ = gym.sequence(p, rejected)
    return {"chosen_ids": c_ids, "rejected_ids": r_ids, "chosen_mask": mask, "rejected_mask": mask, "num_edited": m}


def _seq_logp(graphdef, params, ids_BT, mask_BT):
    model = nnx.merge(graphdef[0], params, graphdef[1])
    targets, tmask = ar.shift_targets(ids_BT, mask_BT)
    return ar.sequence_logps(ar.token_logps(model, ids_BT, targets), tmask)


def adam_steps(model, loss_fn, rows: dict, keys, *, steps: int, lr: float, batch_size: int = 32, seed: int = 0):
    """``steps`` Adam steps of ``loss_fn(graphdef, params, batch)`` on minibatches of ``rows[keys]``
    drawn with replacement (in place); returns the model."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    graphdef = (graphdef, rest)
    opt = optax.adam(lr)
    state = opt.init(params)

    @jax.jit
    def step(params, state, batch):
        g = jax.grad(lambda p: loss_fn(graphdef, p, batch))(params)
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    rng = np.random.default_rng(seed)
    n = len(rows[keys[0]])
    for _ in range(steps):
        idx = rng.integers(0, n, batch_size)
        params, state = step(params, state, {k: jnp.asarray(rows[k][idx]) for k in keys})
    nnx.update(model, params)
    return model


def sft(model, rows: dict, *, steps: int, lr: float, batch_size: int = 32, seed: int = 0):
    """A few Adam steps of token NLL on the chosen completions (in place)."""
    def loss(graphdef, p, b):
        return -jnp.mean(_seq_logp(graphdef, p, b["chosen_ids"], b["chosen_mask"]))

    return adam_steps(model, loss, rows, ("chosen_ids", "chosen_mask"), steps=steps, lr=lr, batch_size=batch_size,
                      seed=seed)


def per_pair_dpo_change(model, rows: dict, *, beta: float = 0.1, lr: float = 0.05, steps: int = 5):
    """(Δ log π(y+) [N], Δ log π(y−) [N]): each pair trained on alone (reference = the starting
    model) for ``steps`` plain gradient steps of sigmoid DPO at learning rate ``lr``, all pairs at
    once under vmap; the changes are measured on that pair after its own training."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    graphdef = (graphdef, rest)

    def one(ids_c, ids_r, mask_c, mask_r):
        ids, mask = jnp.stack([ids_c, ids_r]), jnp.stack([mask_c, mask_r])
        ref = _seq_logp(graphdef, params, ids, mask)

        def loss(p):
            lp = _seq_logp(graphdef, p, ids, mask)
            return -jax.nn.log_sigmoid(beta * ((lp[0] - ref[0]) - (lp[1] - ref[1])))

        def body(p, _):
            g = jax.grad(loss)(p)
            return jax.tree.map(lambda a, b: a - lr * b, p, g), None

        p, _ = jax.lax.scan(body, params, None, length=steps)
        return _seq_logp(graphdef, p, ids, mask) - ref

    delta = jax.jit(jax.vmap(one))(*(jnp.asarray(rows[k]) for k in diag.PAIR_KEYS))
    delta = np.asarray(delta)
    return delta[:, 0], delta[:, 1]


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def ches_study(*, seed: int = 0, n: int = 128, sft_steps: int = 30, dpo_steps: int = 5, lr: float = 0.05,
               fraction: float = 0.25) -> dict:
    """Per data set ("gym": the gym's preference pairs; "edited": ``edited_pairs``): Spearman of
    CHES and of length-normalized CHES with Δ log π(y+), the mean Δ of the flagged top
    ``fraction`` vs the rest, the share of pairs whose chosen log-likelihood fell, and (edited)
    the Spearman of −(tokens edited) with Δ, a trivial similarity baseline."""
    gym = gym_lib.Gym()
    model = tiny_model(gym.vocab_size, seed)
    if sft_steps:
        sft(model, paired_rows(gym, seed + 1, 512), steps=sft_steps, lr=3e-3, seed=seed)
    out = {"num_pairs": n, "sft_steps": sft_steps, "dpo_steps": dpo_steps, "lr": lr, "fraction": fraction}
    for data, rows in (("gym", paired_rows(gym, seed + 2, n)), ("edited", edited_pairs(gym, seed + 2, n))):
        scores = diag.ches_dataset(model, rows, batch_size=64)
        d_chosen, _ = per_pair_dpo_change(model, rows, lr=lr, steps=dpo_steps)
        out[f"{data}/mean_delta_logp_chosen"] = float(d_chosen.mean())
        out[f"{data}/frac_chosen_logp_fell"] = float(np.mean(d_chosen < 0))
        for name, value in scores.items():
            flags = diag.flag_displacement(value, fraction=fraction)
            out[f"{data}/spearman({name}, delta_logp_chosen)"] = spearman(value, d_chosen)
            out[f"{data}/delta_logp_chosen_flagged_{name}"] = float(d_chosen[flags].mean())
            out[f"{data}/delta_logp_chosen_rest_{name}"] = float(d_chosen[~flags].mean())
        if "num_edited" in rows:
            out[f"{data}/spearman(-num_edited, delta_logp_chosen)"] = spearman(-rows["num_edited"], d_chosen)
    return out


# ------------------------------------------------------------------ generalization

def train_dpo(policy, rows: dict, *, beta: float, steps: int, lr: float, batch_size: int = 32, seed: int = 0):
    """``steps`` Adam steps of sigmoid DPO against a frozen copy of the starting policy (in place)."""
    ref_params = jax.tree.map(jnp.copy, nnx.state(policy, nnx.Param))

    def loss(graphdef, p, b):
        ids = jnp.concatenate([b["chosen_ids"], b["rejected_ids"]])
        mask = jnp.concatenate([b["chosen_mask"], b["rejected_mask"]])
        lp = _seq_logp(graphdef, p, ids, mask) - jax.lax.stop_gradient(_seq_logp(graphdef, ref_params, ids, mask))
        m = ids.shape[0] // 2
        return -jnp.mean(jax.nn.log_sigmoid(beta * (lp[:m] - lp[m:])))

    return adam_steps(policy, loss, rows, diag.PAIR_KEYS, steps=steps, lr=lr, batch_size=batch_size, seed=seed)


def train_reward_model(rm: RewardModel, rows: dict, *, steps: int, lr: float, batch_size: int = 32, seed: int = 0):
    """``steps`` Adam steps of the Bradley-Terry loss −log σ(r(y+) − r(y−)) (in place)."""
    t = rows["chosen_ids"].shape[1]

    def loss(graphdef, p, b):
        ids_c, ids_r = b["chosen_ids"], b["rejected_ids"]
        model = nnx.merge(graphdef[0], p, graphdef[1])
        s = model(jnp.concatenate([ids_c, ids_r]), lengths_B=jnp.full((ids_c.shape[0] * 2,), t, jnp.int32))[:, 0]
        m = ids_c.shape[0]
        return -jnp.mean(jax.nn.log_sigmoid(s[:m] - s[m:]))

    return adam_steps(rm, loss, rows, ("chosen_ids", "rejected_ids"), steps=steps, lr=lr, batch_size=batch_size,
                      seed=seed)


def generalization_study(*, seed: int = 0, n_train: int = 2048, n_eval: int = 256, steps: int = 300,
                         rm_steps: int = 2000, beta: float = 0.1, ood_skill: float = 0.8) -> dict:
    gym = gym_lib.Gym()
    train = paired_rows(gym, seed + 1, n_train)
    ind = paired_rows(gym, seed + 2, n_eval)
    ood = paired_rows(gym_lib.Gym(base_skill=ood_skill), seed + 3, n_eval)
    held = {k: np.concatenate([ind[k], ood[k]]) for k in ind}
    domain = np.array(["in"] * n_eval + ["out"] * n_eval)

    reference = tiny_model(gym.vocab_size, seed)
    sft(reference, paired_rows(gym, seed + 4, 1024), steps=100, lr=3e-3, seed=seed)
    policy = tiny_model(gym.vocab_size, seed)
    nnx.update(policy, nnx.state(reference, nnx.Param))
    train_dpo(policy, train, beta=beta, steps=steps, lr=1e-3, seed=seed)
    # the reward model needs more capacity and steps than the policy to learn the gym's rule
    rm = RewardModel(ModelConfig(vocab_size=gym.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=4), rngs=nnx.Rngs(seed + 1))
    train_reward_model(rm, train, steps=rm_steps, lr=3e-3, batch_size=64, seed=seed)

    implicit = diag.implicit_rewards(policy, reference, held, beta=beta, batch_size=64)
    explicit = diag.reward_model_rewards(rm, held, batch_size=64)
    out = diag.generalization_report(implicit, explicit, domain=domain)
    out.update(n_train=n_train, dpo_steps=steps, rm_steps=rm_steps, beta=beta, ood_skill=ood_skill)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=("ches", "generalization", "all"), default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sft_steps", type=int, default=30, help="ches study: SFT steps before measuring")
    args = parser.parse_args(argv)
    results = {}
    if args.study in ("ches", "all"):
        results["ches"] = ches_study(seed=args.seed, sft_steps=args.sft_steps)
    if args.study in ("generalization", "all"):
        results["generalization"] = generalization_study(seed=args.seed)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
