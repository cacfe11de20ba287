"""The ``train`` task: (optional SFT stage) → preference optimization → evaluation.

Data is the built-in gym (model built from ``model.*`` sizes; evaluation = the gold-reward win
rate of the trained policy over the starting one) or preference files tokenized with the
tokenizer of ``model.path``. Both hold out ``eval.num_examples`` preference rows, evaluated every
``eval.every_steps`` steps and at the end (TRL's eval_loss, eval_rewards/accuracies, ...).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from pojax import fs, preflight, sharding
from pojax.config import ConfigError
from pojax.data.pipeline import ArraySource, make_dataset
from pojax.models import ModelConfig, from_pretrained, network_class, save_pretrained
from pojax.models.config import DIFFUSION_MODEL_TYPES
from pojax.models.lora import apply_lora, merge_lora, without_adapters
from pojax.train import guide as guide_lib
from pojax.train import metrics as metrics_lib
from pojax.train import run_spec
from pojax.train.data import curriculum, file_data, gym_data, packed
from pojax.train.evaluate import gold_eval, preference_evaluator
from pojax.train.loop import run_stage
from pojax.train.objectives import (
    mask_id_of,
    preference_objective,
    shared_prompt_width,
    sft_objective,
    with_example_ids,
)
from pojax.train.optim import make_optimizer
from pojax.train.reference_cache import precomputed_reference


def build_model(config, vocab_size: int | None, mesh=None, rules=None):
    """The starting policy, placed on ``mesh``. Parameters are float32 (master weights: a 5e-7
    update vanishes in bfloat16) and ``model.dtype`` is the compute dtype. A checkpoint is read
    straight into its shards; a random model (model.family = llama | mistral | qwen2 | qwen3 |
    llada | dream) is created, then sharded. A random masked-diffusion model (llada, dream) gets
    one extra token, its [MASK]; a random dream has Qwen2's q/k/v bias."""
    m = config.model
    layout = dict(scan_layers=m.scan_layers, remat=m.remat)
    if m.path:
        return from_pretrained(m.path, dtype=jnp.dtype(m.dtype), param_dtype=jnp.float32, mesh=mesh, rules=rules, **layout)
    if vocab_size is None:
        raise ConfigError("model.path", "training on files needs a Hugging Face model directory (model and tokenizer)")
    diffusion = m.family in DIFFUSION_MODEL_TYPES
    mc = ModelConfig(model_type=m.family, vocab_size=vocab_size + diffusion, hidden_size=m.hidden_size,
                     intermediate_size=m.intermediate_size, num_hidden_layers=m.num_layers,
                     num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads,
                     dtype=m.dtype, param_dtype="float32", max_position_embeddings=4096,
                     attention_bias=m.family == "dream", mask_token_id=vocab_size if diffusion else None, **layout)
    model = network_class(mc)(mc, rngs=nnx.Rngs(config.train.seed))
    return model if mesh is None else sharding.shard_module(model, mesh, rules)


def load_tokenizer(config):
    from transformers import AutoTokenizer

    path = config.data.tokenizer or config.model.path
    if not path:
        raise ConfigError("model.path", f"data.format={config.data.format!r} needs a tokenizer: set model.path (a "
                          "Hugging Face model directory) or data.tokenizer")
    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)  # never run a checkpoint's code (nor ask to)


def _copy(model, dtype=None):
    """A copy of ``model``; with ``dtype``, its floating-point parameters cast to it."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    cast = lambda x: x.astype(dtype) if dtype is not None and jnp.issubdtype(x.dtype, jnp.floating) else jnp.copy(x)
    return nnx.merge(graphdef, jax.tree.map(cast, params), jax.tree.map(jnp.copy, rest))


def reference_dtype(config):
    """reference.dtype as a dtype, or None: the policy's parameter dtype."""
    name = config.reference.get("dtype", "")
    if not name:
        return None
    return jnp.dtype(config.model.dtype if name == "compute" else name)


def mesh_and_rules(config):
    """(mesh, logical-axis rules) of the config; a mesh that does not fit the devices is a
    ConfigError naming mesh.<axis> (raised before anything compiles)."""
    return preflight.mesh_and_rules(config)


def lora_settings(config) -> dict:
    return dict(rank=config.reference.lora_rank, alpha=config.reference.lora_alpha)


def check_batch(config) -> int:
    """The micro-batch size: train.batch_size split into train.grad_accum_steps parts."""
    if config.train.batch_size % config.train.grad_accum_steps:
        raise ConfigError("train.grad_accum_steps", f"{config.train.grad_accum_steps} does not divide "
                          f"train.batch_size={config.train.batch_size}")
    return config.train.batch_size // config.train.grad_accum_steps


