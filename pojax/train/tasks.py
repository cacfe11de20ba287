"""The ``sft``, ``eval`` and ``export`` tasks (``train`` is pojax.train.run.run_train).

  sft     fine-tune on the gym's SFT set or on the chosen / desirable completions of data.path
          for train.max_steps steps at optimizer.learning_rate; exports workdir/final.
  eval    the policy of model.path against the reference of reference.path on every row of
          data.path (TRL's eval_* metrics) or, on the gym, the gold-reward win rate.
  export  the latest (or best) checkpoint of a --workdir → Hugging Face safetensors.
Each writes results.json.
"""
from __future__ import annotations

import os

import jax
from absl import logging
from flax import nnx

from pojax import sharding
from pojax.config import ConfigError
from pojax.data import gym as gym_lib
from pojax.losses import BCOState, needs_reference
from pojax.models import from_pretrained
from pojax.models.lora import apply_lora
from pojax.train import metrics as metrics_lib
from pojax.train.checkpoint import Checkpoints
from pojax.train.data import eval_data, gym_data, sft_data
from pojax.train.evaluate import gold_eval, preference_eval
from pojax.train.optim import make_optimizer
from pojax.train.run import build_model, export, load_tokenizer, lora_settings, sft_stage, write_plots
from pojax.train.step import init_state


def _workdir(workdir: str | None) -> str:
    workdir = workdir or os.path.join("workdirs", "run")
    os.makedirs(workdir, exist_ok=True)
    return workdir


def run_sft(config, workdir: str | None) -> dict:
    workdir = _workdir(workdir)
    gym = config.data.format == "gym"
    data = sft_data(config, None if gym else load_tokenizer(config))
    mesh, rules = sharding.mesh_from_config(config), sharding.rules_from_config(config)
    model = build_model(config, data.vocab_size, mesh, rules)
    start = build_model(config, data.vocab_size, mesh, rules) if gym else None  # the untrained policy
    model = sft_stage(model, data.sft, config, workdir, mesh, rules, steps=config.train.max_steps,
                      learning_rate=config.optimizer.learning_rate)
    if config.train.export_final:
        export(model, config, os.path.join(workdir, "final"))
    rows = metrics_lib.MetricsWriter(workdir, "metrics_sft.jsonl").read()
    results = {"task": "sft", "steps": config.train.max_steps, "sft_examples": len(data.sft["input_ids"]),
               "final_loss": rows[-1]["loss"] if rows else None}
    if gym:
        results.update(gold_eval(data.gym, model, start, config))
    metrics_lib.write_results(workdir, results)
    if config.logging.plots:
        write_plots(workdir)
    return results


def run_eval(config, workdir: str | None) -> dict:
    workdir = _workdir(workdir)
    if not config.model.path:
        raise ConfigError("model.path", "task 'eval' evaluates a Hugging Face checkpoint dir (e.g. <workdir>/final)")
    mesh, rules = sharding.mesh_from_config(config), sharding.rules_from_config(config)
    policy = build_model(config, None, mesh, rules)
    reference = None
    if config.reference.path:
        reference = from_pretrained(config.reference.path, dtype=policy.config.dtype, mesh=mesh, rules=rules)
    elif config.reference.mode != "none" and needs_reference(config.loss.name):
        raise ConfigError("reference.path", f"loss {config.loss.name!r} needs a reference model to evaluate "
                          "(the starting policy's checkpoint dir), or a reference-free loss with reference.mode=none")
    gym = config.data.format == "gym"
    results = {"task": "eval", "loss": config.loss.name}
    if gym:
        data = gym_data(config)
        if reference is not None:
            results.update(gold_eval(data.gym, policy, reference, config))
    else:
        data = eval_data(config, load_tokenizer(config))
    if data.held_out is not None and (reference is not None or not needs_reference(config.loss.name)):
        loss_state = BCOState() if config.loss.name == "bco" else None
        results.update(preference_eval(policy, reference, data.held_out, config, loss_state=loss_state))
    metrics_lib.write_results(workdir, results)
    return results


def run_export(config, workdir: str | None) -> dict:
    if not workdir:
        raise ConfigError("export", "task 'export' needs --workdir (the run whose checkpoint to export)")
    stage = config.export.stage or ("train" if os.path.isdir(os.path.join(workdir, "checkpoints", "train")) else "sft")
    best = config.export.checkpoint == "best"
    directory = os.path.join(workdir, "checkpoints", stage + ("_best" if best else ""))
    ckpt = Checkpoints(directory, keep=config.checkpoint.keep)
    step = ckpt.best_step() if best else ckpt.latest_step()
    if step is None:
        ckpt.close()
        raise ConfigError("export.checkpoint", f"no {config.export.checkpoint} checkpoint in {directory}")
    vocab = gym_lib.from_config(config).vocab_size if config.data.format == "gym" else None
    mesh, rules = sharding.mesh_from_config(config), sharding.rules_from_config(config)
    model = build_model(config, vocab, mesh, rules)
    lora = stage == "train" and config.reference.mode == "lora_base"
    trainable = nnx.Param
    if lora:
        apply_lora(model, **lora_settings(config), rngs=nnx.Rngs(0))
        trainable = nnx.All(nnx.LoRAParam)
    _, params, _ = nnx.split(model, trainable, ...)
    if best:  # best checkpoints hold the parameters only
        restored, _ = ckpt.restore(params, step)
    else:
        loss_state = BCOState() if stage == "train" and config.loss.name == "bco" else None
        # the optimizer state's structure does not depend on the schedule's length or peak
        restored, _ = ckpt.restore(init_state(params, make_optimizer(config, config.train.max_steps), loss_state), step)
        restored = restored.params
    ckpt.close()
    nnx.update(model, jax.tree.map(lambda x: x, restored))
    path = config.export.path or os.path.join(workdir, "final")
    export(model, config, path, lora=lora)
    results = {"task": "export", "stage": stage, "checkpoint": config.export.checkpoint, "step": int(step), "path": path}
    logging.info("exported %s", results)
    return results
