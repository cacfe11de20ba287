"""ELBO-DPO with VRPO's variance reduction (LLaDA 1.5, arXiv 2505.19223): sigmoid DPO on ELBO
differences of a masked-diffusion LM, with the paper's three techniques: a sampling budget of
n = 8 ELBO draws, its optimal allocation (n timesteps with one mask each: the stratified
timestep estimator), and antithetic sampling (policy and reference share every timestep and
mask, per response). LLaDA-8B-Instruct on UltraFeedback-binarized.

    python -m pojax.main --config=configs/vrpo.py \\
        --config.model.path=/ckpts/LLaDA-8B-Instruct \\
        --config.data.path=/data/ultrafeedback_binarized \\
        --config.data.tfds_dir=/data/tfds --workdir=/runs/vrpo

The learning rate and β below are starting points (the paper trains on its own large preference
set); sweep them with experiments/launch.py.
"""
from pojax.config import base_config


def get_config():
    config = base_config()
    config.task = "train"  # preference optimization of an instruct model

    config.model.path = ""  # required: --config.model.path=<LLaDA-8B-Instruct HF dir>
    config.model.family = "llada"  # masked-diffusion LM
    config.model.dtype = "bfloat16"  # compute dtype; master parameters and ELBO math stay float32
    config.model.scan_layers = True  # nnx.scan over the layers
    config.model.remat = "full"  # recompute each layer in the backward pass

    config.data.path = ""  # required: --config.data.path=<ultrafeedback_binarized upstream dir>
    config.data.format = "ultrafeedback_binarized"  # train_prefs / test_prefs
    config.data.max_prompt_length = 512  # tokens
    config.data.max_completion_length = 512  # tokens
    config.data.chat_template = "auto"  # the model's chat template

    config.likelihood.kind = "diffusion"  # ELBOs in place of log-likelihoods
    config.likelihood.n_mc = 8  # VRPO's sampling budget n
    config.likelihood.estimator = "timestep_stratified"  # n stratified timesteps, one mask each
    config.likelihood.chunk_size = 256  # sequence chunk of the chunked log-softmax

    config.loss.name = "sigmoid"  # DPO on B_θ − B_ref
    config.loss.beta = 0.1  # β

    config.reference.mode = "copy"  # frozen copy; draws are shared with the policy (antithetic)

    config.optimizer.learning_rate = 5e-7  # peak learning rate
    config.optimizer.schedule = "cosine"  # cosine decay after warm-up
    config.optimizer.warmup_steps = 50  # warm-up steps
    config.optimizer.weight_decay = 0.01  # AdamW weight decay
    config.optimizer.b1 = 0.9  # AdamW β1
    config.optimizer.b2 = 0.95  # AdamW β2

    config.train.max_steps = 1000  # optimizer steps
    config.train.batch_size = 64  # global pairs per step
    config.train.grad_accum_steps = 8  # micro-batches of 8 pairs

    config.mesh.data = 1  # no pure data-parallel replicas
    config.mesh.fsdp = -1  # FSDP over every device
    config.mesh.tensor = 1  # no tensor parallelism

    config.checkpoint.every_steps = 100  # steps between checkpoints
    config.checkpoint.best_metric = "eval_loss"  # also keep the best parameters by held-out loss
    config.eval.every_steps = 100  # steps between held-out evaluations
    config.eval.num_examples = 256  # test_prefs pairs evaluated
    return config
