"""MADPO (margin-adaptive DPO, Hyung Gyu Rho, arXiv 2510.05342) on the built-in gold-reward gym:
DPO reweighted per pair by w(h), h = r(x, y_w) − r(x, y_l) the reward margin of the pair's scores
(the gym's gold reward here; score_chosen / score_rejected of paired or ultrafeedback_binarized
files), computed once before training and carried in every batch as reward_margin.

    python -m pojax.main --config=configs/madpo.py --workdir=/tmp/pojax_madpo
    python -m pojax.main --config=configs/madpo.py --config.data.format=ultrafeedback_binarized \\
        --config.model.path=<HF dir> --config.data.path=<ultrafeedback_binarized dir>

The gym's margins are fractions of the 6 response positions (1/6 … 1), so τ and λ are set on
that scale: margins below τ count as hard (amplified up to c_max), above as easy (down to c_min).
"""
import os

from pojax.config import recipe


def get_config():
    config = recipe(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))  # its gym, model, SFT start, steps, lr
    config.loss.name = "madpo"  # pojax.losses registry name
    config.loss.beta = 0.1  # DPO's β
    config.loss.madpo_c_max = 2.0  # weight scale of the hardest pairs (> 1)
    config.loss.madpo_c_min = 0.5  # weight scale of the easiest pairs (< 1)
    config.loss.madpo_tau = 0.5  # margin τ where c = 1, in gold-reward units (the author's 2 is for RM logits)
    config.loss.madpo_lambda = 8.0  # steepness λ of the transition, per gold-reward unit
    return config
