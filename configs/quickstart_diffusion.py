"""Quickstart for masked-diffusion LMs: ELBO-KTO (arXiv 2510.23658) on the gold-reward gym with a
tiny random LLaDA-style model, on a laptop CPU.

SFT with LLaDA's masked-diffusion loss, then KTO on Monte Carlo ELBOs (policy and reference share
every draw; the reference point z0 is TRL's mismatched-completion estimate here, so that any
other loss runs by name; --config.loss.kto_reference_point=batch_mean is the ELBO-KTO authors'
choice), then responses sampled with LLaDA's reverse process from both policies and scored by
the gym's gold reward:

    python -m pojax.main --config=configs/quickstart_diffusion.py --workdir=/tmp/pojax_diffusion
    python -m pojax.main --config=configs/quickstart_diffusion.py --config.loss.name=sigmoid   # ELBO-DPO (VRPO-style shared draws)
"""
from pojax.config import base_config


def get_config():
    config = base_config()
    config.task = "train"
    config.model.family = "llada"  # bidirectional mask predictor; the gym's vocabulary + one [MASK] token
    config.likelihood.kind = "diffusion"  # ELBOs in place of log-likelihoods
    config.likelihood.n_mc = 4  # Monte Carlo draws per ELBO (the paper uses 8)
    config.likelihood.estimator = "length_stratified"  # mask exactly l of L tokens, l stratified over draws
    config.loss.name = "kto"
    config.loss.beta = 0.1
    config.train.sft_steps = 400  # masked-diffusion SFT steps on the gym's SFT set
    config.train.sft_learning_rate = 2e-3  # peak learning rate of that stage
    config.train.max_steps = 200  # ELBO-KTO steps
    config.train.batch_size = 32  # examples per step
    config.optimizer.learning_rate = 1e-3  # peak learning rate of ELBO-KTO
    config.checkpoint.every_steps = 100  # steps between checkpoints
    config.eval.temperature = 1.0  # sample (Gumbel noise) for the gold reward: greedy decoding solves the gym outright
    config.eval.num_samples = 4  # responses per prompt
    return config
