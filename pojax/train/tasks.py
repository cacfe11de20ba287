"""The ``sft``, ``eval`` and ``export`` tasks (``train`` is pojax.train.run.run_train).

  sft     fine-tune on the gym's SFT set or on the chosen / desirable completions of data.path
          for train.max_steps steps at optimizer.learning_rate; exports workdir/final.
  eval    the policy of model.path against the reference of reference.path on the rows of
          data.path that training held out (eval.split=all: every row; TRL's eval_* metrics) or,
          on the gym, the gold-reward win rate.
  export  the latest (or best) checkpoint of a --workdir → Hugging Face safetensors; the run's
          settings come from the workdir (pojax.train.run_spec), nothing else is needed.
Each writes results.json.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from flax import nnx

from pojax import fs, preflight, sharding
from pojax.config import ConfigError
from pojax.data import gym as gym_lib
from pojax.losses import needs_reference
from pojax.objectives import initial_loss_state
from pojax.models import from_pretrained, network_class
from pojax.models.lora import apply_lora
from pojax.train import metrics as metrics_lib
from pojax.train import run_spec
from pojax.train.checkpoint import Checkpoints
from pojax.train.data import eval_data, gym_data, pretrain_data, sft_data
from pojax.train.evaluate import gold_eval, preference_eval
from pojax.train.optim import make_optimizer
from pojax.train.run import build_model, export, load_tokenizer, lora_settings, mesh_and_rules, sft_stage, write_plots
from pojax.train.step import init_state


def _workdir(workdir: str | None) -> str:
    workdir = preflight.absolute_workdir(workdir)
    fs.makedirs(workdir)
    return workdir


def run_sft(config, workdir: str | None, *, task: str = "sft") -> dict:
    """SFT (``task`` = "sft") or language-model pretraining (``task`` = "pretrain": every token
    of the gym's sequences or of data.path's ``text`` rows), token NLL or LLaDA's masked-diffusion
    loss; exports workdir/final and, on the gym, reports the gold reward against the untrained
    model."""
    workdir = _workdir(workdir)
    gym = config.data.format == "gym"
    tokenizer = None if gym else load_tokenizer(config)
    data = pretrain_data(config, tokenizer) if task == "pretrain" else sft_data(config, tokenizer)
    mesh, rules = mesh_and_rules(config)
    model = build_model(config, data.vocab_size, mesh, rules)
    run_spec.save(workdir, model.config, config)  # what task=export needs besides the checkpoints
    start = build_model(config, data.vocab_size, mesh, rules) if gym else None  # the untrained policy
    model = sft_stage(model, data.sft, config, workdir, mesh, rules, steps=config.train.max_steps,
                      learning_rate=config.optimizer.learning_rate, name=task)
    if config.train.export_final:
        export(model, config, os.path.join(workdir, "final"))
    rows = metrics_lib.MetricsWriter(workdir, f"metrics_{task}.jsonl").read()
    results = {"task": task, "steps": config.train.max_steps, f"{task}_examples": len(data.sft["input_ids"]),
               "final_loss": rows[-1]["loss"] if rows else None, **data.dropped_rows}
    if gym:
        results.update(gold_eval(data.gym, model, start, config))
    metrics_lib.write_results(workdir, results)
    if config.logging.plots:
        write_plots(workdir)
    return results


def run_pretrain(config, workdir: str | None) -> dict:
    return run_sft(config, workdir, task="pretrain")


def _prompts(path: str, limit: int) -> list:
    """The ``prompt`` column (a string or a message list) of a JSONL / JSON / parquet file."""
    from pojax.data.formats import DataError, read_rows

    prompts = []
    for file, i, row in read_rows(path):
        if isinstance(row, DataError):
            raise row
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), (str, list)) or not row["prompt"]:
            raise DataError(file, i, "prompt", "missing (a string or a list of messages)")
        prompts.append(row["prompt"])
    return prompts[:limit] if limit > 0 else prompts


def _instruction(prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt if m["role"] == "user")


def _diffusion_sampling(config, task: str | None = None):
    """(generation length, DiffusionSampling) of a masked-diffusion model: free generation (win
    rates, JSONL: eval.max_new_tokens, eval.diffusion_steps, eval.diffusion_block_length) or a
    task's own settings (eval.<task>_gen_length, _steps, _block_length); a ConfigError names the
    key whose value does not fit."""
    from pojax.eval.generation import DiffusionSampling
    from pojax.sampling.diffusion import REMASKING

    e = config.eval
    if task is None:
        keys = ("max_new_tokens", "diffusion_steps", "diffusion_block_length")
    else:
        keys = (f"{task}_gen_length", f"{task}_steps", f"{task}_block_length")
    gen, steps, block = (e[k] for k in keys)
    if e.remasking not in REMASKING:
        raise ConfigError("eval.remasking", f"{e.remasking!r} is not one of {', '.join(REMASKING)}")
    if e.cfg_scale < 0:
        raise ConfigError("eval.cfg_scale", f"must be >= 0, got {e.cfg_scale}")
    if gen < 1:
        raise ConfigError(f"eval.{keys[0]}", f"must be >= 1, got {gen}")
    if block < 0 or gen % (block or gen):
        raise ConfigError(f"eval.{keys[2]}", f"{block} must divide eval.{keys[0]}={gen} (0 = one block)")
    num_blocks = gen // (block or gen)
    if steps < 0 or (steps or gen) % num_blocks:
        raise ConfigError(f"eval.{keys[1]}", f"{steps} must be a multiple of the number of blocks {num_blocks} "
                          f"(eval.{keys[0]} / eval.{keys[2]}; 0 = one step per token)")
    return gen, DiffusionSampling(steps=steps, block_length=block, cfg_scale=float(e.cfg_scale), remasking=e.remasking)


def _batch_size(config) -> int:
    return max(config.train.batch_size // config.train.grad_accum_steps, 1)


def win_rate_eval(policy, reference, tokenizer, config) -> dict:
    """Responses of the policy and of the reference to eval.prompts_path (each model's own sampler:
    KV-cache decoding, or LLaDA's reverse process with eval.diffusion_* for a masked-diffusion
    LM), judged pairwise by the local causal LM eval.judge_path (win_rate, its 95% bootstrap CI,
    lc_win_rate) and / or scored by the sequence-classification reward model
    eval.reward_model_path (rm_win_rate, rm_win_rate_ci, rm_lc_win_rate)."""
    from transformers import AutoTokenizer

    from pojax.eval import win_rates
    from pojax.eval.generation import diffusion_mask_id, generate_texts
    from pojax.eval.judge import DEFAULT_TEMPLATE, judge_preferences

    e = config.eval
    if reference is None:
        raise ConfigError("reference.path", "win rates compare the policy with a reference: set reference.path")
    if not (e.judge_path or e.reward_model_path):
        raise ConfigError("eval.judge_path", "win rates need a judge: a Hugging Face causal-LM dir (or a "
                          "sequence-classification reward model in eval.reward_model_path)")
    prompts = _prompts(e.prompts_path, e.num_examples)
    _, sampling = _diffusion_sampling(config)
    kw = dict(max_new_tokens=e.max_new_tokens, chat_template=config.data.chat_template, temperature=e.temperature,
              batch_size=_batch_size(config), seed=config.train.seed, diffusion_sampling=sampling)
    (out_a, len_a), (out_b, len_b) = (generate_texts(m, tokenizer, prompts, **kw) for m in (policy, reference))
    results = {}
    if e.judge_path:
        judge = from_pretrained(e.judge_path, dtype=policy.config.dtype)
        if diffusion_mask_id(judge) is not None:
            raise ConfigError("eval.judge_path", f"{e.judge_path} is a masked-diffusion LM; the judge is read by its "
                              "next-token logits of '1' / '2': use a causal LM")
        judge_tok = AutoTokenizer.from_pretrained(e.judge_path, trust_remote_code=False)
        pref = judge_preferences(judge, judge_tok, [_instruction(p) for p in prompts], out_a, out_b,
                                 template=e.judge_template or DEFAULT_TEMPLATE, batch_size=kw["batch_size"])
        results.update(win_rates(pref, len_a, len_b, seed=config.train.seed))
    if e.reward_model_path:
        results.update(_reward_model_win_rates(prompts, out_a, out_b, len_a, len_b, config,
                                               dtype=policy.config.dtype))
    return results


def _reward_model_win_rates(prompts, out_a, out_b, len_a, len_b, config, *, dtype) -> dict:
    from transformers import AutoTokenizer

    from pojax.eval.rewards import reward_win_rates
    from pojax.models import CheckpointError, reward

    path = config.eval.reward_model_path
    try:
        rm = reward.from_pretrained(path, dtype=dtype)
    except CheckpointError as err:
        raise ConfigError("eval.reward_model_path", str(err)) from None
    try:
        rm_tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise ConfigError("eval.reward_model_path", f"{path}: no tokenizer the reward model can read ({err})") from None
    return reward_win_rates(rm, rm_tok, prompts, out_a, out_b, len_a, len_b, batch_size=_batch_size(config),
                            seed=config.train.seed)


def diagnostics_eval(policy, reference, rows: dict, tokenizer, config) -> dict:
    """eval.diagnostics on held-out pairs (pojax.eval.diagnostics): the mean and median CHES and
    length-normalized CHES (arXiv 2410.08847), and the implicit DPO reward's accuracy (with
    loss.beta) against the reward model eval.reward_model_path's (arXiv 2409.03650) when both are
    there; the reward model must share the policy's tokenizer (it reads the same token rows)."""
    from pojax.eval import diagnostics as diag
    from pojax.models import CheckpointError, reward

    bs = _batch_size(config)
    scores = diag.ches_dataset(policy, rows, batch_size=bs)
    out = {f"{k}_{stat}": float(fn(v)) for k, v in scores.items() for stat, fn in (("mean", np.mean), ("median", np.median))}
    implicit = None
    if reference is not None or "ref_chosen" in rows:
        implicit = diag.implicit_rewards(policy, reference, rows, beta=float(config.loss.beta), batch_size=bs)
        out["implicit_reward_accuracy"] = diag.preference_accuracy(*implicit)
    path = config.eval.reward_model_path
    if path:
        try:
            rm = reward.from_pretrained(path, dtype=policy.config.dtype)
        except CheckpointError as err:
            raise ConfigError("eval.reward_model_path", str(err)) from None
        if tokenizer is not None:
            from transformers import AutoTokenizer

            if AutoTokenizer.from_pretrained(path, trust_remote_code=False).get_vocab() != tokenizer.get_vocab():
                raise ConfigError("eval.reward_model_path", f"{path}: eval.diagnostics scores the policy's token rows; "
                                  "the reward model's tokenizer differs from the policy's")
        explicit = diag.reward_model_rewards(rm, rows, batch_size=bs)
        out["explicit_reward_accuracy"] = diag.preference_accuracy(*explicit)
        if implicit is not None:
            out.update(diag.generalization_report(implicit, explicit))
    return out


