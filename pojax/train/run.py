"""The ``train`` task: (optional SFT stage) → preference optimization → evaluation.

Data is the built-in gym (model built from ``model.*`` sizes; evaluation = the gold-reward win
rate of the trained policy over the starting one) or preference files tokenized with the
tokenizer of ``model.path`` (evaluation = implicit-reward accuracy and margins on held-out rows).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from pojax import sharding
from pojax.config import ConfigError, loss_hparams
from pojax.data import gym as gym_lib
from pojax.data.pipeline import batch_at
from pojax.models import CausalLM, ModelConfig, from_pretrained, save_pretrained
from pojax.models.lora import apply_lora, merge_lora, without_adapters
from pojax.objectives import pair_logps, preference_loss, sft_loss, unpaired_logps
from pojax.sampling import generate
from pojax.train import metrics as metrics_lib
from pojax.train.data import file_data, gym_data
from pojax.train.loop import run_stage
from pojax.train.optim import make_optimizer


def build_model(config, vocab_size: int | None, mesh=None, rules=None):
    """The starting policy, placed on ``mesh``. Parameters are float32 (master weights: a 5e-7
    update vanishes in bfloat16) and ``model.dtype`` is the compute dtype. A checkpoint is read
    straight into its shards; a random model is created, then sharded."""
    m = config.model
    if m.path:
        return from_pretrained(m.path, dtype=jnp.dtype(m.dtype), param_dtype=jnp.float32, mesh=mesh, rules=rules)
    if vocab_size is None:
        raise ConfigError("model.path", "training on files needs a Hugging Face model directory (model and tokenizer)")
    mc = ModelConfig(model_type=m.family, vocab_size=vocab_size, hidden_size=m.hidden_size,
                     intermediate_size=m.intermediate_size, num_hidden_layers=m.num_layers,
                     num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads,
                     dtype=m.dtype, param_dtype="float32", max_position_embeddings=4096)
    model = CausalLM(mc, rngs=nnx.Rngs(config.train.seed))
    return model if mesh is None else sharding.shard_module(model, mesh, rules)


def load_tokenizer(config):
    from transformers import AutoTokenizer

    path = config.data.tokenizer or config.model.path
    if not path:
        raise ConfigError("data.tokenizer", "file data needs a tokenizer: set model.path or data.tokenizer")
    return AutoTokenizer.from_pretrained(path)


def _copy(model):
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(jnp.copy, state))


def _reference_logps(reference, rows: dict, config) -> dict:
    """The reference's per-sequence log-likelihoods of every row: {ref_chosen, ref_rejected} or
    {ref_logps, ref_kl}, computed once in batches."""
    chunk, bs = config.likelihood.chunk_size, config.train.batch_size
    n = len(next(iter(rows.values())))
    unpaired = "label" in rows
    fn = nnx.jit(lambda ref, b: (unpaired_logps if unpaired else pair_logps)(ref, None, b, chunk_size=chunk))
    names = ("ref_logps", "ref_kl") if unpaired else ("ref_chosen", "ref_rejected")
    outs = {k: [] for k in names}
    for start in range(0, n, bs):
        lp = fn(reference, {k: v[start:start + bs] for k, v in rows.items()})
        values = (lp.completion, lp.kl) if unpaired else (lp.chosen, lp.rejected)
        for k, v in zip(names, values):
            outs[k].append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in outs.items()}


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


def held_out_eval(policy, before, held: dict, config) -> dict:
    """Loss and TRL metrics of the trained policy on held-out rows, with the starting policy as
    reference (implicit-reward accuracy and margins)."""
    fn = nnx.jit(lambda p, r, b: preference_loss(p, r, b, loss_name=config.loss.name, hparams=loss_hparams(config),
                                                 chunk_size=config.likelihood.chunk_size)[:2])
    n, bs = len(next(iter(held.values()))), config.train.batch_size
    totals, count = {}, 0
    for start in range(0, n, bs):
        b = {k: jnp.asarray(v[start:start + bs]) for k, v in held.items()}
        m = len(next(iter(b.values())))
        loss, metrics = fn(policy, before, b)
        for k, v in dict(metrics, loss=loss).items():
            totals[k] = totals.get(k, 0.0) + float(v) * m
        count += m
    return {f"eval/{k}": v / count for k, v in totals.items()} | {"num_eval_examples": count}


def run_train(config, workdir: str | None) -> dict:
    workdir = workdir or os.path.join("workdirs", "run")
    os.makedirs(workdir, exist_ok=True)
    gym = config.data.format == "gym"
    data = gym_data(config) if gym else file_data(config, load_tokenizer(config))
    mesh, rules = sharding.mesh_from_config(config), sharding.rules_from_config(config)
    model = build_model(config, data.vocab_size, mesh, rules)
    seed, chunk = config.train.seed, config.likelihood.chunk_size
    if config.train.batch_size % config.train.grad_accum_steps:
        raise ConfigError("train.grad_accum_steps", f"{config.train.grad_accum_steps} does not divide "
                          f"train.batch_size={config.train.batch_size}")
    bs = config.train.batch_size // config.train.grad_accum_steps  # micro-batch size

    if data.sft is not None:
        sft_config = config.copy_and_resolve_references()
        with sft_config.unlocked():
            sft_config.optimizer.learning_rate = config.train.sft_learning_rate
        model, _ = run_stage(
            "sft", model, objective=lambda m, ref, b, ls: (*sft_loss(m, b, chunk_size=chunk), ls),
            batch_fn=lambda s: batch_at(data.sft, s, bs, seed + 1), steps=config.train.sft_steps,
            tx=make_optimizer(sft_config, config.train.sft_steps), workdir=workdir, config=config, mesh=mesh,
            rules=rules, metrics_file="metrics_sft.jsonl")
    before = _copy(model)

    rows, mode = data.preference, config.reference.mode
    trainable, reference = nnx.Param, None
    if mode == "copy":
        reference = before
    elif mode == "precomputed":
        rows = dict(rows, **_reference_logps(before, rows, config))
    elif mode == "lora_base":
        apply_lora(model, rank=8, alpha=16.0, rngs=nnx.Rngs(seed + 3))
        trainable = nnx.All(nnx.LoRAParam)
    hparams, name = loss_hparams(config), config.loss.name

    def objective(m, ref, b, ls):
        if mode == "lora_base":
            ref = without_adapters(m)
        return preference_loss(m, ref, b, loss_name=name, hparams=hparams, chunk_size=chunk, state=ls)

    loss_state = None
    if name == "bco":
        from pojax.losses import BCOState

        loss_state = BCOState()
    model, _ = run_stage(
        "train", model, objective=objective, batch_fn=lambda s: batch_at(rows, s, bs, seed + 4),
        steps=config.train.max_steps, tx=make_optimizer(config, config.train.max_steps), workdir=workdir,
        config=config, mesh=mesh, rules=rules, trainable=trainable, reference=reference, loss_state=loss_state)

    if config.train.export_final:
        final = merge_lora(_copy(model)) if mode == "lora_base" else model
        save_pretrained(final, os.path.join(workdir, "final"))
        if not gym:
            load_tokenizer(config).save_pretrained(os.path.join(workdir, "final"))
    results = {"loss": name, "steps": config.train.max_steps, "sft_steps": config.train.sft_steps}
    if gym:
        results.update(gold_eval(data.gym, model, before, config))
    elif data.held_out is not None:
        results.update(held_out_eval(model, before, data.held_out, config))
    metrics_lib.write_results(workdir, results)
    if config.logging.plots:
        plots = os.path.join(workdir, "plots")
        metrics_lib.write_plots(metrics_lib.MetricsWriter(workdir).read(), plots)
        sft_rows = metrics_lib.MetricsWriter(workdir, "metrics_sft.jsonl").read()
        if sft_rows:
            metrics_lib.write_plots([{"step": r["step"], "sft_loss": r["loss"]} for r in sft_rows], plots,
                                    extra={"sft_loss": ("sft_loss",)})
    logging.info("results: %s", results)
    return results
