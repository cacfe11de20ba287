"""KTO on any Hugging Face causal LM and unpaired data (prompt, completion, label), e.g. kto-mix.

    python -m pojax.main --config=configs/kto.py --config.model.path=<HF dir> \\
        --config.data.path=/data/kto-mix-14k --config.data.format=kto_mix
"""
import importlib.util
import os


def get_config():
    spec = importlib.util.spec_from_file_location("dpo_recipe", os.path.join(os.path.dirname(__file__), "dpo.py"))
    dpo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dpo)
    config = dpo.get_config()
    config.data.format = "unpaired"  # unpaired | kto_mix
    config.loss.name = "kto"
    config.loss.beta = 0.1
    config.loss.desirable_weight = 1.0  # KTO paper: keep λ_D·n_D / λ_U·n_U in [1, 4/3]
    config.loss.undesirable_weight = 1.0
    config.optimizer.learning_rate = 5e-7
    return config
