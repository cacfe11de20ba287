"""OFS-DPO's training mode (Qi et al., arXiv 2406.05534): two LoRA modules over the frozen SFT
start chase each other inside the online loop (pojax.train.online, ``loss.name = "ofs_dpo"``).

- ``fast_slow``: the fast and the slow module are the same graph with their own adapters
  (``nnx.LoRAParam``); the base Variables are shared, so one copy of the base sits in memory
  and in checkpoints, and only the adapters train.
- ``optimizer``: the run's AdamW on both adapters (``optimizer.learning_rate`` = η_F, the fast
  module's rate); the slow module's updates are scaled by 1 / ``online.fast_lr_ratio``, which
  for AdamW is exactly the learning rate η_S = η_F / ratio (weight decay included).
- ``objective``: the ``ofs_dpo`` loss (pojax.losses.online) on both modules' log-likelihoods of
  each step's sampled pairs, against the frozen reference; ties weigh 0, as in online DPO.
- the swap rule (``swap_hook``): every ``online.swap_every`` steps, when the slow module's mean
  DPO loss over the pairs of those steps is lower than the fast module's, the modules exchange
  roles: their adapters and AdamW moments are swapped, so the leader gets the high learning
  rate. The window's loss sums ride in the train state's loss_state (checkpointed: resumable).
- the fast module is the policy: it samples the training pairs, is evaluated and exported.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from pojax import losses
from pojax.config import loss_hparams
from pojax.models.lora import apply_lora
from pojax.objectives import pair_logps
from pojax.train.optim import make_optimizer

MODULES = ("fast", "slow")


class FastSlow(nnx.Module):
    """The two modules of OFS-DPO: ``fast`` and ``slow`` share every base Variable and differ in
    their LoRA adapters."""

    def __init__(self, fast: nnx.Module, slow: nnx.Module):
        self.fast, self.slow = fast, slow


def fast_slow(model: nnx.Module, *, rank: int, alpha: float, rngs: nnx.Rngs) -> FastSlow:
    """Adds LoRA adapters to ``model`` (in place: it becomes the fast module) and builds the slow
    module as an identical copy of the adapters over the same base (the paper's "two identical
    modules"; both start equal to the base, LoRA's B being 0)."""
    apply_lora(model, rank=rank, alpha=alpha, rngs=rngs)
    graphdef, lora, rest = nnx.split(model, nnx.LoRAParam, ...)
    slow = nnx.merge(graphdef, jax.tree.map(jnp.copy, lora), rest)  # merge reuses rest's Variables: a shared base
    return FastSlow(model, slow)


def scale_module(name: str, factor: float) -> optax.GradientTransformation:
    """Multiplies the updates of the subtree ``name`` ("fast" | "slow") of a FastSlow state by
    ``factor`` (after AdamW: a learning rate ``factor`` times the run's for that module)."""

    def update(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map_with_path(
            lambda path, u: u * factor if getattr(path[0], "key", None) == name else u, updates)
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def optimizer(config, steps: int) -> optax.GradientTransformation:
    """AdamW of the run (η_F = optimizer.learning_rate, its schedule and clipping, the clipping
    over both modules' gradients together) with the slow module at η_F / online.fast_lr_ratio."""
    return optax.chain(make_optimizer(config, steps), scale_module("slow", 1.0 / float(config.online.fast_lr_ratio)))


def swap_modules(tree):
    """``tree`` with its fast and slow subtrees exchanged: every nnx.State node keyed by exactly
    {"fast", "slow"} — the parameters, and the optimizer-state nodes that mirror them (AdamW's
    first and second moments). Anything else (step counts, schedules) is left as it is."""

    def swap(node):
        if isinstance(node, nnx.State) and set(node.keys()) == set(MODULES):
            raw = node.raw_mapping  # the nested dicts themselves: indexing would wrap them in States
            return nnx.State({"fast": raw["slow"], "slow": raw["fast"]})
        return node

    return jax.tree.map(swap, tree, is_leaf=lambda x: isinstance(x, nnx.State))


def should_swap(step: int, fast_loss: float, slow_loss: float, swap_every: int) -> bool:
    """The swap rule after optimizer step ``step`` (0-based): at every ``swap_every``-th step
    (0 = never), swap when the slow module's DPO loss (mean over the window's pairs) is below
    the fast module's — the slow module has caught up, and the leader takes the fast role."""
    return swap_every > 0 and (step + 1) % swap_every == 0 and slow_loss < fast_loss


def empty_window() -> jax.Array:
    """[3] float32 loss_state of an OFS run: Σ fast DPO loss, Σ slow DPO loss, steps, since the
    last check of the swap rule."""
    return jnp.zeros((3,), jnp.float32)


def swap_hook(config) -> Callable:
    """``on_step(step, state, metrics) -> (state, metrics)`` for pojax.train.loop.run_stage: at
    each check, applies ``should_swap`` to the window's mean DPO losses (state.loss_state),
    swaps the modules when it says so and empties the window; reports ``ofs/swapped`` (1 where
    the modules exchanged roles after that step)."""
    every = config.online.swap_every

    def on_step(step: int, state, metrics: dict):
        if every <= 0 or (step + 1) % every:
            return state, {"ofs/swapped": 0.0}
        fast_sum, slow_sum, n = (float(x) for x in jax.device_get(state.loss_state))
        swap = should_swap(step, fast_sum / max(n, 1.0), slow_sum / max(n, 1.0), every)
        if swap:
            state = state.replace(params=swap_modules(state.params), opt_state=swap_modules(state.opt_state))
        return state.replace(loss_state=jnp.zeros_like(state.loss_state)), {"ofs/swapped": float(swap)}

    return on_step


def objective(config):
    """``(model, reference, batch, loss_state) -> (loss, metrics, loss_state)`` of one OFS step:
    the ``ofs_dpo`` loss of ``model`` (a FastSlow) on the step's pairs, averaged with the pairs'
    weights (ties count 0). The reference's log-likelihoods are computed once, for both.
    loss_state (``empty_window``) accumulates the step's mean fast and slow DPO losses."""
    fn, hparams, chunk = losses.get("ofs_dpo"), loss_hparams(config), config.likelihood.chunk_size

    def obj(m, ref, batch, ls):
        fast = pair_logps(m.fast, ref, batch, chunk_size=chunk)
        slow = pair_logps(m.slow, None, batch, chunk_size=chunk)
        out = fn(fast, **hparams, slow_logps=slow)
        w = batch["weight"].astype(jnp.float32)
        total = jnp.maximum(jnp.sum(w), 1.0)
        mean = lambda v: jnp.sum(w * v.astype(jnp.float32)) / total if jnp.ndim(v) else v
        metrics = {k: mean(v) for k, v in out.metrics.items()}
        window = ls + jax.lax.stop_gradient(jnp.stack([metrics["loss/fast_dpo"], metrics["loss/slow_dpo"], jnp.float32(1)]))
        return mean(out.loss), metrics, window

    return obj


def stage(config, model: nnx.Module, steps: int):
    """(the FastSlow to train, run_stage's keyword arguments, the sampler: FastSlow -> the fast
    module) of an OFS-DPO run on ``model`` (the SFT start, turned into the fast module)."""
    o = config.online
    trained = fast_slow(model, rank=o.lora_rank, alpha=o.lora_alpha, rngs=nnx.Rngs(config.train.seed + 23))
    kwargs = {"objective": objective(config), "tx": optimizer(config, steps), "trainable": nnx.LoRAParam,
              "on_step": swap_hook(config), "loss_state": empty_window()}
    return trained, kwargs, lambda m: m.fast