def _markdown(results: dict) -> str:
    rows = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in results.items())
    return "| metric | value |\n|---|---|\n" + rows + "\n"


EVAL_SPLITS = ("held_out", "all")  # eval.split: which rows of data.path task=eval scores


def run_eval(config, workdir: str | None) -> dict:
    """Whatever the config asks for: preference metrics on data.path (eval.split: the rows a
    training run held out, or all of them; results.json says which in eval_split, eval_source,
    eval_source_rows) or the gym's held-out pairs and gold-reward win rate, judged and / or
    reward-model win rates on eval.prompts_path, task accuracy on eval.gsm8k_path / mmlu_path /
    jsonl_path (eval.num_fewshot solved examples first). A masked-diffusion policy (llada)
    generates with LLaDA's reverse process: eval.gsm8k_* and eval.mmlu_* settings for those tasks
    (MMLU generative, as it has no next-token distribution), eval.diffusion_* otherwise. Writes
    results.json and results.md."""
    from pojax.eval.generation import diffusion_mask_id
    from pojax.eval.tasks import FewShotError, run_task

    workdir = _workdir(workdir)
    e = config.eval
    if not config.model.path:
        raise ConfigError("model.path", "task 'eval' evaluates a Hugging Face checkpoint dir (e.g. <workdir>/final)")
    gym = config.data.format == "gym"
    preference = gym or bool(config.data.path)
    tasks = {k: e[f"{k}_path"] for k in ("gsm8k", "mmlu", "jsonl") if e[f"{k}_path"]}
    if not (preference or e.prompts_path or tasks or e.lm_eval_tasks):
        raise ConfigError("eval", "nothing to evaluate: set data.path (preference metrics), eval.prompts_path "
                          "(judged win rates), eval.gsm8k_path, eval.mmlu_path, eval.jsonl_path or eval.lm_eval_tasks")
    diagnostics = bool(e.diagnostics)
    if e.reward_model_path and not (e.prompts_path or diagnostics):
        raise ConfigError("eval.prompts_path", "eval.reward_model_path scores responses to eval.prompts_path: set it")
    if e.num_fewshot < 0:
        raise ConfigError("eval.num_fewshot", f"must be >= 0, got {e.num_fewshot}")
    if e.split not in EVAL_SPLITS:
        raise ConfigError("eval.split", f"{e.split!r} is not one of {', '.join(EVAL_SPLITS)}")
    mesh, rules = mesh_and_rules(config)
    policy = build_model(config, None, mesh, rules)
    diffusion = diffusion_mask_id(policy) is not None
    if diffusion:  # settings checked before any generation
        for task in (None, *(k for k in tasks if k in ("gsm8k", "mmlu"))):
            _diffusion_sampling(config, task)
    reference = None
    if config.reference.path:
        reference = from_pretrained(config.reference.path, dtype=policy.config.dtype, mesh=mesh, rules=rules)
    tokenizer = None if gym and not (e.prompts_path or tasks or e.lm_eval_tasks) else load_tokenizer(config)
    results = {"task": "eval", "loss": config.loss.name}
    if preference:
        if reference is None and config.reference.mode != "none" and needs_reference(config.loss.name):
            raise ConfigError("reference.path", f"loss {config.loss.name!r} needs a reference model to evaluate "
                              "(the starting policy's checkpoint dir), or a reference-free loss with reference.mode=none")
        if gym:
            data = gym_data(config)
            if reference is not None:
                results.update(gold_eval(data.gym, policy, reference, config))
        else:
            data, split_info = eval_data(config, tokenizer)
            results.update(split_info, **data.dropped_rows)
        if data.held_out is not None:
            loss_state = initial_loss_state(config.loss.name)
            results.update(preference_eval(policy, reference, data.held_out, config, loss_state=loss_state))
            if "eval_rewards/accuracies" in results:
                results["reward_accuracy"] = results["eval_rewards/accuracies"]
        if diagnostics:
            if diffusion or data.held_out is None or "chosen_ids" not in data.held_out:
                raise ConfigError("eval.diagnostics", "needs a causal-LM policy and paired held-out rows (data.path "
                                  "or the gym with a pairwise loss)")
            results.update(diagnostics_eval(policy, reference, data.held_out, tokenizer, config))
    if e.prompts_path:
        results.update(win_rate_eval(policy, reference, tokenizer, config))
    for kind, path in tasks.items():
        gen, sampling = e.max_new_tokens, None
        if diffusion:
            gen, sampling = _diffusion_sampling(config, kind if kind in ("gsm8k", "mmlu") else None)
        try:
            results.update(run_task(kind, path, policy, tokenizer, max_new_tokens=gen, batch_size=_batch_size(config),
                                    chat_template=config.data.chat_template, diffusion_sampling=sampling,
                                    num_fewshot=e.num_fewshot if kind != "jsonl" else 0,
                                    fewshot_path=e.get(f"{kind}_fewshot_path", "")))
        except FewShotError as err:
            raise ConfigError("eval.num_fewshot", str(err)) from None
    if e.lm_eval_tasks:
        results.update(lm_eval_tasks(policy, tokenizer, config, workdir, mesh))
    metrics_lib.write_results(workdir, results)
    fs.write_text(os.path.join(workdir, "results.md"), _markdown(results))
    return results


