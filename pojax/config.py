"""The base run config (every recipe in configs/ derives from it; its keys live in
pojax.defaults and are re-exported here) and its validation.

pojax.defaults is the one source of truth for the stable keys of DESIGN.md. ``validate`` raises ``ConfigError``
naming the offending key; ``python -m pojax.main`` turns it into one line on stderr.
"""
from __future__ import annotations

import ml_collections

from pojax import losses
from pojax.defaults import LOSS_HPARAMS, base_config  # noqa: F401  (the keys; this module checks them)

TASKS = ("sft", "pretrain", "train", "eval", "sample", "export", "diffpo")
DATA_FORMATS = ("paired", "unpaired", "ranked", "step", "sft", "hh_rlhf", "ultrafeedback_binarized", "kto_mix", "gym")
TRUNCATION_MODES = ("keep_start", "keep_end")  # data.truncation_mode, TRL DPOConfig's values
COMPLETION_ENDS = ("eos", "none")  # data.completion_end (pojax.data.tokenize)
LIKELIHOODS = ("autoregressive", "diffusion")
ESTIMATORS = ("length_stratified", "length", "timestep_stratified", "timestep")  # pojax.likelihood.diffusion
REFERENCE_MODES = ("copy", "precomputed", "lora_base", "none")
UNPAIRED_LOSSES = ("kto", "apo_zero_unpaired", "bco")
ONLINE_LOSSES = ("online_dpo", "xpo", "ofs_dpo")  # loss names trained by the online loop (pojax.train.online)
ONLINE_REWARDS = ("gold",)  # online.reward: "gold" = the gym's gold reward
# losses that read per-pair scores of the data (madpo: reward_margin; curry_dpo: the curriculum
# order) and the data formats whose rows carry them (gym: gold reward; score_chosen / score_rejected)
SCORED_LOSSES = ("madpo", "curry_dpo")
SCORED_FORMATS = ("gym", "paired", "ultrafeedback_binarized", "ranked")  # ranked: curry_dpo only
TOKEN_REFERENCE_MODES = ("copy", "lora_base")  # reference models that give per-token distributions (tdpo, tgdpo)
RUNTIME_LOSS_ARGS = losses.RUNTIME_ARGS  # per-batch inputs of a loss (state, keys, data columns), not config keys


