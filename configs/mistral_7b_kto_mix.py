"""KTO on a Mistral-7B SFT model with kto-mix-14k: Kahneman-Tversky Optimization (Ethayarajh et al.,
arXiv 2402.01306, Eqs. 7–8) with the paper's defaults — β = 0.1, λ_D = λ_U = 1 — and the
settings of its reference code (ContextualAI/HALOs: AdamW, learning rate 5e-6, batch 32, 150
warm-up steps, max length 1024 with prompts of at most 512 tokens). The starting model is
Zephyr's SFT model (HuggingFaceH4/mistral-7b-sft-beta, Mistral-7B-v0.1 fine-tuned on UltraChat),
as in the paper's Zephyr-β-SFT experiments.

On a TPU VM (every host runs the same command) or a GPU machine, with local copies of
HuggingFaceH4/mistral-7b-sft-beta and trl-lib/kto-mix-14k (the upstream directory:
data/train-*.parquet, data/test-*.parquet):

    python -m pojax.main --config=configs/mistral_7b_kto_mix.py \\
        --config.model.path=/ckpts/mistral-7b-sft-beta \\
        --config.data.path=/data/kto-mix-14k \\
        --config.data.tfds_dir=/data/tfds \\
        --workdir=/runs/mistral_7b_kto_mix

KTO's reference point z0 is the batch mean of log π/π_ref on mismatched (prompt, completion) pairs
(clamped at 0, no gradient): it couples the global batch, so keep train.batch_size ≥ 16. kto-mix
is about balanced (each source pair gives one desirable and one undesirable completion), so
λ_D = λ_U = 1 keeps λ_D·n_D / (λ_U·n_U) in the paper's recommended [1, 4/3]; re-weight for
imbalanced data. Departure: fixed-width rows of 512 prompt + 512 completion tokens instead of a
per-row 1024-token budget.
"""
from pojax.config import base_config

TRAIN_ROWS = 13_500  # rows of kto-mix-14k's train split
BATCH = 32  # HALOs' batch size
EPOCH_STEPS = -(-TRAIN_ROWS // BATCH)  # 422 optimizer steps = 1 epoch


def get_config():
    config = base_config()
    config.task = "train"  # preference optimization from the SFT model (no SFT stage here)

    config.model.path = ""  # required: --config.model.path=<mistral-7b-sft-beta HF dir>
    config.model.dtype = "bfloat16"  # compute dtype; master parameters, norms, softmax and log-probs stay float32
    config.model.scan_layers = True  # nnx.scan over the 32 layers: compile time independent of depth
    config.model.remat = "full"  # recompute each layer in the backward pass (activation memory of 1 layer)

    config.data.path = ""  # required: --config.data.path=<kto-mix-14k upstream dir>
    config.data.format = "kto_mix"  # unpaired rows (prompt, completion, label); train / test splits
    config.data.max_prompt_length = 512  # tokens; prompts keep their end (HALOs: max_prompt_length 512)
    config.data.max_completion_length = 512  # tokens; 512 + 512 = HALOs' max_length 1024
    config.data.chat_template = "auto"  # Zephyr chat template of the tokenizer
    config.data.tfds_dir = ""  # where the array_record copy is prepared once; "" = ~/tensorflow_datasets

    config.loss.name = "kto"  # Eqs. 7–8 with TRL's mismatched-pair z0
    config.loss.beta = 0.1  # KTO paper default
    config.loss.desirable_weight = 1.0  # λ_D, paper default (balanced data)
    config.loss.undesirable_weight = 1.0  # λ_U, paper default (balanced data)

    config.likelihood.chunk_size = 256  # sequence chunk of the chunked log-softmax, tokens

    config.reference.mode = "copy"  # frozen copy of the SFT model (z0 needs reference log-probs too)

    config.optimizer.learning_rate = 5e-6  # HALOs default (TRL's docs suggest 5e-7 to 5e-6; lower it if rewards collapse)
    config.optimizer.schedule = "constant"  # constant after warm-up (HALOs)
    config.optimizer.warmup_steps = 150  # linear warm-up steps (HALOs)
    config.optimizer.weight_decay = 0.0  # no weight decay
    config.optimizer.max_grad_norm = 1.0  # global-norm clipping

    config.train.max_steps = EPOCH_STEPS  # 1 epoch of the train split at batch 32
    config.train.batch_size = BATCH  # global, in completions
    config.train.grad_accum_steps = 1  # micro-batch 32; must divide by the device count (mesh.data × mesh.fsdp)
    config.train.seed = 1  # HALOs' default seed (orders the data)
    config.train.sft_steps = 0  # the starting model is already SFT'd

    config.mesh.data = 1  # no pure data-parallel replicas
    config.mesh.fsdp = -1  # FSDP over every device (parameters, gradients and Adam state sharded)
    config.mesh.tensor = 1  # no tensor parallelism

    config.checkpoint.every_steps = 100  # steps between checkpoints (resume)
    config.checkpoint.keep = 2  # latest checkpoints kept
    config.checkpoint.best_metric = "eval_loss"  # also keep the parameters with the lowest held-out KTO loss
    config.checkpoint.best_mode = "min"  # lower eval_loss is better
    config.checkpoint.keep_best = 1  # best parameter sets kept

    config.eval.every_steps = 100  # steps between held-out evaluations (and at the end)
    config.eval.num_examples = 256  # completions of the test split evaluated (HALOs: n_eval_examples 256)

    config.logging.every_steps = 1  # metrics.jsonl line every step
    config.logging.progress = True  # tqdm progress bar
    return config
