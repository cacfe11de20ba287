"""The default run config: every key a recipe can set, with its default and meaning.

``base_config()`` is what every recipe in configs/ starts from; pojax.config validates it (and
re-exports both names, which is where callers import them from).
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict


# Every loss hyperparameter (TRL's names) with its type. The loss section holds each as an
# unset placeholder, so ``--config.loss.<name>=...`` works for any loss; unset ones keep the
# loss function's own default. Runtime state (BCO's ``state``) is not a config key.
LOSS_HPARAMS = {
    "beta": float, "label_smoothing": float, "f_divergence_type": str, "f_alpha_divergence_coef": float,
    "discopop_tau": float, "ld_alpha": float, "use_weighting": bool, "rpo_alpha": float,
    "loss_weights": tuple, "simpo_gamma": float, "cpo_alpha": float, "alpha": float,
    "asft_lambda": float, "desirable_weight": float, "undesirable_weight": float,
    "beta_dpo_alpha": float, "beta_dpo_filter": bool, "beta_dpo_rho": float, "beta_dpo_momentum": float,
    "madpo_c_max": float, "madpo_c_min": float, "madpo_lambda": float, "madpo_tau": float,
    "tdpo_alpha": float, "tgdpo_alpha": float, "kto_reference_point": str,
    "kto_baseline_ema_decay": float, "kto_centering_group_size": int,  # KTO's running / grouped reference points
    "ofs_alpha": float,  # OFS-DPO's regularizer weight (pojax.losses.online.ofs_dpo)
    "tpo_published_sign": bool,  # TPO: the authors' code's outer sign (reproduction only; listwise.tpo)
}


def base_config() -> ml_collections.ConfigDict:
    """The defaults every recipe starts from (a tiny random Llama on the gold-reward gym)."""
    c = ml_collections.ConfigDict()
    c.task = "train"  # sft | pretrain | train | eval | sample | export | diffpo

    c.model = ml_collections.ConfigDict()
    c.model.path = ""  # Hugging Face checkpoint dir; "" = random model from the sizes below
    c.model.family = "llama"  # llama | mistral | qwen2 | qwen3 | llada | dream: a random model when path == "" (every other family from a checkpoint)
    c.model.vocab_size = 256  # tokens
    c.model.hidden_size = 64  # D
    c.model.num_layers = 2
    c.model.num_heads = 4  # H
    c.model.num_kv_heads = 2  # K (GQA groups)
    c.model.intermediate_size = 128  # F, SwiGLU width
    c.model.dtype = "float32"  # float32 | bfloat16: compute dtype (trained parameters stay float32)
    c.model.scan_layers = False  # stack the layers under nnx.scan (compile time independent of depth)
    c.model.remat = "none"  # per-layer rematerialization: none | full | dots (pojax.models.config.REMAT_POLICIES)
    # TRL's router_aux_loss_coef: weight of a mixture-of-experts policy's load-balancing loss;
    # unset = the checkpoint's config.json value, 0 = off
    c.model.router_aux_loss_coef = config_dict.placeholder(float)

    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # file or dir in its upstream layout; "" for the built-in gym
    c.data.format = "gym"  # paired | unpaired | ranked | step | sft | hh_rlhf | ultrafeedback_binarized | kto_mix | gym
    c.data.max_prompt_length = 32  # tokens, prompts are truncated from the left
    c.data.max_completion_length = 32  # tokens, completions are truncated from the right
    c.data.max_length = 0  # TRL DPOConfig.max_length: tokens of prompt + completion per sequence, cut after the per-part limits; 0 = none (row width = max_prompt_length + max_completion_length)
    c.data.truncation_mode = "keep_start"  # TRL DPOConfig.truncation_mode: keep_start | keep_end of a sequence over data.max_length; keep_start drops rows whose prompt alone fills max_length
    c.data.completion_only_loss = True  # TRL SFTConfig.completion_only_loss: SFT on prompt-completion rows trains the completion only (False: every token)
    c.data.assistant_only_loss = False  # TRL SFTConfig.assistant_only_loss: SFT on conversations trains only the assistant's turns (the template's {% generation %} markers)
    c.data.packing = False  # pack pairs into fixed rows with segment ids (then train.batch_size counts rows)
    c.data.packed_length = 0  # tokens per packed row; 0 = twice the unpacked row width
    c.data.max_segments = 8  # sequences per packed row (2 per pair)
    c.data.chat_template = "auto"  # auto | yes | no: format prompts with the tokenizer's chat template
    c.data.tokenizer = ""  # tokenizer dir; "" = model.path
    c.data.tfds_dir = ""  # where upstream layouts are prepared as array_record; "" = ~/tensorflow_datasets
    c.data.skip_bad_rows = False  # skip (and count) invalid rows instead of stopping at the first
    # what ends each completion, i.e. the scored window: eos = what the chat template writes after it (end of turn)
    # or, for plain rows, EOS (TRL) | none = the completion's text alone (the ELBO-KTO authors'; empty ones dropped)
    c.data.completion_end = "eos"  # eos | none
    # unpaired training rows kept per label (the ELBO-KTO authors' --n_D / --n_U), each in [0, 1], not both 0
    c.data.desirable_fraction = 1.0  # fraction of desirable rows trained on (floor, at least 1 when > 0); 1 = all
    c.data.undesirable_fraction = 1.0  # fraction of undesirable rows trained on (floor, at least 1 when > 0); 1 = all
    c.data.subsample_seed = 42  # seed of that row sample (Python's random; the authors' --sample_seed=42)
    c.data.gym = ml_collections.ConfigDict()  # the built-in gold-reward gym (data.format = "gym")
    c.data.gym.num_symbols = 16  # symbols of the gym's alphabet
    c.data.gym.prompt_len = 6  # prompt symbols
    c.data.gym.response_len = 6  # response symbols
    c.data.gym.base_skill = 0.35  # probability that the base policy writes the rule's symbol
    c.data.gym.label_noise = 0.0  # fraction of flipped preference labels
    c.data.gym.num_train = 4096  # training examples (pairs, or unpaired completions)
    c.data.gym.num_eval = 256  # held-out prompts for the gold-reward evaluation

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "sigmoid"  # any pojax.losses.names(); "a+b" for a weighted sum
    for key, kind in LOSS_HPARAMS.items():  # TRL's names; unset = the loss's own default
        c.loss[key] = config_dict.placeholder(kind)
    c.loss.beta = 0.1  # TRL's β

    c.likelihood = ml_collections.ConfigDict()
    c.likelihood.kind = "autoregressive"  # autoregressive | diffusion
    c.likelihood.chunk_size = 1024  # sequence chunk of the chunked log-softmax, tokens
    c.likelihood.vocab_chunk_size = 8192  # vocabulary tile of the log-softmax (memory flat in V); 0 = one tile of V
    c.likelihood.shared_prompt = True  # the sequences of a pair / ranked set share one forward of their prompt
    c.likelihood.n_mc = 8  # Monte Carlo draws of the diffusion ELBO
    c.likelihood.estimator = "length_stratified"  # length_stratified | length | timestep_stratified | timestep
    c.likelihood.mc_stderr = False  # diffusion: eval_loss_mc_stderr from two half budgets at every evaluation (n_mc even)

    c.reference = ml_collections.ConfigDict()
    c.reference.mode = "copy"  # copy | precomputed | lora_base | none (reference-free losses)
    c.reference.path = ""  # task = "eval": HF dir of the reference / starting policy ("" = none)
    c.reference.lora_rank = 8  # reference.mode = "lora_base": adapter rank
    c.reference.lora_alpha = 16.0  # and scale numerator (scale = alpha / rank)
    c.reference.cache_dir = ""  # reference.mode = "precomputed": dir storing the values + manifest for reuse; "" = in-run only
    # reference.mode = "copy": the dtype the frozen copy's parameters are held in. "" = the policy's (float32 master
    # weights); "compute" = model.dtype (what TRL loads its reference in); or a dtype name ("bfloat16": half the bytes)
    c.reference.dtype = ""
    # TR-DPO (Gorbatovski et al., arXiv 2404.09656; TRL's names): with reference.mode = "copy", after every
    # ref_model_sync_steps-th optimizer step the reference becomes α·policy + (1 − α)·reference (pojax.train.step.sync_reference)
    c.reference.sync_ref_model = False  # TRL's sync_ref_model: move the reference towards the policy during training
    c.reference.ref_model_mixup_alpha = 0.6  # TRL's ref_model_mixup_alpha, α in [0, 1] (1 = hard update: reference ← policy)
    c.reference.ref_model_sync_steps = 512  # TRL's ref_model_sync_steps, τ: optimizer steps between syncs (>= 1)
    c.reference.guide_path = ""  # HF dir of a DPO-trained model: tgdpo's guide (required), or rto's π_dpo (set = RTO's online PPO stage)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 5e-4  # peak learning rate
    c.optimizer.schedule = "cosine"  # cosine | linear | constant, after warm-up
    c.optimizer.warmup_steps = 10  # steps
    c.optimizer.weight_decay = 0.0  # AdamW decoupled weight decay
    c.optimizer.b1 = 0.9  # AdamW β1
    c.optimizer.b2 = 0.999  # AdamW β2
    c.optimizer.max_grad_norm = 1.0  # global-norm clipping; 0 = off
    c.optimizer.mu_dtype = ""  # AdamW's first moment (optax's mu_dtype): "" = the parameters' dtype; "bfloat16" halves it
    c.optimizer.offload = False  # keep the optimizer state in host memory (memory kind pinned_host) between steps

    c.train = ml_collections.ConfigDict()
    c.train.max_steps = 100  # optimizer steps
    c.train.batch_size = 16  # global, in examples (pairs for paired data)
    c.train.grad_accum_steps = 1  # micro-batches per optimizer step
    c.train.seed = 0  # PRNG seed of init, data order and dropout
    c.train.sft_steps = 0  # SFT steps on the data's SFT split before preference training
    c.train.sft_learning_rate = 1e-3  # peak learning rate of that SFT stage
    c.train.nan_policy = "skip"  # a non-finite loss or gradient: skip (drop the update) | stop (keep the last good checkpoint)
    c.train.export_final = True  # write the trained policy to workdir/final as HF safetensors (LoRA merged)
    c.train.overwrite = False  # a workdir holding a run with another config: delete its outputs and start afresh
    # signals that mean "preempted soon": finish the step, checkpoint it, exit 75 (relaunch resumes); "" = off
    c.train.preemption_signals = "SIGTERM,SIGUSR1"
    c.train.step_timeout_s = 0.0  # > 0: no step done within this many seconds → thread stacks to stderr, exit 76

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices on the data axis; -1 = the rest
    c.mesh.fsdp = 1  # devices on the fsdp axis
    c.mesh.tensor = 1  # devices on the tensor axis
    c.mesh.expert = 1  # devices on the expert axis (mixture-of-experts models: experts split over it)
    # logical axis -> mesh axes overriding pojax.sharding.DEFAULT_RULES, as a comma-separated
    # string ("fsdp", "data,fsdp", "" = replicated), e.g. --config.mesh.rules.embed=""
    c.mesh.rules = ml_collections.ConfigDict()

    c.distributed = ml_collections.ConfigDict()  # multi-host (multi-controller) runs
    c.distributed.initialize = False  # call jax.distributed.initialize() before anything else
    c.distributed.coordinator_address = ""  # host:port of process 0; "" = auto-detect (TPU VMs, SLURM)
    c.distributed.num_processes = 0  # 0 = auto-detect
    c.distributed.process_id = -1  # -1 = auto-detect
    c.distributed.initialization_timeout_s = 300  # wait at most this long for every process to join
    c.distributed.heartbeat_timeout_s = 100  # a process silent this long is lost: the others exit non-zero
    c.distributed.shutdown_timeout_s = 300  # at exit, wait at most this long for the other processes

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 50  # steps between checkpoints
    c.checkpoint.keep = 2  # latest checkpoints kept (resume)
    c.checkpoint.best_metric = ""  # e.g. "eval_loss": also keep the best parameters by this eval metric
    c.checkpoint.best_mode = "min"  # min | max: which end of best_metric is best
    c.checkpoint.keep_best = 1  # best parameter sets kept (workdir/checkpoints/<stage>_best)

    c.export = ml_collections.ConfigDict()  # task = "export": a checkpoint of --workdir → HF safetensors
    c.export.path = ""  # output dir; "" = workdir/final
    c.export.checkpoint = "latest"  # latest | best (needs checkpoint.best_metric during training)
    c.export.stage = ""  # train | sft; "" = train if it has checkpoints, else sft

    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 50  # steps between evaluations
    c.eval.num_examples = 64  # held-out examples per evaluation
    c.eval.split = "held_out"  # task = "eval" on data.path: held_out (the rows training holds out: same file, train.seed, num_examples; upstream layouts: of the test split) | all (every row of the file / test split)
    c.eval.num_samples = 4  # sampled responses per prompt for gold-reward win rates; 0 = no sampled gold evaluation
    c.eval.temperature = 1.0  # sampling temperature of those responses
    c.eval.max_new_tokens = 256  # task = "eval": tokens generated per response (win rates, GSM8K, JSONL)
    c.eval.prompts_path = ""  # task = "eval": prompts (a "prompt" column) for judged win rates vs reference.path
    c.eval.judge_path = ""  # HF causal-LM dir of the pairwise judge
    c.eval.judge_template = ""  # judge prompt with {instruction}, {output_1}, {output_2}; "" = pojax's default
    c.eval.gsm8k_path = ""  # GSM8K rows (question, answer) for gsm8k_accuracy
    c.eval.mmlu_path = ""  # MMLU rows (question, choices, answer) for mmlu_accuracy
    c.eval.jsonl_path = ""  # generic rows (prompt, answer) for jsonl_accuracy (exact match)
    c.eval.num_fewshot = 0  # solved examples shown before each GSM8K / MMLU question (LLaDA's evals: 5)
    c.eval.gsm8k_fewshot_path = ""  # GSM8K rows the examples come from; "" = the first rows of gsm8k_path (then not scored)
    c.eval.mmlu_fewshot_path = ""  # MMLU rows the examples come from; "" = the first rows of mmlu_path (then not scored)
    c.eval.reward_model_path = ""  # HF sequence-classification dir (num_labels 1): rm_win_rate of policy vs reference
    # Masked-diffusion models (llada) only: LLaDA's reverse process in place of KV-cache decoding.
    c.eval.diffusion_steps = 0  # denoising steps for win-rate / JSONL responses; 0 = max_new_tokens (one per token)
    c.eval.diffusion_block_length = 0  # semi-autoregressive block, tokens (divides max_new_tokens); 0 = one block
    c.eval.cfg_scale = 0.0  # classifier-free guidance weight w >= 0 (0 = off); all diffusion generation
    c.eval.remasking = "low_confidence"  # low_confidence | random; all diffusion generation
    c.eval.gsm8k_gen_length = 256  # GSM8K answer tokens of a diffusion model (LLaDA: 256; AR uses max_new_tokens)
    c.eval.gsm8k_steps = 256  # its denoising steps (LLaDA: 256)
    c.eval.gsm8k_block_length = 8  # its block length, tokens (LLaDA: 8)
    c.eval.mmlu_gen_length = 3  # MMLU tokens a diffusion model generates; the first option letter counts (LLaDA: 3)
    c.eval.mmlu_steps = 3  # its denoising steps (LLaDA: 3)
    c.eval.mmlu_block_length = 3  # its block length, tokens (LLaDA: 3)
    c.eval.diagnostics = False  # CHES (arXiv 2410.08847) and implicit- vs reward-model accuracy (arXiv 2409.03650) on held-out pairs
    c.eval.lm_eval_tasks = ""  # lm-evaluation-harness tasks, comma-separated (gsm8k,arc_easy,...); pip install -e '.[eval]'
    c.eval.lm_eval_include_path = ""  # a directory of extra lm-eval task YAMLs (e.g. local JSON datasets)
    c.eval.lm_eval_include_defaults = True  # also index lm-eval's built-in tasks (False: only include_path's; faster)
    c.eval.lm_eval_num_fewshot = -1  # -1 = each task's own
    c.eval.lm_eval_limit = 0  # documents per task; 0 = all
    c.eval.lm_eval_apply_chat_template = False  # render prompts with the tokenizer's chat template
    c.eval.lm_eval_max_length = 0  # context tokens; 0 = config.json's max_position_embeddings
    c.eval.lm_eval_mc_num = 128  # masked-diffusion LMs: Monte Carlo draws per log-likelihood (LLaDA's eval)

    c.online = ml_collections.ConfigDict()  # loss.name in ONLINE_LOSSES (or rto with a guide, ``is_online``): samples drawn during training
    c.online.temperature = 1.0  # sampling temperature of the training completions (> 0)
    c.online.reward = "gold"  # the labelling reward callable: gold (the gym's gold reward)
    # ofs_dpo only (OFS-DPO, arXiv 2406.05534; pojax.train.ofs): two LoRA modules over the frozen SFT start
    c.online.fast_lr_ratio = 4.0  # η_F / η_S > 0: optimizer.learning_rate is the fast module's η_F, the slow's is η_F / this
    c.online.swap_every = 1  # steps per swap check: slow's mean DPO loss over them < fast's → exchange roles; 0 = never
    c.online.lora_rank = 8  # rank of each module's adapters (pojax.models.lora targets)
    c.online.lora_alpha = 16.0  # and their scale numerator (scale = alpha / rank)
    # rto with reference.guide_path (RTO's PPO stage, arXiv 2404.18922; pojax.train.rto): token rewards
    # r_t = clip(rto_dpo_beta·log π_dpo/π_ref, ±rto_dpo_clip) − rto_kl_coef·log π/π_ref
    #       + rto_seq_coef·clip((online.reward − rto_seq_mean)/rto_seq_std, ±rto_seq_clip) on the last token;
    # the defaults are the authors' (zkshan2002/RTO, examples/scripts/train_rto_llama_8b.sh)
    c.online.rto_dpo_beta = 0.05  # β₁ > 0: scale of the DPO token reward (their --dpo_reward_scale; not loss.beta)
    c.online.rto_dpo_clip = 0.05  # c₁ >= 0: clip of the scaled DPO token reward to ±c₁ (their --dpo_reward_clip); 0 = off
    c.online.rto_kl_coef = 0.01  # β₂ >= 0: per-token KL penalty of the policy at sampling time (their --init_kl_coef)
    c.online.rto_seq_coef = 1.0  # β₃ >= 0: weight of the normalized sequence reward online.reward on the last token; 0 = off
    c.online.rto_seq_mean = config_dict.placeholder(float)  # μ of the normalization; unset = measured (rto.sequence_reward_stats)
    c.online.rto_seq_std = config_dict.placeholder(float)  # σ > 0 of the normalization; unset = measured likewise
    c.online.rto_seq_clip = 10.0  # c₃ >= 0: clamp of the normalized sequence reward to ±c₃ (hard-coded 10 in their code); 0 = off
    c.online.gamma = 1.0  # GAE discount γ in [0, 1]
    c.online.gae_lambda = 0.95  # GAE λ in [0, 1]
    c.online.ppo_clip = 0.2  # PPO's ratio clip ε > 0
    c.online.value_coef = 0.1  # c_v >= 0: weight of the value head's squared error
    c.online.ppo_epochs = 1  # optimizer steps per rollout (>= 1); checkpoint.every_steps must be a multiple

    c.logging = ml_collections.ConfigDict()
    c.logging.every_steps = 1  # steps between metrics.jsonl lines
    c.logging.plots = True  # write plots/*.png at the end of the run
    c.logging.progress = True  # tqdm progress bar
    c.logging.wandb = False  # also log to Weights & Biases (pip install -e '.[wandb]'; pojax.train.wandb_log)
    c.logging.wandb_project = "pojax"
    c.logging.wandb_entity = ""  # "" = W&B's default entity
    c.logging.wandb_name = ""  # "" = the workdir's name
    c.logging.wandb_group = ""
    c.logging.wandb_tags = ""  # comma-separated
    return c