def sft_stage(model, rows: dict, config, workdir: str, mesh, rules, *, steps: int, learning_rate: float,
              name: str = "sft"):
    """Supervised fine-tuning on the completion tokens of ``rows`` (input_ids, completion_mask):
    token NLL, or LLaDA's masked-diffusion SFT loss for a diffusion run."""
    sft_config = config.copy_and_resolve_references()
    with sft_config.unlocked():
        sft_config.optimizer.learning_rate = learning_rate
    bs, seed = check_batch(config), config.train.seed
    objective, loss_state = sft_objective(config, mask_id_of(model, config))
    model, _, _ = run_stage(
        name, model, objective=objective, loss_state=loss_state,
        dataset=make_dataset(ArraySource(rows), batch_size=bs, seed=seed + 1), steps=steps, tx=make_optimizer(sft_config, steps),
        workdir=workdir, config=config, mesh=mesh, rules=rules, metrics_file=f"metrics_{name}.jsonl")
    return model


def export(model, config, path: str, *, lora: bool = False, source: str | None = None) -> None:
    """The policy as a Hugging Face checkpoint dir (LoRA merged into a copy) that transformers
    and vLLM load and generate with as the starting checkpoint's settings say: config.json with
    its special-token ids and its generation_config.json (both carried in model.config), and the
    tokenizer of file runs, read from ``source`` (default: data.tokenizer or model.path; task=export
    passes the run's spec dir, pojax.train.run_spec). A random gym model declares the gym's BOS
    and PAD ids (its responses have a fixed length: there is no EOS to declare)."""
    from pojax.data import gym as gym_lib

    gym = config.data.format == "gym"
    source = source or config.model.path
    ids = None
    if gym and not config.model.path:  # null EOS: else transformers' Llama default (2) would end on the gym's SEP
        ids = {"bos_token_id": gym_lib.BOS, "eos_token_id": None, "pad_token_id": gym_lib.PAD}
    with fs.staged_dir(path) as local:  # a gs:// path: written locally, then uploaded
        save_pretrained(merge_lora(_copy(model)) if lora else model, local, token_ids=ids)
        if not gym:
            from transformers import AutoTokenizer

            tokenizer = (load_tokenizer(config) if source == config.model.path
                         else AutoTokenizer.from_pretrained(source, trust_remote_code=False))
            tokenizer.save_pretrained(local)


def write_plots(workdir: str) -> None:
    plots = os.path.join(workdir, "plots")
    metrics_lib.write_plots(metrics_lib.MetricsWriter(workdir).read(), plots)
    for stage in ("sft", "pretrain"):
        rows = metrics_lib.MetricsWriter(workdir, f"metrics_{stage}.jsonl").read()
        if rows:
            key = f"{stage}_loss"
            metrics_lib.write_plots([{"step": r["step"], key: r["loss"]} for r in rows], plots, extra={key: (key,)})


def packed_dataset(rows: dict, config, rows_per_batch: int, seed: int):
    """(grain dataset of packed micro-batches of ``rows_per_batch`` rows per host, packing
    efficiency). Batches are shuffled whole; each host takes its own, and its pair_row indices
    are offset to its rows of the global batch."""
    stacked, efficiency = packed(rows, config, rows_per_batch)
    hosts, host = jax.process_count(), jax.process_index()
    logging.info("packing: %d batches of %d rows x %d tokens, efficiency %.3f", len(stacked["input_ids"]),
                 rows_per_batch, stacked["input_ids"].shape[-1], efficiency)

    def one_batch(b):  # [1, ...] per host → [...], with global row indices
        b = {k: v[0] for k, v in b.items()}
        b["pair_row"] = b["pair_row"] + host * rows_per_batch
        return b

    return make_dataset(ArraySource(stacked), batch_size=hosts, seed=seed).map(one_batch), efficiency