def lm_eval_tasks(policy, tokenizer, config, workdir: str, mesh) -> dict:
    """lm-evaluation-harness on eval.lm_eval_tasks (pojax.eval.lm_eval): its metrics as
    lm_eval/<task>/<metric>[/<filter>], its whole results dict in workdir/lm_eval_results.json.
    An unknown task is lm-eval's own error, as a ConfigError naming eval.lm_eval_tasks."""
    import json
    import math

    from pojax.eval import lm_eval as lm_eval_lib
    from pojax.eval.generation import DiffusionSampling, diffusion_mask_id

    e = config.eval
    if not isinstance(e.lm_eval_mc_num, int) or e.lm_eval_mc_num < 1:
        raise ConfigError("eval.lm_eval_mc_num", f"must be an integer >= 1, got {e.lm_eval_mc_num!r}")
    gen, sampling, gen_length = e.max_new_tokens, DiffusionSampling(), 0
    if diffusion_mask_id(policy) is not None:  # every generation eval.max_new_tokens long, as checked here
        gen, sampling = _diffusion_sampling(config, None)
        gen_length = gen
    lm = lm_eval_lib.PojaxLM(model=policy, tokenizer=tokenizer, batch_size=_batch_size(config),
                             max_length=e.lm_eval_max_length or None, max_gen_toks=gen,
                             chunk_size=config.likelihood.chunk_size, seed=config.train.seed, mc_num=e.lm_eval_mc_num,
                             mc_batch_size=math.gcd(e.lm_eval_mc_num, 32), cfg=sampling.cfg_scale,
                             gen_length=gen_length, steps=sampling.steps, block_length=sampling.block_length,
                             remasking=sampling.remasking, mesh=mesh)
    try:
        results = lm_eval_lib.run_tasks(lm, e.lm_eval_tasks, include_path=e.lm_eval_include_path,
                                        include_defaults=e.lm_eval_include_defaults,
                                        num_fewshot=None if e.lm_eval_num_fewshot < 0 else e.lm_eval_num_fewshot,
                                        limit=e.lm_eval_limit or None,
                                        apply_chat_template=e.lm_eval_apply_chat_template, seed=config.train.seed)
    except KeyError as err:  # lm-eval's "Spec 'x' is not a registered task/group/tag name ..."
        raise ConfigError("eval.lm_eval_tasks", f"lm-eval: {err.args[0] if err.args else err}") from None
    fs.write_text(os.path.join(workdir, "lm_eval_results.json"), json.dumps(results, indent=2, default=str))
    return lm_eval_lib.flat_metrics(results)


