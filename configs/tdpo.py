"""TDPO (token-level DPO, Zeng et al., arXiv 2404.11999) on the built-in gold-reward gym: the
quickstart's model and SFT start, DPO plus the per-token KL(π_ref ‖ π) over the vocabulary
(TDPO2: α·(D_l − sg(D_w)), computed chunked by pojax.likelihood.token_kl) against the frozen copy.

    python -m pojax.main --config=configs/tdpo.py --workdir=/tmp/pojax_tdpo
    python -m pojax.main --config=configs/tdpo.py --config.loss.tdpo_alpha=1.0 --config.reference.mode=lora_base

reference.mode: copy | lora_base (the per-token KL needs the reference's full distributions;
precomputed and none are refused). tdpo_alpha = 0 is sigmoid DPO.
"""
from pojax.config import base_config


def get_config():
    config = base_config()  # the quickstart's tiny random Llama on the gym
    config.task = "train"  # SFT stage, then preference optimization
    config.loss.name = "tdpo"  # pojax.losses registry name
    config.loss.beta = 0.1  # DPO's β
    config.loss.tdpo_alpha = 0.5  # α of TDPO2 (the authors' default)
    config.reference.mode = "copy"  # copy | lora_base
    config.train.sft_steps = 300  # the quickstart's SFT start
    config.train.max_steps = 200  # preference steps
    config.train.batch_size = 32  # pairs per step
    config.optimizer.learning_rate = 5e-4  # peak learning rate
    config.checkpoint.every_steps = 100  # steps between checkpoints
    return config
