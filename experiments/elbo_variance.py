r"""Monte Carlo variance (and bias) of diffusion ELBOs, implicit rewards, losses and gradients.

    python -m experiments.elbo_variance --workdir=/tmp/elbo_variance
    python -m experiments.elbo_variance --workdir=/tmp/ev --n_mc=1,4,16 --estimators=length,timestep --loss=sigmoid
    python -m experiments.elbo_variance --workdir=/tmp/ev --checkpoint=<HF dir> [--reference=<HF dir>]

For ONE fixed batch and fixed policy / reference weights, each (estimator, K = n_mc) runs R =
``--repeats`` times with R different global draw keys (the per-example draws of
pojax.objectives.diffusion.example_draws, as training uses them), and records per repeat

  B_θ       the policy ELBO of every scored row (paired: chosen and rejected; unpaired: the completions)
  r̂         B_θ − B_ref, with the reference's draws SHARED (same key: VRPO's antithetic sampling, what
            training does) or INDEPENDENT (``ref_key`` = a second key)
  loss      the batch-mean loss (``--loss``, any registered sequence-level pairwise / unpaired loss)
  ∇         the gradient of that loss w.r.t. the policy parameters (flattened)

and reports over the R repeats: Var(B_θ) and Var(r̂) (per row, over repeats, ddof = 1, then averaged over
the batch's rows), the loss mean and std, the gradient norm mean / std, and the mean cosine of each
repeat's gradient to the mean gradient of the OTHER R − 1 repeats (leave-one-out, so that the repeat itself
does not inflate the cosine at small R). The loss mean across K shows the loss's Monte Carlo bias (the loss
is nonlinear in B, so E[loss] moves with K although E[B] does not).

Headline figures (printed, and in elbo_variance.json): per estimator Var(B_θ) at each K and the slope of
log Var against log K (−1 for iid draws; the stratified estimators may fall faster); the ratio
Var(r̂ shared) / Var(r̂ independent) at K = 8 (≪ 1 when policy ≈ reference); loss std by K; gradient norm and
cosine.

Outputs in --workdir: elbo_variance.md (setup, headline, table), elbo_variance.csv (the table, one row
per estimator × K × draws), elbo_variance.json (flags, setup, headline, rows), elbo_values.npz (the raw
[R, N] B_θ, B_ref shared, B_ref independent per estimator and K, and the [R] losses), plots/elbo_var_vs_k.png
(log-log, with the 1/K line), plots/reward_var_vs_k.png (shared vs independent), plots/loss_grad_vs_k.png.

Models: by default the tiny random LLaDA of configs/quickstart_diffusion.py, trained ``--sft_steps`` steps
of LLaDA's SFT on the gym (so that its predictions, hence the ELBO's Monte Carlo noise, are not flat);
``--checkpoint`` loads an HF LLaDA directory instead. The reference is ``--reference`` (an HF directory) or
the policy with every parameter multiplied by (1 + ``--ref_noise`` · N(0, 1)) (0: reference = policy,
where r̂ with shared draws is exactly 0). The batch is always the gym's (``--batch_size`` rows of the set
the quickstart_diffusion recipe trains on for ``--loss``, with KTO's mismatched kl rows), whatever the model.

Cost: one jit per K, shared by the estimators (the estimator is a traced index under ``lax.switch``): per
repeat the draws, policy and reference forwards of every row, the reference's again with independent draws,
the policy's VJP over the scored rows and two backward passes; repeats under ``lax.map``. On the tiny default
model compilation dominates (about 10 s of CPU per K). The gradients of all repeats are held in memory
([R, P] float32): ``--grads=false`` for large checkpoints.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import time

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from pojax import losses
from pojax.likelihood import diffusion as dl
from pojax.objectives import diffusion as diff_obj
from pojax.objectives import initial_loss_state

DEFAULT_N_MC = (1, 2, 4, 8, 16)
DEFAULT_ESTIMATORS = ("length_stratified", "length", "timestep_stratified", "timestep")  # all of dl.ESTIMATORS
RATIO_K = 8  # the K of the headline shared / independent ratio (the largest K below it when absent)
DRAWS = ("shared", "independent")
COLUMNS = ("estimator", "n_mc", "draws", "elbo_mean", "elbo_var", "ref_elbo_var", "reward_mean", "reward_var",
           "loss_mean", "loss_std", "grad_norm_mean", "grad_norm_std", "grad_cos", "seconds")


# ------------------------------------------------------------------------------------------- options


def check_options(*, n_mc, estimators, loss, repeats, batch_size, ref_noise, sft_steps, checkpoint, reference):
    """Validates the options before anything is built; ValueError names the flag."""
    if not n_mc:
        raise ValueError("--n_mc: give at least one K")
    for k in n_mc:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"--n_mc: every K must be an int >= 1, got {k!r}")
    if len(set(n_mc)) != len(n_mc):
        raise ValueError(f"--n_mc: repeated K in {list(n_mc)}")
    if not estimators:
        raise ValueError("--estimators: give at least one estimator")
    for e in estimators:
        if e not in dl.ESTIMATORS:
            raise ValueError(f"--estimators: unknown estimator {e!r}; known: {', '.join(dl.ESTIMATORS)}")
    if loss not in losses.names():
        raise ValueError(f"--loss: unknown loss {loss!r}; known: {', '.join(losses.names())}")
    if losses.needs_tokens(loss) or losses.input_kind(loss) == "ranked":
        raise ValueError(f"--loss: {loss!r} needs per-token log-probs or ranked data; a diffusion ELBO "
                         "gives sequence-level values of paired or unpaired batches")
    if repeats < 2:
        raise ValueError(f"--repeats: a variance needs at least 2 repeats, got {repeats}")
    if batch_size < 1:
        raise ValueError(f"--batch_size: must be >= 1, got {batch_size}")
    if ref_noise < 0 or not math.isfinite(ref_noise):
        raise ValueError(f"--ref_noise: must be a finite number >= 0, got {ref_noise}")
    if sft_steps < 0:
        raise ValueError(f"--sft_steps: must be >= 0, got {sft_steps}")
    if reference and not checkpoint:
        raise ValueError("--reference: needs --checkpoint (the default policy is the tiny random model)")


# ------------------------------------------------------------------------------------------- setup


RECIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "quickstart_diffusion.py")


# The default policy: quickstart_diffusion's LLaDA, narrower and with one layer, so that the default run
# (20 settings × 64 repeats, gradients included) takes under two minutes of one CPU core, most of it
# compiling one function per K (about 10 s each).
TINY_MODEL = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2, "num_kv_heads": 2}


def _recipe(loss: str, seed: int):
    """configs/quickstart_diffusion.py with ``loss``, ``seed`` and ``TINY_MODEL``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("quickstart_diffusion", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.loss.name = loss
    config.train.seed = seed
    config.model.update(TINY_MODEL)
    return config


def gym_batch(loss: str, batch_size: int, seed: int) -> dict:
    """``batch_size`` rows (a seeded random subset, so that unpaired rows mix both labels) of the gym
    preference set the quickstart_diffusion recipe trains ``loss`` on, with example_id."""
    from pojax.train.data import gym_data

    rows = gym_data(_recipe(loss, seed)).preference
    n = len(next(iter(rows.values())))
    idx = np.sort(np.random.default_rng(seed).permutation(n)[:batch_size])
    batch = {k: jnp.asarray(v[idx]) for k, v in rows.items()}
    batch["example_id"] = jnp.asarray(idx, jnp.int32)
    return batch


def perturbed(model, noise: float, seed: int):
    """A copy of ``model`` with every parameter x → x (1 + noise · N(0, 1)) (noise 0: an exact copy)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [x * (1 + noise * jax.random.normal(k, x.shape, x.dtype)) if noise else jnp.copy(x)
              for x, k in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves), jax.tree.map(jnp.copy, rest))


def sft(model, *, mask_id: int, steps: int, seed: int, learning_rate: float, batch_size: int = 32):
    """``steps`` Adam steps of LLaDA's masked-diffusion SFT loss on the gym's SFT set; (model, last loss)."""
    import optax

    from pojax.data import gym as gym_lib

    if steps == 0:
        return model, float("nan")
    config = _recipe("kto", seed)
    rows = gym_lib.training_rows(gym_lib.from_config(config), "sft", seed, config.data.gym.num_train)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(learning_rate)

    @jax.jit
    def step(params, opt, batch, key):
        def loss_fn(p):
            return diff_obj.diffusion_sft_loss(nnx.merge(graphdef, p, rest), batch, key, mask_id=mask_id)[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    opt, rng, key = tx.init(params), np.random.default_rng(seed), jax.random.key(seed + 1)
    n = len(rows["input_ids"])
    for s in range(steps):
        idx = rng.integers(0, n, batch_size)
        params, opt, loss = step(params, opt, {k: jnp.asarray(v[idx]) for k, v in rows.items()},
                                 jax.random.fold_in(key, s))
    return nnx.merge(graphdef, params, rest), float(loss)


def build_models(*, checkpoint: str, reference: str, ref_noise: float, sft_steps: int, seed: int, loss: str):
    """(policy, reference, mask_id, setup description)."""
    from pojax.models import from_pretrained

    if checkpoint:
        policy = from_pretrained(checkpoint, dtype=jnp.float32)
        setup = {"policy": checkpoint}
    else:
        from pojax.data import gym as gym_lib
        from pojax.train.run import build_model

        config = _recipe(loss, seed)
        policy = build_model(config, gym_lib.from_config(config).vocab_size)
        mask_id = int(policy.config.mask_token_id)
        policy, sft_loss = sft(policy, mask_id=mask_id, steps=sft_steps, seed=seed,
                               learning_rate=config.train.sft_learning_rate)
        m = config.model
        setup = {"policy": f"tiny random llada (configs/quickstart_diffusion.py with D={m.hidden_size}, "
                           f"F={m.intermediate_size}, layers={m.num_layers}, heads={m.num_heads}) after {sft_steps} "
                           "gym SFT steps",
                 "sft_loss": sft_loss}
    mask_id = getattr(policy.config, "mask_token_id", None)
    if mask_id is None:
        raise ValueError(f"--checkpoint: {checkpoint} is not a masked-diffusion model (no mask_token_id)")
    if reference:
        ref = from_pretrained(reference, dtype=jnp.float32)
        setup["reference"] = reference
    else:
        ref = perturbed(policy, ref_noise, seed + 7)
        setup["reference"] = f"policy × (1 + {ref_noise} · N(0, 1)) per parameter"
    return policy, ref, int(mask_id), setup


# ------------------------------------------------------------------------------------------- one setting


def row_groups(batch) -> tuple[list, list]:
    """([(ids [B, T], response mask [B, T], role)] of the rows the loss differentiates, [those it does
    not: KTO's mismatched kl rows]), in the order and with the roles of pojax.objectives.diffusion."""
    if "label" in batch:
        scored = [(batch["input_ids"], batch["completion_mask"], diff_obj.ROLE_CHOSEN)]
        has_kl = "kl_ids" in batch and "kl_mask" in batch
        return scored, [(batch["kl_ids"], batch["kl_mask"], diff_obj.ROLE_KL)] if has_kl else []
    return [(batch["chosen_ids"], batch["chosen_mask"], diff_obj.ROLE_CHOSEN),
            (batch["rejected_ids"], batch["rejected_mask"], diff_obj.ROLE_REJECTED)], []


def draws_for(key, batch, estimator_index, *, n_mc: int) -> dl.MaskDraws:
    """The per-example draws ``pair_elbos`` / ``unpaired_elbos`` take with global ``key``, for the N rows
    of ``row_groups`` (scored rows first, then kl rows): mask [N, K, T], weight [N, K]. The estimator is
    ``ESTIMATORS[estimator_index]`` (a traced index, so that one compile serves every estimator)."""
    scored, extra = row_groups(batch)
    ex = diff_obj.example_ids(batch)

    def branch(estimator):
        def f(key):
            parts = [diff_obj.example_draws(key, ex, resp, n_mc=n_mc, estimator=estimator, role=role)
                     for _, resp, role in scored + extra]
            return dl.MaskDraws(mask=jnp.concatenate([p.mask for p in parts]),
                                weight=jnp.concatenate([p.weight for p in parts]))
        return f

    return jax.lax.switch(estimator_index, [branch(e) for e in dl.ESTIMATORS], key)


def _logps(batch, pol_NS, ref_N, kl_pol):
    """The loss input from the policy ELBOs of the scored rows and the reference's of all rows."""
    n = pol_NS.shape[0]
    lens = lambda m: jnp.sum(jnp.asarray(m, bool), axis=-1).astype(jnp.float32)
    if "label" in batch:
        return losses.UnpairedLogps(completion=pol_NS, ref_completion=ref_N[:n], kl=kl_pol,
                                    ref_kl=None if kl_pol is None else ref_N[n:],
                                    label=jnp.asarray(batch["label"], bool), length=lens(batch["completion_mask"]))
    b = n // 2
    return losses.PairLogps(chosen=pol_NS[:b], rejected=pol_NS[b:], ref_chosen=ref_N[:b], ref_rejected=ref_N[b:],
                            chosen_len=lens(batch["chosen_mask"]), rejected_len=lens(batch["rejected_mask"]))


def _lanes(repeats: int, n_mc: int, lanes: int) -> int:
    """The largest divisor of ``repeats`` not above ``lanes`` (0: 32 / K), so lax.map has no remainder."""
    target = max(1, min(repeats, lanes or 32 // n_mc))
    return max(d for d in range(1, target + 1) if repeats % d == 0)


def make_setting_fn(policy, reference, batch, *, loss: str, hparams: dict, n_mc: int, mask_id: int,
                    grads: bool = True, chunk_size: int = 1024, lanes: int = 0):
    """A jitted ``fn(pol_params, ref_params, keys [R], ref_keys [R], estimator_index) -> dict`` of
    per-repeat arrays (``estimator_index`` into ``ESTIMATORS``: one compile per K).

    Per repeat r (the draws of ``keys[r]``; the reference's independent ones of ``ref_keys[r]``):
      elbo, ref_shared, ref_independent [R, N]: B_θ and B_ref (float32, sum scale) of the N scored
        rows (paired: chosen rows then rejected rows; unpaired: completions); B_ref with the policy's
        draws (shared) or with ``ref_draws`` (independent);
      loss_shared, loss_independent [R]: the batch-mean loss with either reference;
      grad_shared, grad_independent [R, P]: its gradient w.r.t. the policy parameters, flattened (only
        with ``grads``). The kl rows' policy ELBO carries no gradient (KTO's z0).
    Repeats run under ``lax.map`` in vmapped groups (``_lanes``).
    """
    fn = losses.get(loss)
    state = initial_loss_state(loss)
    extra = {} if state is None else {"state": state}
    scored, kl = row_groups(batch)
    ids_NT = jnp.concatenate([ids for ids, _, _ in scored + kl])
    n_scored = sum(ids.shape[0] for ids, _, _ in scored)
    graphdef, _, rest_pol = nnx.split(policy, nnx.Param, ...)
    ref_graphdef, _, rest_ref = nnx.split(reference, nnx.Param, ...)
    kw = dict(mask_id=mask_id, chunk_size=chunk_size)

    def elbo(model, ids, draws):  # [N]: the mean over the K draws, as pojax.likelihood.diffusion.elbo
        return jnp.mean(dl.elbo_per_draw(model, ids, draws, **kw), axis=-1)

    def head(d):
        return dl.MaskDraws(mask=d.mask[:n_scored], weight=d.weight[:n_scored])

    def loss_of(pol_NS, ref_N, kl_pol):
        return jnp.mean(fn(_logps(batch, pol_NS, ref_N, kl_pol), **hparams, **extra).loss)

    def one(pol_params, ref_params, key, ref_key, est):
        draws = draws_for(key, batch, est, n_mc=n_mc)
        ref_draws = draws_for(ref_key, batch, est, n_mc=n_mc)
        pol_model = nnx.merge(graphdef, pol_params, rest_pol)
        ref_model = nnx.merge(ref_graphdef, ref_params, rest_ref)
        # Policy and reference go through the same computation (all N rows), so that equal weights
        # and shared draws give r̂ = 0 exactly; the policy's VJP is a separate pass over the scored rows.
        pol_N = elbo(pol_model, ids_NT, draws)
        kl_pol = jax.lax.stop_gradient(pol_N[n_scored:]) if kl else None
        refs = {"shared": elbo(ref_model, ids_NT, draws), "independent": elbo(ref_model, ids_NT, ref_draws)}
        if grads:
            _, vjp = jax.vjp(lambda p: elbo(nnx.merge(graphdef, p, rest_pol), ids_NT[:n_scored], head(draws)),
                             pol_params)
        out = {"elbo": pol_N[:n_scored]}
        for mode, ref_N in refs.items():
            out[f"ref_{mode}"] = ref_N[:n_scored]
            if grads:
                value, cot = jax.value_and_grad(loss_of)(pol_N[:n_scored], ref_N, kl_pol)
                out[f"grad_{mode}"] = jax.flatten_util.ravel_pytree(vjp(cot)[0])[0]
            else:
                value = loss_of(pol_N[:n_scored], ref_N, kl_pol)
            out[f"loss_{mode}"] = value
        return out

    @jax.jit
    def run(pol_params, ref_params, keys, ref_keys, estimator_index):
        group = _lanes(keys.shape[0], n_mc, lanes)
        return jax.lax.map(lambda k: one(pol_params, ref_params, *k, estimator_index), (keys, ref_keys),
                           batch_size=group)

    return run


# ------------------------------------------------------------------------------------------- statistics


def row_var(x_RN) -> float:
    """Var over repeats (ddof = 1) of each row, averaged over the rows."""
    return float(np.mean(np.var(np.asarray(x_RN, np.float64), axis=0, ddof=1)))


def grad_stats(g_RP) -> dict:
    """Norm mean / std and the mean leave-one-out cosine to the mean gradient of the other repeats."""
    g = np.asarray(g_RP, np.float64)
    r = g.shape[0]
    norms = np.linalg.norm(g, axis=1)
    others = (g.sum(axis=0, keepdims=True) - g) / (r - 1)
    denom = norms * np.linalg.norm(others, axis=1)
    cos = np.where(denom > 0, np.sum(g * others, axis=1) / np.where(denom > 0, denom, 1.0), np.nan)
    return {"grad_norm_mean": float(norms.mean()), "grad_norm_std": float(norms.std(ddof=1)),
            "grad_cos": float(np.mean(cos))}


def setting_rows(estimator: str, n_mc: int, out: dict, seconds: float) -> list[dict]:
    """The table rows (shared, independent) of one (estimator, K) from its per-repeat arrays."""
    rows = []
    elbo = np.asarray(out["elbo"], np.float64)
    for mode in DRAWS:
        ref = np.asarray(out[f"ref_{mode}"], np.float64)
        loss = np.asarray(out[f"loss_{mode}"], np.float64)
        row = {"estimator": estimator, "n_mc": n_mc, "draws": mode, "elbo_mean": float(elbo.mean()),
               "elbo_var": row_var(elbo), "ref_elbo_var": row_var(ref), "reward_mean": float((elbo - ref).mean()),
               "reward_var": row_var(elbo - ref), "loss_mean": float(loss.mean()),
               "loss_std": float(loss.std(ddof=1))}
        row.update(grad_stats(out[f"grad_{mode}"]) if f"grad_{mode}" in out else
                   {"grad_norm_mean": None, "grad_norm_std": None, "grad_cos": None})
        row["seconds"] = seconds
        rows.append(row)
    return rows


def loglog_slope(ks, values) -> float | None:
    """Least-squares slope of log(value) on log(K); None with fewer than two positive points."""
    pts = [(math.log(k), math.log(v)) for k, v in zip(ks, values) if v and v > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    return float(np.polyfit([x for x, _ in pts], [y for _, y in pts], 1)[0])


def headline(rows: list[dict], n_mc) -> dict:
    ks = sorted(n_mc)
    ratio_k = max([k for k in ks if k <= RATIO_K], default=ks[0])
    get = lambda e, k, d: next(r for r in rows if r["estimator"] == e and r["n_mc"] == k and r["draws"] == d)
    out = {"ratio_k": ratio_k, "estimators": {}}
    for e in dict.fromkeys(r["estimator"] for r in rows):
        var = {k: get(e, k, "shared")["elbo_var"] for k in ks}
        sh, ind = get(e, ratio_k, "shared")["reward_var"], get(e, ratio_k, "independent")["reward_var"]
        out["estimators"][e] = {
            "elbo_var": var, "elbo_var_slope": loglog_slope(ks, [var[k] for k in ks]),
            "reward_var_ratio_shared_over_independent": sh / ind if ind > 0 else None,
            **{f"{key}_{d}": {k: get(e, k, d)[key] for k in ks} for d in DRAWS
               for key in ("loss_std", "loss_mean", "grad_norm_mean", "grad_norm_std", "grad_cos")}}
    return out


# ------------------------------------------------------------------------------------------- outputs


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def headline_text(head: dict) -> str:
    k = head["ratio_k"]
    lines = [("| estimator | slope of log Var(B_θ) vs log K | Var(B_θ) by K | "
              f"Var(r̂) shared / independent at K={k} | loss std by K (shared) | grad cos by K (shared) |"),
             "|---|---|---|---|---|---|"]
    for e, h in head["estimators"].items():
        by_k = lambda d: ", ".join(f"{kk}: {_fmt(v)}" for kk, v in d.items())
        lines.append(f"| {e} | {_fmt(h['elbo_var_slope'])} | {by_k(h['elbo_var'])} | "
                     f"{_fmt(h['reward_var_ratio_shared_over_independent'])} | {by_k(h['loss_std_shared'])} | "
                     f"{by_k(h['grad_cos_shared'])} |")
    return "\n".join(lines)


def write_plots(rows: list[dict], outdir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(outdir, exist_ok=True)
    estimators = list(dict.fromkeys(r["estimator"] for r in rows))
    colors = {e: f"C{i}" for i, e in enumerate(estimators)}
    pick = lambda e, d, key: sorted((r["n_mc"], r[key]) for r in rows if r["estimator"] == e and r["draws"] == d)
    written = []

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for e in estimators:
        pts = pick(e, "shared", "elbo_var")
        ax.plot([k for k, _ in pts], [v for _, v in pts], "o-", color=colors[e], label=e)
    ks = sorted({r["n_mc"] for r in rows})
    top = max(v for e in estimators for k, v in pick(e, "shared", "elbo_var") if k == ks[0])
    ax.plot(ks, [top * ks[0] / k for k in ks], "k--", linewidth=1, label="∝ 1/K")
    ax.set(xscale="log", yscale="log", xlabel="K (n_mc)", ylabel="Var(B_θ) per row",
           title="ELBO variance vs Monte Carlo draws")
    ax.legend(fontsize=8)
    written.append(_save(fig, outdir, "elbo_var_vs_k.png"))

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for e in estimators:
        for d, style in (("shared", "o-"), ("independent", "s--")):
            pts = pick(e, d, "reward_var")
            ax.plot([k for k, _ in pts], [max(v, 1e-30) for _, v in pts], style, color=colors[e], label=f"{e}, {d}")
    ax.set(xscale="log", yscale="log", xlabel="K (n_mc)", ylabel="Var(B_θ − B_ref) per row",
           title="implicit reward variance: shared vs independent draws")
    ax.legend(fontsize=7)
    written.append(_save(fig, outdir, "reward_var_vs_k.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for e in estimators:
        for d, style in (("shared", "o-"), ("independent", "s--")):
            pts = pick(e, d, "loss_std")
            axes[0].plot([k for k, _ in pts], [v for _, v in pts], style, color=colors[e], label=f"{e}, {d}")
            pts = [(k, v) for k, v in pick(e, d, "grad_cos") if v is not None]
            axes[1].plot([k for k, _ in pts], [v for _, v in pts], style, color=colors[e])
    axes[0].set(xscale="log", yscale="log", xlabel="K (n_mc)", ylabel="std of the batch loss", title="loss")
    axes[1].set(xscale="log", xlabel="K (n_mc)", ylabel="mean cosine to the mean gradient (leave-one-out)",
                title="gradient direction")
    axes[0].legend(fontsize=6)
    written.append(_save(fig, outdir, "loss_grad_vs_k.png"))
    return written


def _save(fig, outdir, name) -> str:
    path = os.path.join(outdir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_outputs(workdir: str, rows: list[dict], head: dict, info: dict, raw: dict, *, plots: bool) -> dict:
    os.makedirs(workdir, exist_ok=True)
    paths = {name: os.path.join(workdir, name) for name in
             ("elbo_variance.md", "elbo_variance.csv", "elbo_variance.json", "elbo_values.npz")}
    with open(paths["elbo_variance.csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows([["" if r[c] is None else r[c] for c in COLUMNS] for r in rows])
    setup = "\n".join(f"- {k}: {v}" for k, v in info.items())
    text = "\n".join(["# ELBO Monte Carlo variance", "", setup, "", "## Headline", "", headline_text(head), "",
                      "## Per estimator × K × draws", "", markdown_table(rows), ""])
    with open(paths["elbo_variance.md"], "w") as f:
        f.write(text)
    with open(paths["elbo_variance.json"], "w") as f:
        json.dump({"setup": info, "headline": head, "rows": rows}, f, indent=1)
    np.savez_compressed(paths["elbo_values.npz"], **raw)
    if plots:
        paths["plots"] = write_plots(rows, os.path.join(workdir, "plots"))
    paths["markdown"] = text
    return paths


# ------------------------------------------------------------------------------------------- the tool


def elbo_variance(workdir: str, *, n_mc=DEFAULT_N_MC, estimators=DEFAULT_ESTIMATORS, loss: str = "kto",
                  beta: float = 0.1, repeats: int = 64, batch_size: int = 8, seed: int = 0,
                  ref_noise: float = 0.02, sft_steps: int = 100, checkpoint: str = "", reference: str = "",
                  grads: bool = True, plots: bool = True, stream=sys.stdout) -> dict:
    """Runs every (estimator, K) and writes the outputs; returns {"rows", "headline", "raw", "setup",
    "paths"}: ``raw[f"{estimator}/K{K}/{field}"]`` holds the per-repeat arrays of ``make_setting_fn``
    (without the gradients).

    Raises:
      ValueError: a bad option, naming its flag (nothing is built or written then).
    """
    n_mc, estimators = [int(k) if isinstance(k, (int, np.integer)) and not isinstance(k, bool) else k
                        for k in n_mc], list(estimators)
    check_options(n_mc=n_mc, estimators=estimators, loss=loss, repeats=repeats, batch_size=batch_size,
                  ref_noise=ref_noise, sft_steps=sft_steps, checkpoint=checkpoint, reference=reference)
    t0 = time.perf_counter()
    policy, ref, mask_id, setup = build_models(checkpoint=checkpoint, reference=reference, ref_noise=ref_noise,
                                               sft_steps=sft_steps, seed=seed, loss=loss)
    batch = gym_batch(loss, batch_size, seed)
    fn = losses.get(loss)
    hparams = {"beta": beta} if "beta" in losses.hparam_names(fn) else {}
    pol_params = nnx.state(policy, nnx.Param)
    ref_params = nnx.state(ref, nnx.Param)
    keys = jax.random.split(jax.random.key(seed + 1000), repeats)
    ref_keys = jax.random.split(jax.random.key(seed + 2000), repeats)
    setup_s = time.perf_counter() - t0
    stream.write(f"setup {setup_s:.1f}s: {setup}\n")
    results = {}
    for k in n_mc:  # one compile of the model's passes per K, shared by the estimators
        run = make_setting_fn(policy, ref, batch, loss=loss, hparams=hparams, n_mc=k, mask_id=mask_id, grads=grads)
        for estimator in estimators:
            t = time.perf_counter()
            est = jnp.asarray(dl.ESTIMATORS.index(estimator), jnp.int32)
            out = jax.device_get(run(pol_params, ref_params, keys, ref_keys, est))
            results[estimator, k] = (out, time.perf_counter() - t)
            stream.write(f"{estimator:>20} K={k:<3} done in {results[estimator, k][1]:.1f}s"
                         f"{' (with compilation)' if estimator == estimators[0] else ''}\n")
            stream.flush()
    rows, raw = [], {}
    for estimator in estimators:
        for k in n_mc:
            out, seconds = results[estimator, k]
            rows += setting_rows(estimator, k, out, seconds)
            raw.update({f"{estimator}/K{k}/{name}": np.asarray(v) for name, v in out.items()
                        if not name.startswith("grad_")})
    head = headline(rows, n_mc)
    n_rows = raw[next(iter(raw))].shape[1] if raw else 0
    info = {**setup, "loss": loss, "hparams": hparams, "batch": f"{batch_size} gym rows ({n_rows} scored)",
            "repeats": repeats, "seed": seed, "n_params": int(sum(x.size for x in jax.tree.leaves(pol_params))),
            "seconds": round(time.perf_counter() - t0, 1)}
    paths = write_outputs(workdir, rows, head, info, raw, plots=plots)
    stream.write("\n" + headline_text(head) + "\n")
    return {"rows": rows, "headline": head, "raw": raw, "setup": info, "paths": paths}


def define_flags(flag_values=flags.FLAGS) -> dict:
    """The command-line flags (defined only when run as a program, or on a test's own FlagValues)."""
    fv = dict(flag_values=flag_values)
    return dict(
        workdir=flags.DEFINE_string("workdir", None, "Where the table, JSON, raw values and plots go.", **fv),
        n_mc=flags.DEFINE_list("n_mc", [str(k) for k in DEFAULT_N_MC], "Monte Carlo draws K per ELBO.", **fv),
        estimators=flags.DEFINE_list("estimators", list(DEFAULT_ESTIMATORS), "ELBO estimators "
                                     "(pojax.likelihood.diffusion.ESTIMATORS).", **fv),
        loss=flags.DEFINE_string("loss", "kto", "Any registered pairwise / unpaired loss (pojax.losses.names()).", **fv),
        beta=flags.DEFINE_float("beta", 0.1, "The loss's β (TRL's name), when it takes one.", **fv),
        repeats=flags.DEFINE_integer("repeats", 64, "R: global draw keys per setting (>= 2).", **fv),
        batch_size=flags.DEFINE_integer("batch_size", 8, "Gym rows in the fixed batch.", **fv),
        seed=flags.DEFINE_integer("seed", 0, "Seed of the model, the SFT, the batch and the draws.", **fv),
        ref_noise=flags.DEFINE_float("ref_noise", 0.02, "Relative Gaussian noise of the reference's weights "
                                     "(without --reference); 0 = reference equals policy.", **fv),
        sft_steps=flags.DEFINE_integer("sft_steps", 100, "SFT steps of the tiny default policy.", **fv),
        checkpoint=flags.DEFINE_string("checkpoint", "", "HF LLaDA directory of the policy ('' = tiny model).", **fv),
        reference=flags.DEFINE_string("reference", "", "HF directory of the reference ('' = perturbed policy).", **fv),
        grads=flags.DEFINE_bool("grads", True, "Also the loss gradients (holds [repeats, params] floats).", **fv),
        plots=flags.DEFINE_bool("plots", True, "Write plots/*.png.", **fv),
    )


def _ints(name: str, values) -> list:
    out = []
    for v in values:
        try:
            out.append(int(v))
        except ValueError:
            raise ValueError(f"--{name}: not an integer: {v!r}") from None
    return out


def main(argv, f: dict) -> int:
    """The program: a bad flag exits with status 2 and one line on stderr naming it."""
    del argv
    try:
        if not f["workdir"].value:
            raise ValueError("--workdir: required")
        opts = {name: f[name].value for name in ("estimators", "loss", "beta", "repeats", "batch_size", "seed",
                                                 "ref_noise", "sft_steps", "checkpoint", "reference", "grads",
                                                 "plots")}
        opts["n_mc"] = _ints("n_mc", f["n_mc"].value)
        check_options(**{k: opts[k] for k in ("n_mc", "estimators", "loss", "repeats", "batch_size", "ref_noise",
                                               "sft_steps", "checkpoint", "reference")})
    except ValueError as e:
        print(f"elbo_variance: {e}", file=sys.stderr)
        return 2
    elbo_variance(f["workdir"].value, **opts)
    return 0


if __name__ == "__main__":
    _flags = define_flags()
    app.run(lambda argv: sys.exit(main(argv, _flags)))