def run_train(config, workdir: str | None) -> dict:
    """SFT stage (train.sft_steps > 0) → preference optimization with evaluation every
    eval.every_steps → final evaluation, export, plots and results.json."""
    workdir = preflight.absolute_workdir(workdir)
    fs.makedirs(workdir)
    name = config.loss.name
    tgdpo = isinstance(name, str) and "tgdpo" in [p.strip() for p in name.split("+")]
    if tgdpo:
        guide_lib.guide_path(config)  # fail before any training
    gym = config.data.format == "gym"
    data = gym_data(config) if gym else file_data(config, load_tokenizer(config))
    mesh, rules = mesh_and_rules(config)
    model = build_model(config, data.vocab_size, mesh, rules)
    run_spec.save(workdir, model.config, config)  # what task=export needs besides the checkpoints
    seed, bs = config.train.seed, check_batch(config)
    if data.sft is not None:
        model = sft_stage(model, data.sft, config, workdir, mesh, rules, steps=config.train.sft_steps,
                          learning_rate=config.train.sft_learning_rate)

    rows, held, mode = data.preference, data.held_out, config.reference.mode
    mask_id = mask_id_of(model, config)
    if mask_id is not None:  # stable ids key each example's fixed ELBO draws
        rows = with_example_ids(rows)
        held = None if held is None else with_example_ids(held, offset=len(next(iter(rows.values()))))
    trainable, reference, before, cache_reused = nnx.Param, None, None, None
    ref_sync = None
    if mode == "copy":
        ref_dtype = reference_dtype(config)
        reference = before = _copy(model, ref_dtype)
        if config.reference.sync_ref_model:  # TR-DPO moves the reference
            ref_sync = (config.reference.ref_model_mixup_alpha, config.reference.ref_model_sync_steps)
        if config.reference.sync_ref_model or ref_dtype is not None:  # the gym's gold eval compares to the start
            before = _copy(model) if gym else None
    elif mode == "precomputed":  # one pass of the starting policy (or reference.cache_dir), then only values
        before = _copy(model)
        splits = {"train": rows} if held is None else {"train": rows, "held_out": held}
        values, cache_reused = precomputed_reference(before, splits, config, mask_id=mask_id, batch_size=bs)
        rows = dict(rows, **values["train"])
        held = None if held is None else dict(held, **values["held_out"])
        if not gym:
            before = None
    elif mode == "lora_base":  # the reference is the policy with its adapters off: no second copy
        apply_lora(model, **lora_settings(config), rngs=nnx.Rngs(seed + 3))
        trainable = nnx.All(nnx.LoRAParam)
    else:
        before = _copy(model) if gym else None
    if tgdpo:  # the guide's token rewards against the reference (the starting policy), once
        splits = guide_lib.with_guide_rewards(
            config, reference if reference is not None else without_adapters(model), model.config.vocab_size,
            {"train": rows, "held_out": held}, batch_size=bs, mesh=mesh, rules=rules)
        rows, held = splits["train"], splits["held_out"]
    width = shared_prompt_width(config, rows, held)
    if width is not None:
        logging.info("likelihood.shared_prompt: each prompt computed once, completion window %d tokens", width)
    objective, loss_state = preference_objective(config, mask_id=mask_id, lora_base=mode == "lora_base",
                                                 completion_width=width)
    evaluator = preference_evaluator(config, lora_base=mode == "lora_base", mask_id=mask_id, completion_width=width)

    def eval_fn(policy, loss_state):
        return evaluator(policy, reference, held, loss_state)

    results = {"loss": name, "steps": config.train.max_steps, "sft_steps": config.train.sft_steps,
               **data.dropped_rows}  # rows whose prompt alone fills data.max_length (dropped as TRL drops them)
    if cache_reused is not None:  # reference.cache_dir is set
        results["reference_cache_reused"] = cache_reused
    if config.data.packing:
        dataset, results["packing_efficiency"] = packed_dataset(rows, config, bs, seed + 4)
    elif name == "curry_dpo":  # the curriculum is the order: easy → hard, read without shuffling
        dataset = make_dataset(ArraySource(curriculum(rows, seed + 4)), batch_size=bs, seed=seed + 4, shuffle=False)
    else:
        dataset = make_dataset(ArraySource(rows), batch_size=bs, seed=seed + 4)
    model, state, last_eval = run_stage(
        "train", model, objective=objective, dataset=dataset,
        steps=config.train.max_steps, tx=make_optimizer(config, config.train.max_steps), workdir=workdir,
        config=config, mesh=mesh, rules=rules, trainable=trainable, reference=reference, loss_state=loss_state,
        eval_fn=None if held is None else eval_fn, ref_sync=ref_sync)

    if config.train.export_final:
        export(model, config, os.path.join(workdir, "final"), lora=mode == "lora_base")
    if held is not None:  # the last step's evaluation, unless this call resumed a finished stage
        results.update(last_eval or eval_fn(model, state.loss_state))
    if gym:
        start = without_adapters(model) if mode == "lora_base" else before
        results.update(gold_eval(data.gym, model, start, config))
    metrics_lib.write_results(workdir, results)
    if config.logging.plots:
        write_plots(workdir)
    logging.info("results: %s", results)
    return results