def run_export(config, workdir: str | None) -> dict:
    """The latest (or best, export.checkpoint) checkpoint of ``workdir``'s stage export.stage
    as a Hugging Face dir (export.path, default workdir/final). The network, loss, reference and
    optimizer settings are the run's own, read from its spec (pojax.train.run_spec), so nothing
    but the workdir is needed; a workdir without one (an older pojax) is rebuilt from this
    config's model.* instead."""
    if not workdir:
        raise ConfigError("export", "task 'export' needs --workdir (the run whose checkpoint to export)")
    with run_spec.load(workdir, config) as spec:
        if spec is None and config.data.format != "gym" and not config.model.path:
            raise ConfigError("model.path", f"{run_spec.spec_dir(workdir)} is missing (training runs write it at "
                              "start-up), so the network of the checkpoints is unknown: set model.path to the run's "
                              "starting Hugging Face checkpoint dir")
        return _export(spec.config if spec is not None else config, workdir, spec)


def _skeleton(config, spec, mesh, rules):
    """The network whose parameters the checkpoints hold (random values, to be restored)."""
    if spec is not None:
        mc = spec.model_config
        model = network_class(mc)(mc, rngs=nnx.Rngs(0))
        return model if mesh is None else sharding.shard_module(model, mesh, rules)
    vocab = gym_lib.from_config(config).vocab_size if config.data.format == "gym" else None
    return build_model(config, vocab, mesh, rules)


