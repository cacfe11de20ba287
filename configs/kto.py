"""KTO on any Hugging Face causal LM and unpaired data (prompt, completion, label), e.g. kto-mix.

    python -m pojax.main --config=configs/kto.py --config.model.path=<HF dir> \\
        --config.data.path=/data/kto-mix-14k --config.data.format=kto_mix
"""
import os

from pojax.config import recipe


def get_config():
    config = recipe(os.path.join(os.path.dirname(os.path.abspath(__file__)), "dpo.py"))
    config.data.format = "unpaired"  # unpaired | kto_mix
    config.loss.name = "kto"
    config.loss.beta = 0.1
    config.loss.desirable_weight = 1.0  # KTO paper: keep λ_D·n_D / λ_U·n_U in [1, 4/3]
    config.loss.undesirable_weight = 1.0
    config.optimizer.learning_rate = 5e-7
    return config
