"""A TRL YAML, the file ``trl dpo --config x.yaml`` reads, as a pojax run config.

    python -m pojax.main --config=configs/from_trl.py:x.yaml [--workdir=DIR] [--config.<key>=...]

The YAML holds the fields of TRL 1.16's trainer config (``DPOConfig``, ``KTOConfig``,
``SFTConfig``, and the experimental ``CPOConfig`` / ``ORPOConfig``, all on transformers'
``TrainingArguments``) and of its script's ``ScriptArguments``, ``ModelConfig`` and
``DatasetMixtureConfig``. The optional key ``trainer: dpo | kto | sft | cpo | orpo`` (default dpo)
picks the config class, as the subcommand of ``trl dpo`` / ``trl kto`` / ``trl sft`` does (TRL's
parser ignores a key it does not know, so the same file still runs under TRL). An ``sft`` YAML
runs ``task=sft`` on ``data.format=sft`` rows (pojax.data.sft: TRL's SFT tokenization).

Every key of the YAML is one of three things, decided by name (``KEYS``):
  mapped     to the pojax key of the same meaning, with TRL's value (``to_config``);
  no effect  a key whose value changes nothing pojax computes (a tracker's run name, a
             process count, an attention kernel), accepted only with the values where that holds;
  refused    ``ConfigError`` naming the key and saying what pojax has instead, if anything.
A key in no table is refused as unknown. Keys the YAML leaves out take TRL 1.16's defaults
(``DEFAULTS``: e.g. learning_rate 1e-6, a linear schedule, bf16, gradient checkpointing,
seed 42, max_length 1024), not those of pojax's recipes.
"""
from __future__ import annotations

import math
import os

import ml_collections

from pojax import losses
from pojax.config import ConfigError, base_config

TRAINERS = ("dpo", "kto", "sft", "cpo", "orpo")