class ConfigError(ValueError):
    """A bad config value; ``key`` is its dotted path (e.g. ``loss.beta``)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"config key {key}: {message}")
        self.key = key


def rto_ppo(config) -> bool:
    """RTO's second stage (PPO on token rewards, pojax.train.rto): loss.name = "rto" with a
    reference.guide_path (the DPO model of its first stage). Without a guide, "rto" is that first,
    offline DPO stage."""
    return config.loss.name == "rto" and bool(config.reference.get("guide_path"))


def is_online(config) -> bool:
    """Whether task=train runs the online loop (pojax.train.online) rather than offline data."""
    return config.loss.name in ONLINE_LOSSES or rto_ppo(config)


def recipe(path: str) -> ml_collections.ConfigDict:
    """The config of the recipe file at ``path`` (its ``get_config()``): how one recipe in
    configs/ builds on another (configs/ is not a package)."""
    import importlib.util
    import os

    name = "pojax_recipe_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


RANDOM_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "llada", "dream")  # model.family of a random model (no model.path)


def _one_of(config, key: str, allowed) -> None:
    section, _, field = key.partition(".")
    value = config[section][field] if field else config[section]
    if value not in allowed:
        raise ConfigError(key, f"{value!r} is not one of {', '.join(map(str, allowed))}")


def _positive(config, key: str) -> None:
    section, _, field = key.partition(".")
    value = config[section][field]
    if not isinstance(value, int) or value <= 0:
        raise ConfigError(key, f"must be a positive integer, got {value!r}")


def loss_hparams(config) -> dict:
    """The loss hyperparameters a config sets (unset placeholders left out)."""
    return {k: v for k, v in config.loss.items() if k != "name" and v is not None}


def validate_loss(config) -> None:
    """The loss exists, every loss.<key> is one of its hyperparameters, and the reference
    mode fits (a reference-based loss cannot run with reference.mode = "none")."""
    name = config.loss.name
    try:
        fn = losses.get(name)
    except ValueError as e:
        raise ConfigError("loss.name", str(e)) from None
    accepted = losses.hparam_names(fn)
    for key in loss_hparams(config):
        if key not in accepted:
            raise ConfigError(f"loss.{key}", f"loss {name!r} has no hyperparameter {key!r}; it accepts: {', '.join(accepted)}")
    if config.task in ("train", "eval"):
        listwise, gym = losses.input_kind(name) == "ranked", config.data.format == "gym"
        curry_ranked = name == "curry_dpo" and config.data.format == "ranked"  # ranked rows → Curry-DPO's pairs
        if not gym and not curry_ranked and listwise != (config.data.format == "ranked"):
            raise ConfigError("loss.name", f"{name!r} does not take data.format={config.data.format!r}: listwise "
                              "losses train on ranked data (data.format=ranked or gym), the others do not")
        _validate_fed_losses(config)
    _validate_kto(config)
    if config.reference.mode == "none" and losses.needs_reference(name):
        raise ConfigError("reference.mode", f"'none', but loss {name!r} needs reference log-probs")


def _validate_kto(config) -> None:
    """KTO's reference point settings: a known kto_reference_point, an EMA decay in [0, 1), and a
    centering group size that groups the batch mean and divides each micro-batch."""
    if "kto" not in _loss_parts(config.loss.name):
        return
    loss, known = config.loss, losses.unpaired.KTO_REFERENCE_POINTS
    point = loss.get("kto_reference_point")
    if point is not None and point not in known:
        raise ConfigError("loss.kto_reference_point", f"{point!r} is not one of {', '.join(known)}")
    decay = loss.get("kto_baseline_ema_decay")
    if decay is not None and not 0.0 <= decay < 1.0:
        raise ConfigError("loss.kto_baseline_ema_decay", f"{decay} is not in [0, 1)")
    size = loss.get("kto_centering_group_size")
    if size:
        micro = config.train.batch_size // max(config.train.grad_accum_steps, 1)
        if size < 0 or micro % size:
            raise ConfigError("loss.kto_centering_group_size", f"{size} must be a positive divisor of the "
                              f"micro-batch (train.batch_size / train.grad_accum_steps = {micro} rows)")
        if point != "batch_mean":
            raise ConfigError("loss.kto_centering_group_size", f"groups the batch mean; set "
                              f"loss.kto_reference_point=batch_mean (it is {point or 'kl'!r})")


def _loss_parts(name) -> list[str]:
    return [p.strip() for p in name.split("+")] if isinstance(name, str) else list(name)


def _validate_fed_losses(config) -> None:
    """The inputs the trainer computes for token-level and scored losses exist for this config:
    tdpo / tgdpo need a reference model (per-token distributions), unpacked autoregressive
    batches, and tgdpo a guide (reference.guide_path, checked when the run starts); madpo and
    curry_dpo need per-pair scores in the data."""
    name, parts = config.loss.name, _loss_parts(config.loss.name)
    if config.reference.get("guide_path") and "tgdpo" not in parts and name != "rto":
        raise ConfigError("reference.guide_path", f"is read by losses 'tgdpo' and 'rto' (its PPO stage) only, not "
                          f"{name!r}; leave it empty")
    if losses.needs_tokens(name):
        if config.reference.mode not in TOKEN_REFERENCE_MODES:
            raise ConfigError("reference.mode", f"{config.reference.mode!r}: loss {name!r} needs the reference's "
                              "per-token distributions, which precomputed sequence values cannot give; use "
                              f"{' or '.join(TOKEN_REFERENCE_MODES)}")
        if config.likelihood.kind != "autoregressive":
            raise ConfigError("likelihood.kind", f"{config.likelihood.kind!r}: loss {name!r} needs per-token "
                              "log-probs of an autoregressive model; a diffusion ELBO has none")
        if config.data.packing:
            raise ConfigError("data.packing", f"loss {name!r} needs per-pair token rows; set data.packing=False")
        if "tgdpo" in parts and config.task != "train":
            raise ConfigError("loss.name", f"'tgdpo' reads guide token rewards that only task 'train' computes "
                              f"(reference.guide_path); task {config.task!r} cannot evaluate it")
    scored = [p for p in parts if p in SCORED_LOSSES]
    if scored:
        if config.data.format not in SCORED_FORMATS or (config.data.format == "ranked" and name != "curry_dpo"):
            raise ConfigError("data.format", f"{config.data.format!r}: loss {scored[0]!r} needs per-pair scores "
                              f"(the gym's gold reward, score_chosen / score_rejected of data.format "
                              f"paired | ultrafeedback_binarized, or ranked rows for curry_dpo)")
        if config.data.packing:
            raise ConfigError("data.packing", f"loss {scored[0]!r} reads per-pair scores (margins / curriculum "
                              "order), which packed batches do not carry; set data.packing=False")
        if "madpo" in parts and config.likelihood.kind != "autoregressive":
            raise ConfigError("likelihood.kind", f"{config.likelihood.kind!r}: madpo's reward margins are not "
                              "passed to the diffusion objective yet; use likelihood.kind=autoregressive")


def _validate_diffusion(config) -> None:
    """What diffusion ELBOs cannot serve: per-token terms, listwise batches, packing."""
    name = config.loss.name
    if not config.model.path and config.model.family not in ("llada", "dream"):
        raise ConfigError("model.family", f"{config.model.family!r}: likelihood.kind='diffusion' needs a masked-diffusion "
                          "model (model.family=llada or dream, or a llada / Dream checkpoint in model.path)")
    for key in ("ld_alpha", "use_weighting"):
        if config.loss.get(key) not in (None, False):
            raise ConfigError(f"loss.{key}", "needs per-token log-probs, which a diffusion ELBO does not give")
    if losses.input_kind(name) == "ranked":
        raise ConfigError("loss.name", f"{name!r}: listwise losses on diffusion ELBOs are not wired yet")
    if config.data.packing:
        raise ConfigError("data.packing", "packing is not supported with likelihood.kind='diffusion' yet")
    if config.likelihood.n_mc < 1:
        raise ConfigError("likelihood.n_mc", f"must be at least 1, got {config.likelihood.n_mc}")
    _one_of(config, "likelihood.estimator", ESTIMATORS)


def _validate_ref_sync(config) -> None:
    """TR-DPO's keys (read by task=train only): a reference copy of offline training, α in [0, 1], τ >= 1.
    TRL refuses sync_ref_model with a PEFT model (lora_base) and with precompute_ref_log_probs."""
    r = config.reference
    if not r.get("sync_ref_model") or config.task != "train":  # other tasks (eval, export of the run) read no reference sync
        return
    if r.mode != "copy":
        raise ConfigError("reference.sync_ref_model", f"TR-DPO syncs a reference copy; it needs reference.mode='copy', got "
                          f"{r.mode!r} (TRL refuses it with PEFT and with precompute_ref_log_probs too)")
    if not losses.needs_reference(config.loss.name):
        raise ConfigError("reference.sync_ref_model", f"loss {config.loss.name!r} is reference-free: there is no "
                          "reference to sync")
    if is_online(config):
        raise ConfigError("reference.sync_ref_model", f"syncs the reference of offline training; online loss "
                          f"{config.loss.name!r} does not support it yet")
    alpha = r.ref_model_mixup_alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ConfigError("reference.ref_model_mixup_alpha", f"must be a number in [0, 1], got {alpha!r}")
    _positive(config, "reference.ref_model_sync_steps")


def _validate_mc_and_cache(config) -> None:
    """likelihood.mc_stderr needs diffusion ELBOs, an even n_mc and the reference model;
    reference.cache_dir stores precomputed values only."""
    if config.reference.get("cache_dir") and config.reference.mode != "precomputed":
        raise ConfigError("reference.cache_dir", f"stores precomputed reference values; it needs "
                          f"reference.mode='precomputed', got {config.reference.mode!r}")
    if "://" in config.reference.get("cache_dir", ""):
        raise ConfigError("reference.cache_dir", f"{config.reference.cache_dir!r}: the cache is written atomically on "
                          "a local or shared filesystem path; a bucket is not supported yet")
    if not config.likelihood.get("mc_stderr"):
        return
    if config.likelihood.kind != "diffusion":
        raise ConfigError("likelihood.mc_stderr", "estimates the Monte Carlo error of diffusion ELBOs; "
                          f"likelihood.kind={config.likelihood.kind!r} has none")
    n_mc = config.likelihood.n_mc
    if n_mc < 2 or n_mc % 2:
        raise ConfigError("likelihood.n_mc", f"likelihood.mc_stderr splits the draws into two halves: n_mc must be "
                          f"even and at least 2, got {n_mc}")
    if config.reference.mode == "precomputed":
        raise ConfigError("likelihood.mc_stderr", "needs the reference model's ELBOs under each half's draws; "
                          "reference.mode='precomputed' keeps only full-budget values (use copy or lora_base)")


def _validate_packing(config) -> None:
    from pojax.objectives.packed import check_packable

    if losses.input_kind(config.loss.name) != "pair" or config.data.format in ("unpaired", "kto_mix", "ranked"):
        raise ConfigError("data.packing", "packing serves paired data and losses only; set data.packing=False")
    if config.task != "train":
        raise ConfigError("data.packing", f"task {config.task!r} reads unpacked rows; set data.packing=False")
    if config.data.truncation_mode == "keep_end" and config.data.max_length:
        raise ConfigError("data.truncation_mode", "'keep_end' with data.packing: the two sides of a pair may keep "
                          "different ends of their prompt, and a packed pair shares one prompt; use keep_start or "
                          "data.packing=False")
    if config.data.max_segments < 2 or config.data.max_segments % 2:
        raise ConfigError("data.max_segments", f"must be an even number >= 2, got {config.data.max_segments}")
    try:
        check_packable(config.loss.name, loss_hparams(config))
    except ValueError as e:
        raise ConfigError("data.packing", str(e).removeprefix("data.packing: ")) from None


def _validate_online(config) -> None:
    """What the online loop (pojax.train.online) serves: task=train on the gym, autoregressive
    sampling, a frozen reference copy, one micro-batch per step."""
    name = config.loss.name
    if config.task != "train":
        raise ConfigError("loss.name", f"{name!r} is an online mode: it runs with task='train' only, got {config.task!r}")
    if config.data.format != "gym":
        raise ConfigError("data.format", f"{config.data.format!r}: online mode {name!r} samples prompts and labels "
                          "them with online.reward, which needs data.format='gym' for now")
    if config.likelihood.kind != "autoregressive" or config.model.family in ("llada", "dream"):
        raise ConfigError("likelihood.kind", f"online mode {name!r} samples with the KV cache: it needs an "
                          "autoregressive model and likelihood.kind='autoregressive'")
    if config.reference.mode != "copy":
        raise ConfigError("reference.mode", f"{config.reference.mode!r}: online mode {name!r} needs the frozen "
                          "reference copy (reference.mode='copy')")
    if config.data.packing:
        raise ConfigError("data.packing", f"online mode {name!r} builds unpacked pairs; set data.packing=False")
    if config.train.grad_accum_steps != 1:
        raise ConfigError("train.grad_accum_steps", f"online mode {name!r} takes one batch per step; set it to 1")
    temperature = config.online.temperature
    if not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ConfigError("online.temperature", f"must be a positive number, got {temperature!r}")
    _one_of(config, "online.reward", ONLINE_REWARDS)
    if name == "ofs_dpo":
        _validate_ofs(config)
    if rto_ppo(config):
        _validate_rto(config)


def _validate_rto(config) -> None:
    """RTO's PPO keys: coefficients and clips >= 0, β₁ and σ > 0, μ and σ set together, γ and λ
    in [0, 1], ε > 0, whole epochs per checkpoint."""
    o = config.online
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    for key in ("rto_dpo_clip", "rto_kl_coef", "rto_seq_coef", "rto_seq_clip", "value_coef"):
        if not number(o[key]) or o[key] < 0:
            raise ConfigError(f"online.{key}", f"must be a number >= 0, got {o[key]!r}")
    for key in ("rto_dpo_beta",) + (("rto_seq_std",) if o.rto_seq_std is not None else ()):
        if not number(o[key]) or o[key] <= 0:
            raise ConfigError(f"online.{key}", f"must be a positive number, got {o[key]!r}")
    if (o.rto_seq_mean is None) != (o.rto_seq_std is None):
        raise ConfigError("online.rto_seq_mean", "set rto_seq_mean and rto_seq_std together, or neither (= measured)")
    for key in ("gamma", "gae_lambda"):
        if not number(o[key]) or not 0 <= o[key] <= 1:
            raise ConfigError(f"online.{key}", f"must be in [0, 1], got {o[key]!r}")
    if not number(o.ppo_clip) or o.ppo_clip <= 0:
        raise ConfigError("online.ppo_clip", f"must be a positive number, got {o.ppo_clip!r}")
    if isinstance(o.ppo_epochs, bool) or not isinstance(o.ppo_epochs, int) or o.ppo_epochs < 1:
        raise ConfigError("online.ppo_epochs", f"must be an integer >= 1, got {o.ppo_epochs!r}")
    if config.checkpoint.every_steps % o.ppo_epochs:
        raise ConfigError("online.ppo_epochs", f"{o.ppo_epochs} does not divide checkpoint.every_steps="
                          f"{config.checkpoint.every_steps}: a resumed run must start on a rollout's first step")


def _validate_ofs(config) -> None:
    """OFS-DPO's keys: positive learning-rate ratio and LoRA sizes, a non-negative swap period."""
    o = config.online
    for key in ("fast_lr_ratio", "lora_alpha"):
        if isinstance(o[key], bool) or not isinstance(o[key], (int, float)) or o[key] <= 0:
            raise ConfigError(f"online.{key}", f"must be a positive number, got {o[key]!r}")
    _positive(config, "online.lora_rank")
    if isinstance(o.swap_every, bool) or not isinstance(o.swap_every, int) or o.swap_every < 0:
        raise ConfigError("online.swap_every", f"must be an integer >= 0 (0 = never swap), got {o.swap_every!r}")


