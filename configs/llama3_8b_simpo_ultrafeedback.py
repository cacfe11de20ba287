"""SimPO on Llama-3-8B-Instruct with UltraFeedback-binarized: the Llama-3-Instruct setting of the
SimPO paper (Meng et al., arXiv 2405.14734, Eq. 6; hyperparameters of its Llama3-Instruct row:
β = 2.5, γ/β = 0.55, learning rate 1e-6, batch 128, 1 epoch, warm-up 10 %, cosine, max length
2048). Reference-free: no second model in memory.

Everything but the loss, the learning rate and the reference is configs/llama3_8b_dpo_ultrafeedback.py
(the paper trains SimPO and its DPO baseline on the same data with the same pipeline).

On a TPU VM (every host runs the same command) or a GPU machine, with local copies of
meta-llama/Meta-Llama-3-8B-Instruct and HuggingFaceH4/ultrafeedback_binarized (the upstream
directory: data/train_prefs-*.parquet, data/test_prefs-*.parquet):

    python -m pojax.main --config=configs/llama3_8b_simpo_ultrafeedback.py \\
        --config.model.path=/ckpts/Meta-Llama-3-8B-Instruct \\
        --config.data.path=/data/ultrafeedback_binarized \\
        --config.data.tfds_dir=/data/tfds \\
        --workdir=/runs/llama3_8b_simpo_ultrafeedback

pojax's (TRL's) ``simpo_gamma`` is the margin γ itself, not the paper code's gamma_beta_ratio:
γ = 0.55 × 2.5 = 1.375. The loss is -log σ(β(r̄_w - r̄_l) - γ) with r̄ the mean token log-prob of a
completion. Departures: the paper's Llama-3-Instruct runs use on-policy pairs
(princeton-nlp/llama3-ultrafeedback: pass its train parquet file with --config.data.format=paired);
the 2048-token budget is split 1024 prompt + 1024 completion tokens (fixed-width rows).
"""
import os

from pojax.config import recipe

HERE = os.path.dirname(os.path.abspath(__file__))

BETA = 2.5  # SimPO paper, Llama3-Instruct
GAMMA_BETA_RATIO = 0.55  # SimPO paper, Llama3-Instruct


def get_config():
    config = recipe(os.path.join(HERE, "llama3_8b_dpo_ultrafeedback.py"))  # model, data, schedule, mesh, checkpoints, eval
    config.loss.name = "simpo"  # length-normalized, reference-free, target margin γ (Eq. 6)
    config.loss.beta = BETA  # reward scale β
    config.loss.simpo_gamma = GAMMA_BETA_RATIO * BETA  # target reward margin γ = 1.375 (TRL's simpo_gamma)
    config.loss.cpo_alpha = 0.0  # no behaviour-cloning term (plain SimPO, not CPO-SimPO)
    config.reference.mode = "none"  # SimPO needs no reference model
    config.optimizer.learning_rate = 1e-6  # SimPO paper, Llama3-Instruct
    return config
