"""The ``train`` task: (optional SFT stage) → preference optimization → evaluation.

With ``data.format = "gym"`` everything is built in: the model from ``model.*`` sizes, SFT on
the gym's base-policy responses, preference training against the SFT policy as reference, and
the gold-reward win rate of the trained policy over the starting one on held-out prompts.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from pojax import sharding
from pojax.config import UNPAIRED_LOSSES, ConfigError, loss_hparams
from pojax.data import gym as gym_lib
from pojax.models import CausalLM, ModelConfig, from_pretrained
from pojax.models.lora import apply_lora, without_adapters
from pojax.objectives import pair_logps, preference_loss, sft_loss, unpaired_logps
from pojax.sampling import generate
from pojax.train import metrics as metrics_lib
from pojax.train.loop import run_stage
from pojax.train.optim import make_optimizer


def build_model(config, vocab_size: int):
    m = config.model
    if m.path:
        return from_pretrained(m.path, dtype=jnp.dtype(m.dtype))
    mc = ModelConfig(model_type=m.family, vocab_size=vocab_size, hidden_size=m.hidden_size,
                     intermediate_size=m.intermediate_size, num_hidden_layers=m.num_layers,
                     num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads,
                     dtype=m.dtype, param_dtype=m.dtype, max_position_embeddings=4096)
    return CausalLM(mc, rngs=nnx.Rngs(config.train.seed))


def _copy(model):
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(jnp.copy, state))


def _precompute_reference(reference, rows: dict, config) -> dict:
    """Adds the reference's per-sequence log-likelihoods to every training row (one pass)."""
    chunk = config.likelihood.chunk_size
    bs = config.train.batch_size
    n = len(next(iter(rows.values())))
    unpaired = "label" in rows
    fn = nnx.jit(lambda ref, b: (unpaired_logps if unpaired else pair_logps)(ref, None, b, chunk_size=chunk))
    outs = {k: [] for k in (("ref_logps", "ref_kl") if unpaired else ("ref_chosen", "ref_rejected"))}
    for start in range(0, n, bs):
        b = {k: v[start:start + bs] for k, v in rows.items()}
        if unpaired:
            b["kl_ids"], b["kl_mask"] = b["input_ids"], b["completion_mask"]
        lp = fn(reference, b)
        if unpaired:
            outs["ref_logps"].append(np.asarray(lp.completion))
            outs["ref_kl"].append(np.asarray(lp.completion))
        else:
            outs["ref_chosen"].append(np.asarray(lp.chosen))
            outs["ref_rejected"].append(np.asarray(lp.rejected))
    return dict(rows, **{k: np.concatenate(v) for k, v in outs.items()})


def gold_eval(gym, policy, before, config) -> dict:
    """Gold reward of sampled responses: the trained policy vs the starting one, per prompt."""
    n, k = config.data.gym.num_eval, config.eval.num_samples
    prompts = gym.prompts(np.random.default_rng([config.train.seed, 7]), n)
    rows = np.concatenate([np.full((n, 1), gym_lib.BOS), prompts, np.full((n, 1), gym_lib.SEP)], 1).astype(np.int32)
    rows = np.repeat(rows, k, axis=0)
    rewards = {}
    for name, model in (("after", policy), ("before", before)):
        key = jax.random.key(config.train.seed + 11)
        out = np.asarray(generate(model, jnp.asarray(rows), key, max_new_tokens=gym.response_len,
                                  temperature=config.eval.temperature))
        rewards[name] = gym.gold_reward(np.repeat(prompts, k, 0), out).reshape(n, k).mean(1)
    a, b = rewards["after"], rewards["before"]
    return {"gold_win_rate": float(np.mean((a > b) + 0.5 * (a == b))), "gold_reward_before": float(b.mean()),
            "gold_reward_after": float(a.mean()), "num_eval_prompts": n, "samples_per_prompt": k}


def run_train(config, workdir: str | None) -> dict:
    if config.data.format != "gym":
        raise ConfigError("data.format", f"{config.data.format!r}: only the built-in 'gym' trains end to end so far; "
                          "file formats land with the data pipeline issue")
    workdir = workdir or os.path.join("workdirs", "run")
    os.makedirs(workdir, exist_ok=True)
    mesh, rules = sharding.mesh_from_config(config), sharding.rules_from_config(config)
    gym = gym_lib.from_config(config)
    seed, bs = config.train.seed, config.train.batch_size
    model = sharding.shard_module(build_model(config, gym.vocab_size), mesh, rules)
    chunk = config.likelihood.chunk_size

    if config.train.sft_steps > 0:
        rows = gym_lib.training_rows(gym, "sft", seed, config.data.gym.num_train)
        sft_config = config.copy_and_resolve_references()
        with sft_config.unlocked():
            sft_config.optimizer.learning_rate = config.train.sft_learning_rate
        tx = make_optimizer(sft_config, config.train.sft_steps)
        model, _ = run_stage(
            "sft", model, objective=lambda m, ref, b, ls: (*sft_loss(m, b, chunk_size=chunk), ls),
            batch_fn=lambda s: gym_lib.batch_at(rows, s, bs, seed + 1), steps=config.train.sft_steps, tx=tx,
            workdir=workdir, config=config, mesh=mesh, rules=rules, metrics_file="metrics_sft.jsonl")
    before = _copy(model)

    kind = "unpaired" if config.loss.name in UNPAIRED_LOSSES else "paired"
    rows = gym_lib.training_rows(gym, kind, seed + 2, config.data.gym.num_train, config.data.gym.label_noise)
    mode = config.reference.mode
    trainable, reference = nnx.Param, None
    if mode == "copy":
        reference = before
    elif mode == "precomputed":
        rows = _precompute_reference(before, rows, config)
    elif mode == "lora_base":
        apply_lora(model, rank=8, alpha=16.0, rngs=nnx.Rngs(seed + 3))
        trainable = nnx.LoRAParam
    hparams = loss_hparams(config)
    name = config.loss.name

    def objective(m, ref, b, ls):
        if mode == "lora_base":
            ref = without_adapters(m)
        return preference_loss(m, ref, b, loss_name=name, hparams=hparams, chunk_size=chunk, state=ls)

    loss_state = None
    if name == "bco":
        from pojax.losses import BCOState

        loss_state = BCOState()
    tx = make_optimizer(config, config.train.max_steps)
    model, _ = run_stage(
        "train", model, objective=objective, batch_fn=lambda s: gym_lib.batch_at(rows, s, bs, seed + 4, gym),
        steps=config.train.max_steps, tx=tx, workdir=workdir, config=config, mesh=mesh, rules=rules,
        trainable=trainable, reference=reference, loss_state=loss_state)

    results = gold_eval(gym, model, before, config)
    results.update(loss=name, steps=config.train.max_steps, sft_steps=config.train.sft_steps)
    metrics_lib.write_results(workdir, results)
    if config.logging.plots:
        rows_ = metrics_lib.MetricsWriter(workdir).read()
        metrics_lib.write_plots(rows_, os.path.join(workdir, "plots"))
        sft_rows = metrics_lib.MetricsWriter(workdir, "metrics_sft.jsonl").read()
        if sft_rows:
            metrics_lib.write_plots([{"step": r["step"], "sft_loss": r["loss"]} for r in sft_rows],
                                    os.path.join(workdir, "plots"), extra={"sft_loss": ("sft_loss",)})
    logging.info("results: %s", results)
    return results
