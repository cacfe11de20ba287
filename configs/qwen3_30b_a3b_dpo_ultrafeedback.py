"""DPO (sigmoid) on Qwen3-30B-A3B, a mixture of experts (48 layers, 128 experts per layer, top-8
routing with renormalized weights, 3.3B of 30.5B parameters active per token; Qwen Team,
arXiv 2505.09388), with UltraFeedback-binarized, on the SimPO paper's DPO settings (Meng et al.,
arXiv 2405.14734: β = 0.01, learning rate 7e-7, batch 128, 1 epoch, warm-up 10 %, cosine).

On a TPU VM slice (every host runs the same command) or a GPU machine, with local copies of
Qwen/Qwen3-30B-A3B and HuggingFaceH4/ultrafeedback_binarized (data/train_prefs-*.parquet,
data/test_prefs-*.parquet):

    python -m pojax.main --config=configs/qwen3_30b_a3b_dpo_ultrafeedback.py \\
        --config.model.path=/ckpts/Qwen3-30B-A3B \\
        --config.data.path=/data/ultrafeedback_binarized \\
        --config.data.tfds_dir=/data/tfds \\
        --workdir=/runs/qwen3_30b_a3b_dpo_ultrafeedback

Mixture-of-experts specifics (pojax.models.moe): dropless routing (jax.lax.ragged_dot over the
tokens sorted by expert on TPU / GPU), and the router's load-balancing loss added to the DPO loss
with TRL's name and the checkpoint's own weight (model.router_aux_loss_coef = 0.001, as
Qwen3-30B-A3B's config.json; TRL adds it the same way; 0 turns it off), logged as aux_loss. The
experts are sharded with FSDP over every device like every other parameter; expert parallelism
splits whole experts over a mesh axis instead: --config.mesh.expert=8 (the batch is then split
over data × fsdp × expert).

Departures: the SimPO paper does not train Qwen3-30B-A3B; its Llama-3-Instruct DPO settings are
used as they are (configs/llama3_8b_dpo_ultrafeedback.py), with Qwen3's chat template. Qwen3's
thinking mode is left to the template's default. Rows have a fixed width: 1024 prompt + 1024
completion tokens.
"""
import os

from pojax.config import recipe

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
    config = recipe(os.path.join(HERE, "llama3_8b_dpo_ultrafeedback.py"))  # the paper's DPO settings, data and schedule
    config.model.path = ""  # required: --config.model.path=<Qwen3-30B-A3B HF dir>
    config.model.router_aux_loss_coef = 0.001  # TRL's router_aux_loss_coef (Qwen3-30B-A3B's config.json value)
    config.data.chat_template = "auto"  # Qwen3 chat template of the tokenizer
    config.likelihood.chunk_size = 256  # sequence chunk of the log-softmax over the 152k vocabulary, tokens
    config.train.grad_accum_steps = 8  # micro-batch 16 pairs; it must divide by the device count
    config.mesh.expert = 1  # devices per expert group; >1 = expert parallelism (e.g. 8 on a v5p-64)
    return config
