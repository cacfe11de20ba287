"""Curry-DPO (curriculum DPO, Pattnaik et al., arXiv 2403.07230) on the built-in gold-reward gym:
sigmoid DPO over pairs read easy → hard, by descending score gap score_chosen − score_rejected
(the gym's gold reward; UltraFeedback-style scores for paired files), ties in a seeded order,
without shuffling; each epoch repeats the curriculum (pojax.data.pipeline.curriculum_order).

    python -m pojax.main --config=configs/curry_dpo.py --workdir=/tmp/pojax_curry_dpo

data.format: gym | paired | ultrafeedback_binarized (rows with score_chosen / score_rejected) |
ranked (each prompt's best response against every lower-scored one, so (best, worst) comes first).
"""
from pojax.config import base_config


def get_config():
    config = base_config()  # the quickstart's tiny random Llama on the gym
    config.task = "train"  # SFT stage, then preference optimization
    config.loss.name = "curry_dpo"  # sigmoid DPO; the name selects the curriculum order
    config.loss.beta = 0.1  # DPO's β
    config.train.sft_steps = 300  # the quickstart's SFT start
    config.train.max_steps = 200  # preference steps: 6400 pairs, the curriculum 1.6 times
    config.train.batch_size = 32  # pairs per step
    config.optimizer.learning_rate = 5e-4  # peak learning rate
    config.checkpoint.every_steps = 100  # steps between checkpoints
    return config
