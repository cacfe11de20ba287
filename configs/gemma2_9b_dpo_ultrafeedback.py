"""DPO (sigmoid) on Gemma-2-9B-it with UltraFeedback-binarized: the SimPO paper's Instruct DPO
setting (Meng et al., arXiv 2405.14734: β = 0.01, batch 128, 1 epoch, warm-up 10 %, cosine, max
length 2048; its v2 results add Gemma-2-9B-it) on Google's Gemma 2 (Gemma Team, arXiv 2408.00118).

On a TPU VM (every host runs the same command) or a GPU machine, with local copies of
google/gemma-2-9b-it and HuggingFaceH4/ultrafeedback_binarized (the upstream directory:
data/train_prefs-*.parquet, data/test_prefs-*.parquet):

    python -m pojax.main --config=configs/gemma2_9b_dpo_ultrafeedback.py \\
        --config.model.path=/ckpts/gemma-2-9b-it \\
        --config.data.path=/data/ultrafeedback_binarized \\
        --config.data.tfds_dir=/data/tfds \\
        --workdir=/runs/gemma2_9b_dpo_ultrafeedback

Gemma 2 specifics pojax keeps from the checkpoint's config.json: attention-logit (50) and
final-logit (30) soft caps — the final cap also inside the vocabulary-tiled log-probs of the
256k vocabulary — alternating 4096-token sliding-window and global layers, (1 + w) RMSNorms
before and after attention and MLP, GeGLU, scaled tied embeddings (pojax.models.transformer).
Attention runs pojax's XLA path (model.attention_impl = "xla"): jax.nn.dot_product_attention has
no soft cap.

Departures: the learning rate is the paper's Llama-3-Instruct DPO value (7e-7), not a value tuned
for Gemma 2; the SimPO repository's Gemma-2 runs train on on-policy pairs
(princeton-nlp/gemma2-ultrafeedback-armorm: pass its train parquet file with
--config.data.format=paired); pojax rows have a fixed width, so max_length 2048 is split 1024
prompt + 1024 completion tokens; no dropout.
"""
from pojax.config import base_config

TRAIN_PAIRS = 61_135  # rows of UltraFeedback-binarized's train_prefs split
BATCH = 128  # global batch of the SimPO paper (all methods)
EPOCH_STEPS = -(-TRAIN_PAIRS // BATCH)  # 478 optimizer steps = 1 epoch


def get_config():
    config = base_config()
    config.task = "train"  # preference optimization (no SFT stage: the Instruct model is the SFT model)

    config.model.path = ""  # required: --config.model.path=<gemma-2-9b-it HF dir>
    config.model.dtype = "bfloat16"  # compute dtype; master parameters, norms, softmax and log-probs stay float32
    config.model.scan_layers = True  # nnx.scan over the 42 layers: compile time independent of depth
    config.model.attention_impl = "xla"  # pojax's attention: Gemma 2's attention-logit soft cap
    config.model.remat = "full"  # recompute each layer in the backward pass (activation memory of 1 layer)

    config.data.path = ""  # required: --config.data.path=<ultrafeedback_binarized upstream dir>
    config.data.format = "ultrafeedback_binarized"  # train_prefs for training, test_prefs held out
    config.data.max_prompt_length = 1024  # tokens; prompts keep their end (TRL)
    config.data.max_completion_length = 1024  # tokens; 1024 + 1024 = the paper's max_length 2048
    config.data.chat_template = "auto"  # Gemma chat template of the tokenizer (<start_of_turn>user ... model)
    config.data.tfds_dir = ""  # where the array_record copy is prepared once; "" = ~/tensorflow_datasets

    config.loss.name = "sigmoid"  # DPO, Rafailov et al. (arXiv 2305.18290) Eq. 7
    config.loss.beta = 0.01  # SimPO paper's tuned β for the Llama-3-Instruct DPO baseline

    config.likelihood.chunk_size = 256  # sequence chunk of the log-softmax over the 256k vocabulary, tokens

    config.reference.mode = "copy"  # frozen copy of the starting policy (bf16 compute, float32 weights)

    config.optimizer.learning_rate = 7e-7  # SimPO paper's Llama-3-Instruct DPO baseline (not tuned for Gemma 2)
    config.optimizer.schedule = "cosine"  # cosine decay to 0 after warm-up (paper)
    config.optimizer.warmup_steps = round(0.1 * EPOCH_STEPS)  # warm-up ratio 0.1 → 48 steps
    config.optimizer.weight_decay = 0.0  # AdamW without weight decay (alignment-handbook default)
    config.optimizer.max_grad_norm = 1.0  # global-norm clipping (HF Trainer default)

    config.train.max_steps = EPOCH_STEPS  # 1 epoch of train_prefs at batch 128
    config.train.batch_size = BATCH  # global, in pairs
    config.train.grad_accum_steps = 8  # micro-batch 16 pairs (9B, 256k vocabulary); it must divide by the device count (mesh.data × mesh.fsdp)
    config.train.seed = 42  # seed of the paper's code (init is the checkpoint; this orders the data)
    config.train.sft_steps = 0  # no SFT stage

    config.mesh.data = 1  # no pure data-parallel replicas
    config.mesh.fsdp = -1  # FSDP over every device (parameters, gradients and Adam state sharded)
    config.mesh.tensor = 1  # no tensor parallelism

    config.checkpoint.every_steps = 100  # steps between checkpoints (resume)
    config.checkpoint.keep = 2  # latest checkpoints kept
    config.checkpoint.best_metric = "eval_loss"  # also keep the parameters with the lowest held-out DPO loss
    config.checkpoint.best_mode = "min"  # lower eval_loss is better
    config.checkpoint.keep_best = 1  # best parameter sets kept

    config.eval.every_steps = 100  # steps between held-out evaluations (and at the end)
    config.eval.num_examples = 2000  # pairs of test_prefs evaluated (the whole split)

    config.logging.every_steps = 1  # metrics.jsonl line every step
    config.logging.progress = True  # tqdm progress bar
    return config