# TRL 1.16 / transformers 5 defaults of every key this module reads (tests/test_trl_config.py
# checks them against the dataclasses). TrainingArguments' as TRL's _BaseConfig overrides them
# (logging_steps 10, gradient_checkpointing True, bf16 = not fp16), with each trainer's learning_rate.
_COMMON = {
    "learning_rate": 1e-6, "lr_scheduler_type": "linear", "warmup_steps": 0, "weight_decay": 0.0,
    "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8, "max_grad_norm": 1.0, "optim": "adamw_torch_fused",
    "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "max_steps": -1, "num_train_epochs": 3.0,
    "seed": 42, "logging_steps": 10, "logging_strategy": "steps", "eval_strategy": "no", "eval_steps": None,
    "save_strategy": "steps", "save_steps": 500, "save_total_limit": None, "metric_for_best_model": None,
    "greater_is_better": None, "bf16": True, "fp16": False, "gradient_checkpointing": True, "output_dir": "trainer_output",
    # ScriptArguments, ModelConfig, DatasetMixtureConfig
    "dataset_name": None, "dataset_config": None, "dataset_train_split": "train", "dataset_test_split": "test",
    "datasets": [], "model_name_or_path": None, "dtype": "float32", "use_peft": False,
    "max_length": 1024,
}
DEFAULTS = {
    "dpo": dict(_COMMON, loss_type=["sigmoid"], loss_weights=None, beta=0.1, label_smoothing=0.0,
                f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5, ld_alpha=None, use_weighting=False,
                discopop_tau=0.05, truncation_mode="keep_start", padding_free=False, pad_to_multiple_of=None,
                precompute_ref_log_probs=False, sync_ref_model=False, ref_model_mixup_alpha=0.6,
                ref_model_sync_steps=512),
    "kto": dict(_COMMON, loss_type="kto", beta=0.1, desirable_weight=1.0, undesirable_weight=1.0,
                pad_to_multiple_of=None, precompute_ref_log_probs=False, sync_ref_model=False,
                ref_model_mixup_alpha=0.6, ref_model_sync_steps=512),
    "cpo": dict(_COMMON, loss_type="sigmoid", beta=0.1, label_smoothing=0.0, cpo_alpha=1.0, simpo_gamma=0.5,
                alpha=0.0, max_completion_length=None),
    "orpo": dict(_COMMON, beta=0.1, max_completion_length=None),
    "sft": dict(_COMMON, learning_rate=2e-5, truncation_mode="keep_start", padding_free=False, packing=False,
                completion_only_loss=None, assistant_only_loss=False, loss_type="nll", dataset_text_field="text",
                pad_to_multiple_of=None),
}
# each trainer's loss hyperparameters (TRL's names = pojax's loss.<name>)
LOSS_KEYS = {
    "dpo": ("beta", "label_smoothing", "f_divergence_type", "f_alpha_divergence_coef", "ld_alpha", "use_weighting",
            "discopop_tau"),
    "kto": ("beta", "desirable_weight", "undesirable_weight"),
    "cpo": ("beta", "label_smoothing", "cpo_alpha", "simpo_gamma", "alpha"),
    "orpo": ("beta",),
    "sft": (),
}
# CPOConfig.loss_type → pojax loss (alphapo: simpo with cpo_alpha = 0, as CPOConfig.__post_init__ sets)
CPO_LOSSES = {"sigmoid": "cpo", "hinge": "cpo_hinge", "ipo": "cpo_ipo", "simpo": "simpo", "alphapo": "simpo"}
SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant", "constant_with_warmup": "constant"}
_TRAINER_ONLY = {  # keys of one trainer's config class (the others refuse them with a hint)
    "dpo": ("loss_weights", "f_divergence_type", "f_alpha_divergence_coef", "ld_alpha", "use_weighting",
            "discopop_tau", "truncation_mode", "padding_free"),
    "kto": ("desirable_weight", "undesirable_weight", "train_sampling_strategy"),
    "cpo": ("cpo_alpha", "simpo_gamma", "alpha"),
    "sft": ("completion_only_loss", "assistant_only_loss", "dataset_text_field", "packing", "packing_strategy",
            "eval_packing", "shuffle_dataset", "eos_token", "pad_token", "chat_template_path", "dataset_kwargs"),
}