def _export(config, workdir: str, spec) -> dict:
    stage = config.export.stage or ("train" if fs.isdir(os.path.join(workdir, "checkpoints", "train")) else "sft")
    best = config.export.checkpoint == "best"
    directory = os.path.join(workdir, "checkpoints", stage + ("_best" if best else ""))
    ckpt = Checkpoints(directory, keep=config.checkpoint.keep)
    step = ckpt.best_step() if best else ckpt.latest_step()
    if step is None:
        ckpt.close()
        raise ConfigError("export.checkpoint", f"no {config.export.checkpoint} checkpoint in {directory}")
    mesh, rules = mesh_and_rules(config)
    model = _skeleton(config, spec, mesh, rules)
    lora = stage == "train" and config.reference.mode == "lora_base"
    trainable = nnx.Param
    if lora:
        apply_lora(model, **lora_settings(config), rngs=nnx.Rngs(0))
        trainable = nnx.All(nnx.LoRAParam)
    _, params, _ = nnx.split(model, trainable, ...)
    if best:  # best checkpoints hold the parameters only
        restored, _ = ckpt.restore(params, step)
    else:
        loss_state = initial_loss_state(config.loss.name) if stage == "train" else None
        # the optimizer state's structure does not depend on the schedule's length or peak
        restored, _ = ckpt.restore(init_state(params, make_optimizer(config, config.train.max_steps), loss_state), step)
        restored = restored.params
    ckpt.close()
    nnx.update(model, jax.tree.map(lambda x: x, restored))
    path = config.export.path or os.path.join(workdir, "final")
    export(model, config, path, lora=lora, source=spec.path if spec is not None and config.data.format != "gym" else None)
    results = {"task": "export", "stage": stage, "checkpoint": config.export.checkpoint, "step": int(step), "path": path}
    logging.info("exported %s", results)
    return results