def _validate_resilience(config) -> None:
    """Preemption signals, the step watchdog and jax.distributed's timeouts."""
    from pojax.train.preemption import parse_signals

    try:
        parse_signals(config.train.preemption_signals)
    except ValueError as e:
        raise ConfigError("train.preemption_signals", f"{config.train.preemption_signals!r}: {e}") from None
    timeout = config.train.step_timeout_s
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ConfigError("train.step_timeout_s", f"must be a number of seconds >= 0 (0 = off), got {timeout!r}")
    for key in ("initialization_timeout_s", "heartbeat_timeout_s", "shutdown_timeout_s"):
        value = config.distributed[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
            raise ConfigError(f"distributed.{key}", f"must be a number of seconds >= 1, got {value!r}")


MU_DTYPES = ("", "float32", "bfloat16", "float16")
REFERENCE_DTYPES = ("", "compute", "float32", "bfloat16", "float16")


def _validate_memory(config) -> None:
    """optimizer.mu_dtype and reference.dtype (held by the reference copy only)."""
    _one_of(config, "optimizer.mu_dtype", MU_DTYPES)
    _one_of(config, "reference.dtype", REFERENCE_DTYPES)
    if not isinstance(config.optimizer.offload, bool):
        raise ConfigError("optimizer.offload", f"must be True or False, got {config.optimizer.offload!r}")
    if config.reference.dtype and config.reference.mode != "copy":
        raise ConfigError("reference.dtype", f"sets the dtype of the reference copy (reference.mode='copy'); "
                          f"reference.mode={config.reference.mode!r} holds none")


def _validate_subsample(config) -> None:
    """data.completion_end's values; data.desirable_fraction / undesirable_fraction in [0, 1], not
    both 0, and below 1 only for unpaired training rows (an unpaired loss)."""
    d = config.data
    _one_of(config, "data.completion_end", COMPLETION_ENDS)
    fractions = {k: d.get(k, 1.0) for k in ("desirable_fraction", "undesirable_fraction")}
    for key, f in fractions.items():
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1:
            raise ConfigError(f"data.{key}", f"must be a number in [0, 1] (1 = every row of that label), got {f!r}")
    if all(f == 0 for f in fractions.values()):
        raise ConfigError("data.desirable_fraction", "0 with data.undesirable_fraction=0 leaves no row to train on")
    if any(f < 1 for f in fractions.values()) and losses.input_kind(config.loss.name) != "unpaired":
        raise ConfigError("data.desirable_fraction", f"below 1 subsamples the desirable / undesirable rows of an "
                          f"unpaired loss (kto, bco, ...), not of loss {config.loss.name!r}; set both fractions to 1")


def validate(config) -> None:
    """Raises ConfigError for the first bad key of a run config."""
    _one_of(config, "task", TASKS)
    if not config.model.path:
        _one_of(config, "model.family", RANDOM_FAMILIES)
    _one_of(config, "data.format", DATA_FORMATS)
    _one_of(config, "data.truncation_mode", TRUNCATION_MODES)
    if config.data.format == "sft" and config.task in ("train", "eval"):
        raise ConfigError("data.format", f"'sft' rows (messages, text, or prompt + completion) hold no preferences to "
                          f"{config.task} on: task=sft trains on them; task={config.task} reads paired, unpaired or ranked rows")
    if config.data.assistant_only_loss and config.data.format != "sft":
        raise ConfigError("data.assistant_only_loss", f"True applies to SFT rows (data.format=sft), not "
                          f"data.format={config.data.format!r}")
    for key in ("data.max_length", "data.max_prompt_length", "data.max_completion_length"):
        value = config.data[key.split(".")[1]]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(key, f"must be an integer >= 0 (0 = no limit), got {value!r}")
    if not config.data.max_length and not (config.data.max_prompt_length and config.data.max_completion_length):
        raise ConfigError("data.max_length", "0 (no limit) needs both data.max_prompt_length and "
                          "data.max_completion_length > 0: together they set the row width")
    _one_of(config, "likelihood.kind", LIKELIHOODS)
    _one_of(config, "reference.mode", REFERENCE_MODES)
    _one_of(config, "checkpoint.best_mode", ("min", "max"))
    _one_of(config, "train.nan_policy", ("skip", "stop"))
    _validate_resilience(config)
    _validate_memory(config)
    from pojax.models.config import REMAT_POLICIES

    _one_of(config, "model.remat", REMAT_POLICIES)
    _one_of(config, "export.checkpoint", ("latest", "best"))
    _one_of(config, "export.stage", ("", "train", "sft"))
    if config.checkpoint.best_metric and not config.checkpoint.best_metric.startswith("eval_"):
        raise ConfigError("checkpoint.best_metric", f"{config.checkpoint.best_metric!r}: must be an evaluation metric "
                          "(eval_loss, eval_rewards/accuracies, ...)")
    if config.eval.judge_template:
        from pojax.eval.judge import check_template

        try:
            check_template(config.eval.judge_template)
        except ValueError as e:
            raise ConfigError("eval.judge_template", str(e).removeprefix("config key eval.judge_template: ")) from None
    gym_cfg = config.data.gym
    if config.data.format == "gym" and gym_cfg.response_len > gym_cfg.prompt_len:
        raise ConfigError("data.gym.response_len", f"{gym_cfg.response_len} exceeds data.gym.prompt_len="
                          f"{gym_cfg.prompt_len} (the gold rule reads one prompt symbol per response position)")
    for key in ("train.max_steps", "train.batch_size", "train.grad_accum_steps", "checkpoint.every_steps", "checkpoint.keep",
                "checkpoint.keep_best", "eval.every_steps", "reference.lora_rank", "likelihood.chunk_size"):
        _positive(config, key)
    samples = config.eval.num_samples
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ConfigError("eval.num_samples", f"must be an integer >= 0 (0 = no sampled gold-reward evaluation), "
                          f"got {samples!r}")
    vocab_chunk = config.likelihood.vocab_chunk_size
    if not isinstance(vocab_chunk, int) or vocab_chunk < 0:
        raise ConfigError("likelihood.vocab_chunk_size", f"must be an integer >= 0 (0 = one tile of the whole vocabulary), "
                          f"got {vocab_chunk!r}")
    coef = config.model.get("router_aux_loss_coef")
    if coef is not None and not coef >= 0:
        raise ConfigError("model.router_aux_loss_coef", f"must be >= 0 (0 = no load-balancing loss), got {coef!r}")
    for axis in ("data", "fsdp", "expert", "tensor"):
        size = config.mesh[axis]
        if not isinstance(size, int) or (size < 1 and size != -1):
            raise ConfigError(f"mesh.{axis}", f"must be a positive integer or -1 (the rest), got {size!r}")
    if [config.mesh[a] for a in ("data", "fsdp", "expert", "tensor")].count(-1) > 1:
        raise ConfigError("mesh", "at most one axis may be -1")
    validate_loss(config)
    _validate_subsample(config)
    _validate_ref_sync(config)
    if is_online(config):
        _validate_online(config)
    if config.task in ("train", "sft", "pretrain", "eval"):
        if config.likelihood.kind == "diffusion":
            _validate_diffusion(config)
        if config.data.packing:
            _validate_packing(config)
        _validate_mc_and_cache(config)
        if config.reference.mode == "precomputed" and config.loss.get("ld_alpha") is not None:
            raise ConfigError("loss.ld_alpha", "LD-DPO with reference.mode='precomputed' is not supported yet "
                              "(the stored reference sums are not length-desensitized); use reference.mode='copy'")
    unpaired = config.data.format in ("unpaired", "kto_mix")

    gym = config.data.format == "gym"  # the gym serves paired and unpaired sets alike
    # paired rows serve an unpaired loss as TRL's unpair_preference_dataset does (pojax.train.data.row_format)
    unpairable = config.data.format in ("paired", "hh_rlhf", "ultrafeedback_binarized")
    wants_unpaired = config.loss.name in UNPAIRED_LOSSES
    if not gym and config.task == "train" and (unpaired and not wants_unpaired or wants_unpaired and not
                                               (unpaired or unpairable)):
        kind = "unpaired" if unpaired else "paired"
        raise ConfigError("loss.name", f"{config.loss.name!r} does not take {kind} data (data.format={config.data.format!r})")