# Mapped keys: TRL key → the pojax keys it sets (to_config does the setting).
MAPPED = {
    "model_name_or_path": "model.path", "dataset_name": "data.path", "datasets": "data.path",
    "loss_type": "loss.name", "learning_rate": "optimizer.learning_rate", "lr_scheduler_type": "optimizer.schedule",
    "warmup_steps": "optimizer.warmup_steps", "weight_decay": "optimizer.weight_decay", "adam_beta1": "optimizer.b1",
    "adam_beta2": "optimizer.b2", "max_grad_norm": "optimizer.max_grad_norm",
    "per_device_train_batch_size": "train.batch_size", "gradient_accumulation_steps": "train.grad_accum_steps",
    "max_steps": "train.max_steps", "seed": "train.seed", "logging_steps": "logging.every_steps",
    "eval_strategy": "eval.num_examples", "eval_steps": "eval.every_steps", "save_steps": "checkpoint.every_steps",
    "save_total_limit": "checkpoint.keep", "metric_for_best_model": "checkpoint.best_metric",
    "greater_is_better": "checkpoint.best_mode", "bf16": "model.dtype", "fp16": "model.dtype", "dtype": "model.dtype",
    "gradient_checkpointing": "model.remat", "router_aux_loss_coef": "model.router_aux_loss_coef",
    "max_length": "data.max_length", "truncation_mode": "data.truncation_mode",
"padding_free": "data.packing",
    "precompute_ref_log_probs": "reference.mode", "sync_ref_model": "reference.sync_ref_model",
    "ref_model_mixup_alpha": "reference.ref_model_mixup_alpha", "ref_model_sync_steps": "reference.ref_model_sync_steps",
    "output_dir": "output_dir", "loss_weights": "loss.loss_weights",
    "completion_only_loss": "data.completion_only_loss", "assistant_only_loss": "data.assistant_only_loss",
    **{k: f"loss.{k}" for keys in LOSS_KEYS.values() for k in keys},
}
_ANY = object()
# Keys with no effect on what pojax computes: TRL key → (values accepted, or _ANY; why).
NO_EFFECT = {
    "run_name": (_ANY, "a tracker's name; pojax's run is its workdir"),
    "report_to": (("none", "tensorboard", "wandb", "all", None, (), ("none",), ("tensorboard",), ("wandb",),
                   ("tensorboard", "wandb"), ("wandb", "tensorboard")),
                  "pojax writes metrics.jsonl and TensorBoard events (workdir/tensorboard), and W&B with 'wandb' "
                  "(logging.wandb; run_name is the W&B run's name)"),
    "logging_strategy": (("steps",), "pojax logs every logging_steps steps"),
    "save_strategy": (("steps",), "pojax checkpoints every save_steps steps"),
    "optim": (("adamw_torch", "adamw_torch_fused"), "pojax's optimizer is AdamW (optax.adamw)"),
    "adam_epsilon": ((1e-8,), "pojax's AdamW uses ε = 1e-8"),
    "num_train_epochs": (_ANY, "max_steps > 0 overrides it in TRL too"),  # checked against max_steps in to_config
    "dataset_num_proc": (_ANY, "tokenization runs in one process; the tokens are the same"),
    "disable_dropout": ((True,), "pojax's models have no dropout"),
    "trust_remote_code": ((False,), "pojax never runs a checkpoint's code"),
    "push_to_hub": ((False,), "pojax exports to workdir/final (upload it yourself)"),
    "model_revision": (("main",), "model_name_or_path is a local directory"),
    "attn_implementation": (_ANY, "pojax computes attention itself; the kernel does not change the values"),
    "remove_unused_columns": (_ANY, "pojax reads the columns it needs"),
    "ignore_bias_buffers": (_ANY, "a DDP workaround of TRL's scripts"),
    "per_device_eval_batch_size": (_ANY, "evaluation figures are means over the held-out rows, whatever the batch"),
    "precompute_ref_batch_size": (_ANY, "the batch size does not change the reference's log-probs"),
    "pad_to_multiple_of": (_ANY, "pojax pads every row to one width (data.max_length) for jit's static shapes; "
                                 "padding never changes a log-prob"),
    "gradient_checkpointing_kwargs": (_ANY, "model.remat=full recomputes each layer (TRL's use_reentrant does not "
                                           "change the values)"),
    "dataset_train_split": (("train",), "pojax trains on the train split"),
    "dataset_test_split": (("test",), "pojax holds out eval.num_examples rows of the test split, or of the file"),
    "dataset_streaming": ((False,), "pojax reads the whole file"),
    "use_cpu": (_ANY, "pojax runs on the devices JAX finds (CPU when there is no accelerator)"),
    "streaming": ((False,), "pojax reads the whole file"),
    "use_liger_kernel": ((False,), "pojax's log-probs are chunked over the sequence and vocabulary already"),
    "activation_offloading": ((False,), "pojax has no activation offloading; model.remat trades compute for memory"),
    "test_split_size": ((None,), "pojax holds out eval.num_examples rows (upstream test split, or of the file)"),
    # SFTConfig
    "dataset_text_field": (("text",), "pojax's SFT rows read the 'text' column"),
    "packing": ((False,), "pojax pads each SFT row (packing serves preference pairs: data.packing)"),
    "packing_strategy": (_ANY, "no effect without packing"),
    "eval_packing": (_ANY, "no effect without packing"),
    "shuffle_dataset": (_ANY, "pojax shuffles the rows with train.seed"),
    "eos_token": ((None,), "pojax uses the tokenizer's EOS; set another in the tokenizer dir (data.tokenizer)"),
    "pad_token": ((None,), "pojax pads with the tokenizer's pad token (EOS without one); padding is never trained"),
    "chat_template_path": ((None,), "pojax uses the tokenizer's chat template; edit it in the tokenizer dir "
                                    "(data.tokenizer)"),
    "dataset_kwargs": ((None,), "pojax prepares the rows itself"),
}
# Keys pojax takes only at their "off" value (else refused, saying what pojax has instead).
NO_EFFECT.update({
    "use_peft": ((False,), "pojax's LoRA is reference.mode=lora_base (reference.lora_rank, reference.lora_alpha; no "
                           "dropout, pojax's own target modules): set those keys instead"),
    "load_in_8bit": ((False,), "pojax trains float32 master weights; no quantized base"),
    "load_in_4bit": ((False,), "pojax trains float32 master weights; no quantized base"),
    "data_seed": ((None,), "pojax's data order derives from seed (train.seed)"),
    "resume_from_checkpoint": ((None,), "pojax resumes from the latest checkpoint of the workdir by itself"),
    "model_init_kwargs": ((None,), "pojax loads model_name_or_path itself (model.dtype: the compute dtype)"),
    "lr_scheduler_kwargs": ((None,), "pojax's schedules (optimizer.schedule) take no extra arguments"),
    "dataset_config": ((None,), "pojax reads a local file or directory (data.path)"),
    "load_best_model_at_end": ((False,), "pojax exports the last step to workdir/final; the best parameters "
                                         "(checkpoint.best_metric) export with task=export, export.checkpoint=best"),
})
# TRL keys pojax refuses whatever their value.
REFUSED = {
    "env": "set environment variables in the shell; pojax reads none from its config",
    "train_sampling_strategy": "pojax shuffles the rows with train.seed for every loss; it has no sequential order",
}
# ModelConfig's LoRA keys: no effect without use_peft (in TRL too); use_peft itself is refused
_PEFT_ONLY = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_parameters",
              "lora_modules_to_save", "lora_task_type", "use_rslora", "use_dora")


