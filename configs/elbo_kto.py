"""ELBO-KTO: KTO on Monte Carlo ELBOs of a masked-diffusion LM ("Aligning Diffusion Language
Models via Unpaired Preference Optimization", arXiv 2510.23658), LLaDA-8B-Instruct on kto-mix-14k
with the authors' settings (github.com/vaibhavjindal/elbo-kto, commit 80dc31e): K = 8 ELBO draws
per completion, each masking exactly l of the L completion tokens with l drawn independently and
uniformly from 1..L per draw, weight L/l (their ``l_from_seed``: ``likelihood.estimator=length``);
the same draws for policy and reference, fixed per example; L counts the completion's own tokens
only — no end of turn or EOS after it (their ``data_utils.build_example``:
``data.completion_end=none``); β = 0.1, reference point z0 = the detached batch mean of
r̂ = B_θ − B_ref (their ``global_mean``), AdamW (0.9, 0.95) with weight decay 0.01, learning rate
1e-6 with 3% warm-up then cosine, bf16, one epoch. Their ``--n_D`` / ``--n_U`` (fractions of the
desirable / undesirable rows trained on, default 1) are ``data.desirable_fraction`` /
``data.undesirable_fraction`` with ``data.subsample_seed`` = their ``--sample_seed`` (42).

pojax's recommended estimator is ``--config.likelihood.estimator=length_stratified`` (one l per
row, the K lengths spread evenly over 1..L; LLaDA's get_log_likelihood.py): unbiased like
``length``, with a modest variance gain: ``length``'s Var(B) is 1.05–1.16x the stratified one at
K = 4 on a toy model's 2–4-token responses (tests/likelihood/test_diffusion.py,
test_variance_falls_as_one_over_n_mc, exact ELBOs by enumeration), and with
experiments/elbo_variance.py (README, "Masked-diffusion LMs") a shared-draw Var(r̂) of 1.6e-4
against 2.0e-4 at K = 8 on the gym's 6-token responses, where Var(B_θ) is 1.18 / 0.33 / 0.082
(stratified) against 1.18 / 0.34 / 0.075 (``length``) at K = 1 / 4 / 16, equal within that
measurement's noise. Neither was measured on LLaDA-8B's long responses.

Where this recipe still departs from the authors' run: their sequences are cut at 4096 tokens
in all (keeping the start: a long completion loses its end) and every row is padded with EOS to
4096 (the padding is visible to the bidirectional model, never masked or scored); here prompts
keep their last 512 tokens, completions their first 512, and rows are padded to 1024, which
changes the context (and so B_θ, B_ref) of every row and the window of completions over 512
tokens. Their exact cut and
padding: --config.data.max_length=4096 --config.data.max_prompt_length=0
--config.data.max_completion_length=0 (4x the tokens per row). Their ELBO draws come from
their own 64-bit hash and torch generators, pojax's from JAX keys (same distribution, other
masks); they have no mismatched-completion (KL) rows, pojax still scores them (logged as
``kl/unclamped``, unused by z0 = batch mean; twice the forward passes).

On a TPU VM (every host runs the same command) or a GPU node, with local copies of
GSAI-ML/LLaDA-8B-Instruct and trl-lib/kto-mix-14k (upstream layout: data/train-*.parquet):

    python -m pojax.main --config=configs/elbo_kto.py \\
        --config.model.path=/ckpts/LLaDA-8B-Instruct \\
        --config.data.path=/data/kto-mix-14k \\
        --config.data.tfds_dir=/data/tfds --workdir=/runs/elbo_kto

UltraFeedback-binarized (the paper's second setting): --config.data.format=ultrafeedback_binarized
--config.data.path=/data/ultrafeedback_binarized — paired rows under KTO are unpaired as TRL's
unpair_preference_dataset does (each pair: chosen desirable, rejected undesirable), so the switch
is the data format alone. Batch size: the paper's global batch is not
restated here; 64 (8 micro-batches of 8) is a starting point to tune on your slice.
"""
from pojax.config import base_config

