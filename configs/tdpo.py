"""TDPO (token-level DPO, Zeng et al., arXiv 2404.11999) on the built-in gold-reward gym: the
quickstart's model and SFT start, DPO plus the per-token KL(π_ref ‖ π) over the vocabulary
(TDPO2: α·(D_l − sg(D_w)), computed chunked by pojax.likelihood.token_kl) against the frozen copy.

    python -m pojax.main --config=configs/tdpo.py --workdir=/tmp/pojax_tdpo
    python -m pojax.main --config=configs/tdpo.py --config.loss.tdpo_alpha=1.0 --config.reference.mode=lora_base

reference.mode: copy | lora_base (the per-token KL needs the reference's full distributions;
precomputed and none are refused). tdpo_alpha = 0 is sigmoid DPO.
"""
import os

from pojax.config import recipe


def get_config():
    config = recipe(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))  # its gym, model, SFT start, steps, lr
    config.loss.name = "tdpo"  # pojax.losses registry name
    config.loss.beta = 0.1  # DPO's β
    config.loss.tdpo_alpha = 0.5  # α of TDPO2 (the authors' default)
    config.reference.mode = "copy"  # copy | lora_base
    return config