def _fail(source: str, key: str, message: str):
    raise ConfigError("trl_yaml", f"{source}: key {key!r}: {message}")


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return tuple(a) == tuple(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def load(path: str) -> dict:
    """The YAML mapping of ``path`` (``ConfigError`` naming it when missing or not a mapping)."""
    import yaml

    if not os.path.isfile(path):
        raise ConfigError("trl_yaml", f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError("trl_yaml", f"{path}: not YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError("trl_yaml", f"{path}: must hold a YAML mapping of TRL's keys, got {type(data).__name__}")
    return data


def check_keys(raw: dict, trainer: str, source: str) -> None:
    """Every key of the YAML is mapped, has no effect with its value, or is refused (by name)."""
    own = set(DEFAULTS[trainer])
    for key, value in raw.items():
        for other, keys in _TRAINER_ONLY.items():
            if key in keys and other != trainer and key not in own:
                _fail(source, key, f"is a field of TRL's {other.upper()}Config, not {trainer.upper()}Config: set "
                                   f"'trainer: {other}' if this is a {other} run")
        if key in REFUSED:
            _fail(source, key, REFUSED[key])
        if key in _PEFT_ONLY:
            continue  # no effect without use_peft, which is refused when true
        if key in NO_EFFECT:
            allowed, why = NO_EFFECT[key]
            if allowed is not _ANY and not any(_same(_tuple(value), v) for v in allowed):
                shown = ", ".join(repr(v) for v in allowed)
                _fail(source, key, f"{value!r}: pojax supports only {shown} ({why})")
            continue
        if key not in own:
            _fail(source, key, f"pojax has no equivalent (not a TRL 1.16 {trainer.upper()}Config / ScriptArguments / "
                               "ModelConfig / DatasetMixtureConfig field that pojax maps)")


def _tuple(value):
    return tuple(value) if isinstance(value, list) else value


def _steps(value, max_steps: int) -> int:
    """TrainingArguments' step counts: a float < 1 is a ratio of the total steps, rounded up."""
    return int(value) if value >= 1 else max(1, math.ceil(max_steps * value))


def _data_path(v: dict, source: str) -> str:
    """data.path of ScriptArguments.dataset_name or a one-entry DatasetMixtureConfig.datasets."""
    if v["datasets"]:
        if len(v["datasets"]) != 1:
            _fail(source, "datasets", f"{len(v['datasets'])} datasets: pojax trains on one file or directory "
                                      "(data.path); mixtures are not supported")
        entry = dict(v["datasets"][0])
        for key in ("name", "data_dir", "columns", "fraction"):
            if entry.get(key) is not None:
                _fail(source, f"datasets.{key}", "pojax reads one local file or directory as it is")
        if entry.get("split", "train") != "train":
            _fail(source, "datasets.split", f"{entry['split']!r}: pojax trains on the train split")
        files = entry.get("data_files")
        if isinstance(files, (list, tuple)) and len(files) == 1:
            files = files[0]
        if files is not None and not isinstance(files, str):
            _fail(source, "datasets.data_files", "pojax reads one file or directory; give a single path")
        if files is None and entry.get("path") in ("json", "parquet", "csv", "text"):
            _fail(source, "datasets.path", f"{entry['path']!r} is a builder name: give data_files (a local path)")
        return files or entry["path"]
    if not v["dataset_name"]:
        _fail(source, "dataset_name", "missing: give dataset_name (a local file or directory) or datasets")
    return v["dataset_name"]


def _loss(c, v: dict, trainer: str, source: str, raw: dict) -> None:
    """loss.name and every loss hyperparameter with TRL's value (defaults included, so pojax's own
    loss defaults never apply); a hyperparameter the loss does not read is dropped at TRL's default
    and refused when the YAML sets it to anything else."""
    if trainer == "dpo":
        types = [v["loss_type"]] if isinstance(v["loss_type"], str) else list(v["loss_type"])
        if v["loss_weights"] is not None and len(v["loss_weights"]) != len(types):
            _fail(source, "loss_weights", f"{len(v['loss_weights'])} weights for {len(types)} loss types")
        name = "+".join(types)
        if len(types) == 1 and v["loss_weights"] is not None and float(v["loss_weights"][0]) != 1.0:
            _fail(source, "loss_weights", f"{v['loss_weights']!r} scales a single loss; pojax weighs the parts of a "
                                          "combined loss only (scale learning_rate instead)")
        if len(types) > 1 and v["loss_weights"] is not None:
            c.loss.loss_weights = tuple(float(w) for w in v["loss_weights"])
    elif trainer == "kto":
        name = v["loss_type"]
    elif trainer == "sft":
        if v["loss_type"] != "nll":
            _fail(source, "loss_type", f"{v['loss_type']!r}: pojax's SFT loss is the token NLL ('nll')")
        return
    elif trainer == "cpo":
        if v["loss_type"] not in CPO_LOSSES:
            _fail(source, "loss_type", f"{v['loss_type']!r} is not one of CPOConfig's {', '.join(CPO_LOSSES)}")
        name = CPO_LOSSES[v["loss_type"]]
        if v["loss_type"] == "alphapo":
            v = dict(v, cpo_alpha=0.0)
    else:
        name = "orpo"
    try:
        accepted = losses.hparam_names(losses.get(name))
    except ValueError:
        _fail(source, "loss_type", f"{name!r}: pojax has no such loss (pojax.losses.names())")
    c.loss.name = name
    for key in LOSS_KEYS[trainer]:
        value = v[key]
        if key in accepted:
            if value is not None:
                c.loss[key] = value
        elif key in raw and not _same(value, DEFAULTS[trainer][key]):
            _fail(source, key, f"loss {name!r} does not read it (TRL ignores or refuses it too); it takes "
                               f"{', '.join(accepted)}")


def to_config(raw: dict, *, source: str = "<yaml>") -> ml_collections.ConfigDict:
    """The pojax run config of a TRL YAML mapping ``raw`` (see the module docstring)."""
    raw = dict(raw)
    trainer = raw.pop("trainer", "dpo")
    if trainer not in TRAINERS:
        _fail(source, "trainer", f"{trainer!r} is not one of {', '.join(TRAINERS)} (TRL's DPOConfig, KTOConfig, SFTConfig, "
                                 "CPOConfig, ORPOConfig)")
    check_keys(raw, trainer, source)
    v = dict(DEFAULTS[trainer], **raw)
    if v["bf16"] is None:  # TRL's _BaseConfig.__post_init__
        v["bf16"] = not v["fp16"]
    c = base_config()
    c.task = "sft" if trainer == "sft" else "train"
    # TRL's output_dir (default trainer_output, relative to the current directory): the run directory unless --workdir
    c.output_dir = os.path.expanduser(v["output_dir"] or "trainer_output")

    if not v["model_name_or_path"]:
        _fail(source, "model_name_or_path", "missing: give a local Hugging Face model directory")
    c.model.path = v["model_name_or_path"]
    if v["fp16"]:
        _fail(source, "fp16", "pojax computes in bfloat16 or float32 (bf16: true, or false)")
    if v["dtype"] not in (None, "auto", "float32", "bfloat16"):
        _fail(source, "dtype", f"{v['dtype']!r}: pojax's compute dtypes are bfloat16 and float32")
    c.model.dtype = "bfloat16" if v["bf16"] or v["dtype"] == "bfloat16" else "float32"  # parameters stay float32
    c.model.remat = "full" if v["gradient_checkpointing"] else "none"
    if v.get("router_aux_loss_coef") is not None:  # else the checkpoint's own coefficient (TRL's None)
        c.model.router_aux_loss_coef = float(v["router_aux_loss_coef"])

    c.data.path = _data_path(v, source)
    c.data.format = {"kto": "unpaired", "sft": "sft"}.get(trainer, "paired")
    if v["max_length"] is None:
        _fail(source, "max_length", "null (no truncation): pojax pads rows to one width; give max_length in tokens")
    c.data.max_length = int(v["max_length"])
    c.data.max_prompt_length = 0  # TRL 1.16 has no per-part limits for DPO / KTO
    # CPO / ORPO's max_completion_length: their trainers read it for encoder-decoder models only
    c.data.max_completion_length = 0
    c.data.truncation_mode = v.get("truncation_mode", "keep_start")
    c.data.packing = bool(v.get("padding_free", False)) and trainer != "sft"  # SFT: padding-free changes no value
    if c.data.packing and c.data.truncation_mode == "keep_end":
        _fail(source, "padding_free", "true with truncation_mode keep_end: pojax's padding-free rows (data.packing) "
                                      "pack each pair on one prompt, and keep_end may cut the two prompts differently; "
                                      "use keep_start or padding_free: false")
    if trainer == "sft":
        c.data.completion_only_loss = True if v["completion_only_loss"] is None else bool(v["completion_only_loss"])
        c.data.assistant_only_loss = bool(v["assistant_only_loss"])
        if v["eval_strategy"] != "no":
            _fail(source, "eval_strategy", f"{v['eval_strategy']!r}: pojax's task=sft does not evaluate while it "
                                           "trains (set 'no')")

    _loss(c, v, trainer, source, raw)
    if trainer == "sft":
        pass  # no reference model: task=sft builds none
    elif trainer in ("cpo", "orpo"):
        c.reference.mode = "none"  # reference-free
    else:
        c.reference.mode = "precomputed" if v["precompute_ref_log_probs"] else "copy"
        c.reference.sync_ref_model = bool(v["sync_ref_model"])
        c.reference.ref_model_mixup_alpha = float(v["ref_model_mixup_alpha"])
        c.reference.ref_model_sync_steps = int(v["ref_model_sync_steps"])
        if v["sync_ref_model"] and v["precompute_ref_log_probs"]:
            _fail(source, "sync_ref_model", "with precompute_ref_log_probs: the precomputed values are of a fixed "
                                            "reference (TRL refuses this too)")

    max_steps = int(v["max_steps"])
    if max_steps <= 0:
        key = "num_train_epochs" if "num_train_epochs" in raw else "max_steps"
        _fail(source, key, f"pojax counts optimizer steps: set max_steps > 0 (TRL's num_train_epochs={v['num_train_epochs']} "
                           "is that many × ⌈rows / (per_device_train_batch_size × gradient_accumulation_steps)⌉)")
    c.train.max_steps = max_steps
    c.train.seed = int(v["seed"])
    accum = int(v["gradient_accumulation_steps"])
    c.train.grad_accum_steps = accum
    c.train.batch_size = int(v["per_device_train_batch_size"]) * accum  # one TRL process; see README

    o = c.optimizer
    o.learning_rate = float(v["learning_rate"])
    if v["lr_scheduler_type"] not in SCHEDULES:
        _fail(source, "lr_scheduler_type", f"{v['lr_scheduler_type']!r}: pojax's schedules are "
                                           f"{', '.join(SCHEDULES)}")
    o.schedule = SCHEDULES[v["lr_scheduler_type"]]
    # transformers' "constant" ignores warmup_steps; its get_warmup_steps rounds a ratio up
    o.warmup_steps = 0 if v["lr_scheduler_type"] == "constant" else _warmup(v["warmup_steps"], max_steps)
    o.weight_decay = float(v["weight_decay"])
    o.b1, o.b2 = float(v["adam_beta1"]), float(v["adam_beta2"])
    o.max_grad_norm = float(v["max_grad_norm"] or 0.0)

    c.logging.every_steps = _steps(v["logging_steps"], max_steps)
    if v["eval_strategy"] == "no":
        c.eval.num_examples = 0  # TRL's default: no evaluation, every row trains
        c.eval.every_steps = max_steps
    elif v["eval_strategy"] == "steps":
        c.eval.every_steps = _steps(v["eval_steps"] or v["logging_steps"], max_steps)
    else:
        _fail(source, "eval_strategy", f"{v['eval_strategy']!r}: pojax evaluates every eval_steps steps ('steps') "
                                       "or not at all ('no')")
    c.checkpoint.every_steps = _steps(v["save_steps"], max_steps)
    limit = v["save_total_limit"]
    c.checkpoint.keep = int(limit) if limit else max(1, math.ceil(max_steps / c.checkpoint.every_steps))
    metric = v["metric_for_best_model"]
    if metric:
        c.checkpoint.best_metric = metric if metric.startswith("eval_") else f"eval_{metric}"  # as transformers does
        better = v["greater_is_better"]
        better = not metric.endswith("loss") if better is None else better
        c.checkpoint.best_mode = "max" if better else "min"
    report = raw.get("report_to")
    report = [report] if isinstance(report, str) else list(report or [])
    if "wandb" in report or "all" in report:  # TrainingArguments' trackers: pojax's W&B logging
        c.logging.wandb = True
        c.logging.wandb_name = str(raw.get("run_name") or "")
    c.mesh.data, c.mesh.fsdp = 1, -1  # FSDP over every device, as configs/dpo.py
    return c


def _warmup(value, max_steps: int) -> int:
    return int(value) if value >= 1 or value == 0 else math.ceil(max_steps * value)


def from_yaml(path: str) -> ml_collections.ConfigDict:
    """``to_config`` of the YAML file at ``path``."""
    return to_config(load(path), source=path)
