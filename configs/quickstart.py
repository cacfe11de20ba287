"""Quickstart: DPO (sigmoid, β = 0.1) on the built-in gold-reward gym with a tiny random Llama.

    python -m pojax.main --config=configs/quickstart.py --workdir=/tmp/pojax_quickstart
    python -m pojax.main --config=configs/quickstart.py --config.loss.name=ipo --config.loss.beta=0.5
"""
from pojax.config import base_config


def get_config():
    config = base_config()
    config.task = "train"
    config.loss.name = "sigmoid"
    config.loss.beta = 0.1
    config.train.sft_steps = 300
    config.train.max_steps = 200
    config.train.batch_size = 32
    config.optimizer.learning_rate = 5e-4
    config.checkpoint.every_steps = 100
    return config