TRAIN_ROWS = 13_500  # rows of kto-mix-14k's train split
BATCH = 64  # global completions per optimizer step
EPOCH_STEPS = -(-TRAIN_ROWS // BATCH)  # 1 epoch


def get_config():
    config = base_config()
    config.task = "train"  # preference optimization of an instruct model (no SFT stage)

    config.model.path = ""  # required: --config.model.path=<LLaDA-8B-Instruct HF dir> (model_type llada)
    config.model.family = "llada"  # masked-diffusion LM (used by validation; the checkpoint decides)
    config.model.dtype = "bfloat16"  # compute dtype; master parameters and ELBO math stay float32
    config.model.scan_layers = True  # nnx.scan over the 32 layers
    config.model.remat = "full"  # recompute each layer in the backward pass

    config.data.path = ""  # required: --config.data.path=<kto-mix-14k upstream dir>
    config.data.format = "kto_mix"  # unpaired rows; train / test splits
    config.data.max_prompt_length = 512  # tokens, prompts keep their end
    config.data.max_completion_length = 512  # tokens, the response window of the ELBO
    config.data.chat_template = "auto"  # LLaDA-8B-Instruct's chat template
    config.data.completion_end = "none"  # the authors' window: the completion's tokens, no <|eot_id|> or EOS after

    config.likelihood.kind = "diffusion"  # ELBOs in place of log-likelihoods
    config.likelihood.n_mc = 8  # K, Monte Carlo draws per ELBO (the authors' K = 8)
    config.likelihood.estimator = "length"  # the authors': exactly l of L masked, l iid U{1..L} per draw, weight L/l
    config.likelihood.chunk_size = 256  # sequence chunk of the chunked log-softmax, tokens

    config.loss.name = "kto"  # KTO on B_θ − B_ref
    config.loss.beta = 0.1  # β
    config.loss.kto_reference_point = "batch_mean"  # z0 = detached mean of r̂ over the global batch
    config.loss.desirable_weight = 1.0  # λ_D
    config.loss.undesirable_weight = 1.0  # λ_U

    config.reference.mode = "copy"  # frozen copy of the starting model; "precomputed" (+ reference.cache_dir
    # to store B_ref with its draws and reuse it across runs) frees the copy's memory

    config.optimizer.learning_rate = 1e-6  # peak learning rate
    config.optimizer.schedule = "cosine"  # cosine decay after warm-up
    config.optimizer.warmup_steps = max(1, round(0.03 * EPOCH_STEPS))  # 3% warm-up
    config.optimizer.weight_decay = 0.01  # AdamW weight decay
    config.optimizer.b1 = 0.9  # AdamW β1
    config.optimizer.b2 = 0.95  # AdamW β2
    config.optimizer.max_grad_norm = 1.0  # global-norm clipping

    config.train.max_steps = EPOCH_STEPS  # one epoch
    config.train.batch_size = BATCH  # global completions per step
    config.train.grad_accum_steps = 8  # micro-batches of 8
    config.train.sft_steps = 0  # the instruct model is the starting policy

    config.mesh.data = 1  # no pure data-parallel replicas
    config.mesh.fsdp = -1  # FSDP over every device
    config.mesh.tensor = 1  # no tensor parallelism

    config.checkpoint.every_steps = 50  # steps between checkpoints
    config.checkpoint.best_metric = "eval_loss"  # also keep the best parameters by held-out loss
    config.eval.every_steps = 50  # steps between held-out evaluations
    config.eval.num_examples = 256  # test-split completions evaluated
    # --config.task=eval on the trained model (--config.model.path=<workdir>/final): GSM8K / MMLU
    # with LLaDA's reverse process at the authors' settings, 5-shot (point eval.gsm8k_fewshot_path
    # / eval.mmlu_fewshot_path at the train / dev splits, or the first rows are used as shots)
    config.eval.num_fewshot = 5  # solved examples before each question
    config.eval.gsm8k_gen_length, config.eval.gsm8k_steps, config.eval.gsm8k_block_length = 256, 256, 8
    config.eval.mmlu_gen_length, config.eval.mmlu_steps, config.eval.mmlu_block_length = 3, 3, 3
    config.likelihood.mc_stderr = True  # eval_loss_mc_stderr: the loss's MC standard error from two half budgets
    return config
