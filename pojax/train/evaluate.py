"""Evaluation of a policy: preference metrics on held-out rows (TRL's ``eval_*`` names, plus
``eval_loss_mc_stderr`` of diffusion runs with likelihood.mc_stderr), the gym's gold-reward win
rate, and reference log-probs computed once for ``reference.mode = "precomputed"``."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pojax.data import gym as gym_lib
from pojax.objectives import diffusion as diff_obj
from pojax.objectives import pair_logps, ranked_logps, unpaired_logps
from pojax.sampling import diffusion, generate


def reference_logps(reference, rows: dict, *, batch_size: int, chunk_size: int,
                    completion_width: int | None = None) -> dict:
    """The reference's per-sequence log-likelihoods of every row, computed once in batches:
    {ref_chosen, ref_rejected} [N] for paired rows, {ref_logps, ref_kl} [N] for unpaired ones,
    {ref_logps} [N, K] for ranked ones (``completion_width``: shared-prompt forwards, as
    ``pojax.objectives.pair_logps``)."""
    n = len(next(iter(rows.values())))
    kind = "ranked" if "scores" in rows else "unpaired" if "label" in rows else "paired"
    logps_fn = {"ranked": ranked_logps, "unpaired": unpaired_logps, "paired": pair_logps}[kind]
    fn = nnx.jit(lambda ref, b: logps_fn(ref, None, b, chunk_size=chunk_size, completion_width=completion_width))
    names = {"ranked": ("ref_logps",), "unpaired": ("ref_logps", "ref_kl"), "paired": ("ref_chosen", "ref_rejected")}[kind]
    outs = {k: [] for k in names}
    for start in range(0, n, batch_size):
        lp = fn(reference, {k: v[start:start + batch_size] for k, v in rows.items()})
        values = {"ranked": lambda: (lp.logps,), "unpaired": lambda: (lp.completion, lp.kl),
                  "paired": lambda: (lp.chosen, lp.rejected)}[kind]()
        for k, v in zip(names, values):
            outs[k].append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in outs.items()}


def metric_rows(name: str, batch: dict) -> int:
    """How many rows of ``batch`` the batch metric ``name`` averages over, its weight across
    evaluation batches: for unpaired rows (a ``label`` [B] column) a ``*/chosen`` metric averages
    over the desirable rows and a ``*/rejected`` one over the undesirable rows (TRL's KTOTrainer
    divides its sums by these counts); every other metric over all B rows."""
    n = len(next(iter(batch.values())))
    if "label" not in batch:
        return n
    desirable = int(np.sum(np.asarray(batch["label"], bool)))
    return {"chosen": desirable, "rejected": n - desirable}.get(name.rsplit("/", 1)[-1], n)


def unpaired_margins(out: dict, prefix: str = "eval_") -> dict:
    """``out`` with rewards/margins = rewards/chosen − rewards/rejected of the whole set (TRL's
    KTO margins: the desirable rows' mean reward minus the undesirable rows'). A per-batch
    margin is NaN in any batch holding one label only (the gym's held-out rows come all
    desirable, then all undesirable: in the quickstarts every batch holds one label), so
    averaging per-batch margins can give no figure."""
    chosen, rejected = out.get(f"{prefix}rewards/chosen"), out.get(f"{prefix}rewards/rejected")
    if chosen is None or rejected is None:
        return out
    return dict(out, **{f"{prefix}rewards/margins": chosen - rejected})


def preference_evaluator(config, *, lora_base: bool = False, mask_id: int | None = None,
                         completion_width: int | None = None):
    """``evaluate(policy, reference, rows, loss_state=None) -> {eval_*: value}``: mean loss and
    TRL metrics of ``policy`` on ``rows`` (example-weighted over batches of the micro-batch
    size), as TRL's evaluation names them: eval_loss, eval_rewards/accuracies, ... One jitted
    program serves every call; ``mask_id`` evaluates a diffusion run on ELBOs. Unpaired rows'
    ``*/chosen`` / ``*/rejected`` metrics are means over the desirable / undesirable rows of the
    whole set (``metric_rows``) and eval_rewards/margins their difference (``unpaired_margins``),
    whatever labels each batch holds.

    The reference is a model, or None when the rows carry precomputed reference values or the
    loss is reference-free; ``lora_base`` uses the policy with its adapters off. A running loss
    state (BCO's δ, β-DPO's statistics) is the one the training reached.

    With likelihood.mc_stderr (diffusion runs) it also reports ``eval_loss_mc_stderr``: the Monte
    Carlo standard error of eval_loss, from per-row losses a_b, c_b under two independent halves
    of the n_mc draws, sqrt(Σ_b (a_b − c_b)² / 4) / N over the N rows (first-order; see
    ``pojax.objectives.diffusion.half_budget_losses`` for the derivation and its caveats)."""
    from pojax.train.objectives import half_budget_objective, preference_objective

    objective, _ = preference_objective(config, mask_id=mask_id, lora_base=lora_base, packed=False,
                                        completion_width=completion_width)
    bs = max(config.train.batch_size // config.train.grad_accum_steps, 1)
    halves = (half_budget_objective(config, mask_id=mask_id, lora_base=lora_base)
              if mask_id is not None and config.likelihood.get("mc_stderr") else None)

    @nnx.jit
    def fn(p, r, b, loss_state):
        loss, metrics, _ = objective(p, r, b, loss_state)
        if halves is not None:
            a, c = halves(p, r, b, loss_state)
            metrics = dict(metrics, _half_diff_sq_sum=jnp.sum(jnp.square(a - c)))
        return loss, metrics

    def evaluate(policy, reference, rows: dict, loss_state=None) -> dict:
        n = len(next(iter(rows.values())))
        totals, weights, count, diff_sq = {}, {}, 0, 0.0
        for start in range(0, n, bs):
            b = {k: jnp.asarray(v[start:start + bs]) for k, v in rows.items()}
            m = len(next(iter(b.values())))
            loss, metrics = fn(policy, reference, b, loss_state)
            metrics = jax.device_get(metrics)
            diff_sq += float(metrics.pop("_half_diff_sq_sum", 0.0))
            for k, v in dict(metrics, loss=loss).items():
                totals.setdefault(k, 0.0)
                weights.setdefault(k, 0)
                w = metric_rows(k, b)
                if w and np.isfinite(float(v)):  # e.g. KTO's rewards/chosen of a batch without desirable rows
                    totals[k] += float(v) * w
                    weights[k] += w
            count += m
        out = ({f"eval_{k}": (v / weights[k] if weights[k] else float("nan")) for k, v in totals.items()}
               | {"eval_num_examples": count})
        if "label" in rows:
            out = unpaired_margins(out)
        if halves is not None:
            out["eval_loss_mc_stderr"] = diff_obj.mc_stderr(diff_sq, count)
        return out

    return evaluate


def preference_eval(policy, reference, rows: dict, config, *, loss_state=None, lora_base: bool = False) -> dict:
    """One evaluation with ``preference_evaluator`` (see there)."""
    from pojax.train.objectives import mask_id_of

    return preference_evaluator(config, lora_base=lora_base, mask_id=mask_id_of(policy, config))(
        policy, reference, rows, loss_state)


def gold_eval(gym: gym_lib.Gym, policy, before, config) -> dict:
    """Gold reward of sampled responses: ``policy`` vs ``before`` on the same held-out prompts,
    ``eval.num_samples`` samples each; a prompt is a win when its mean gold reward is higher
    (ties count ½). ``eval.num_samples`` = 0 samples nothing and returns no figures."""
    n, k = config.data.gym.num_eval, config.eval.num_samples
    if not k:
        return {}
    prompts = gym.prompts(np.random.default_rng([config.train.seed, 7]), n)
    rows = np.concatenate([np.full((n, 1), gym_lib.BOS), prompts, np.full((n, 1), gym_lib.SEP)], 1).astype(np.int32)
    rows = np.repeat(rows, k, axis=0)
    rewards = {}
    for name, model in (("after", policy), ("before", before)):
        key = jax.random.key(config.train.seed + 11)
        if getattr(model.config, "mask_token_id", None) is not None:  # masked diffusion: LLaDA's reverse process
            length = gym.response_len
            out = np.asarray(diffusion.generate(model, jnp.asarray(rows), key, gen_length=length, steps=length,
                                                block_length=length,
                                                temperature=config.eval.temperature, mask_id=model.config.mask_token_id))
        else:
            out = np.asarray(generate(model, jnp.asarray(rows), key, max_new_tokens=gym.response_len,
                                      temperature=config.eval.temperature))
        rewards[name] = gym.gold_reward(np.repeat(prompts, k, 0), out).reshape(n, k).mean(1)
    a, b = rewards["after"], rewards["before"]
    return {"gold_win_rate": float(np.mean((a > b) + 0.5 * (a == b))), "gold_reward_before": float(b.mean()),
            "gold_reward_after": float(a.mean()), "num_eval_prompts": n, "samples_per_prompt": k}
