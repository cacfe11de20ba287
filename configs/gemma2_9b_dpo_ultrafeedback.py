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

Every other setting is configs/llama3_8b_dpo_ultrafeedback.py's (β = 0.01, learning rate 7e-7,
cosine, batch 128, 1 epoch, FSDP over every device, bf16 compute, full remat). Departures: the
learning rate is the paper's Llama-3-Instruct DPO value, not a value tuned for Gemma 2; the SimPO repository's Gemma-2 runs train on on-policy pairs
(princeton-nlp/gemma2-ultrafeedback-armorm: pass its train parquet file with
--config.data.format=paired); pojax rows have a fixed width, so max_length 2048 is split 1024
prompt + 1024 completion tokens; no dropout.
"""
import os

from pojax.config import recipe

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
    config = recipe(os.path.join(HERE, "llama3_8b_dpo_ultrafeedback.py"))  # the paper's DPO settings, data and schedule
    config.model.path = ""  # required: --config.model.path=<gemma-2-9b-it HF dir>
    config.model.attention_impl = "xla"  # pojax's attention: Gemma 2's attention-logit soft cap (42 layers under nnx.scan)
    config.data.chat_template = "auto"  # Gemma chat template of the tokenizer (<start_of_turn>user ... model)
    config.likelihood.chunk_size = 256  # sequence chunk of the log-softmax over the 256k vocabulary, tokens
    config.train.grad_accum_steps = 8  # micro-batch 16 pairs (9B, 256k vocabulary); it must divide by the device count
    return config
