"""DPO on Anthropic HH-RLHF after an SFT stage on its chosen responses, as in the DPO paper's
single-turn dialogue experiment (Rafailov et al., arXiv 2305.18290, Sec. 6 and Appendix B:
β = 0.1, batch 64, learning rate 1e-6 with 150 linear warm-up steps; the reference is the model
fine-tuned on the preferred completions, "Preferred-FT"), on a Qwen3 base model (the paper used
Pythia-2.8B). Lengths, the SFT learning rate, gradient clipping and the evaluation size follow the
paper's reference code (eric-mitchell/direct-preference-optimization, config/config.yaml).

On a TPU VM (every host runs the same command) or a GPU machine, with local copies of
Qwen/Qwen3-8B-Base and Anthropic/hh-rlhf (the upstream directory: <subset>/train.jsonl.gz,
<subset>/test.jsonl.gz for harmless-base, helpful-base, helpful-online, helpful-rejection-sampled):

    python -m pojax.main --config=configs/qwen3_dpo_hh_rlhf.py \\
        --config.model.path=/ckpts/Qwen3-8B-Base \\
        --config.data.path=/data/hh-rlhf \\
        --config.data.tfds_dir=/data/tfds \\
        --workdir=/runs/qwen3_dpo_hh_rlhf

The model reads the raw transcripts ("\\n\\nHuman: …\\n\\nAssistant: "), as in the paper; set
--config.data.chat_template=auto to format the parsed turns with the tokenizer's chat template
instead. The SFT stage writes metrics_sft.jsonl; the DPO reference is the SFT'd policy. Other
Qwen3 sizes (Qwen3-1.7B-Base, close to the paper's 2.8B) run with the same command.
Departures: AdamW instead of RMSprop; fixed-width rows of 256 prompt + 256 completion tokens
instead of a per-row 512-token budget.
"""
from pojax.config import base_config

TRAIN_PAIRS = 160_800  # rows of HH-RLHF's train split (the four subsets)
BATCH = 64  # DPO paper, Appendix B
EPOCH_STEPS = -(-TRAIN_PAIRS // BATCH)  # 2513 optimizer steps = 1 epoch (the reference code's n_epochs)
EVAL_EVERY_EXAMPLES = 20_000  # the reference code's eval_every, in examples


def get_config():
    config = base_config()
    config.task = "train"  # SFT stage, then DPO

    config.model.path = ""  # required: --config.model.path=<Qwen3 base HF dir>
    config.model.dtype = "bfloat16"  # compute dtype; master parameters, norms, softmax and log-probs stay float32
    config.model.scan_layers = True  # nnx.scan over the 36 layers: compile time independent of depth
    config.model.remat = "full"  # recompute each layer in the backward pass (activation memory of 1 layer)

    config.data.path = ""  # required: --config.data.path=<hh-rlhf upstream dir>
    config.data.format = "hh_rlhf"  # transcripts split into prompt turns + final assistant turn; train / test
    config.data.max_prompt_length = 256  # tokens; prompts keep their end (reference code: max_prompt_length)
    config.data.max_completion_length = 256  # tokens; 256 + 256 = the reference code's max_length 512
    config.data.chat_template = "no"  # the raw "\n\nHuman: …\n\nAssistant: " transcript, as in the paper
    config.data.tfds_dir = ""  # where the array_record copy is prepared once; "" = ~/tensorflow_datasets

    config.loss.name = "sigmoid"  # DPO, Eq. 7
    config.loss.beta = 0.1  # DPO paper, Appendix B

    config.likelihood.chunk_size = 256  # sequence chunk of the log-softmax over the 152k vocabulary, tokens

    config.reference.mode = "copy"  # frozen copy of the SFT'd policy (Preferred-FT)

    config.optimizer.learning_rate = 1e-6  # DPO paper, Appendix B
    config.optimizer.schedule = "constant"  # constant after warm-up (reference code)
    config.optimizer.warmup_steps = 150  # linear warm-up from 0 (paper), SFT and DPO stages alike
    config.optimizer.weight_decay = 0.0  # no weight decay (RMSprop in the paper has none)
    config.optimizer.max_grad_norm = 10.0  # global-norm clipping (reference code)

    config.train.max_steps = EPOCH_STEPS  # DPO steps: 1 epoch of the train split at batch 64
    config.train.batch_size = BATCH  # global, in pairs (SFT stage: in chosen completions)
    config.train.grad_accum_steps = 1  # micro-batch 64; must divide by the device count (mesh.data × mesh.fsdp)
    config.train.seed = 0  # the reference code's seed (orders the data)
    config.train.sft_steps = EPOCH_STEPS  # SFT steps on the chosen completions: 1 epoch, as the reference code
    config.train.sft_learning_rate = 5e-7  # peak learning rate of the SFT stage (reference code's default lr)

    config.mesh.data = 1  # no pure data-parallel replicas
    config.mesh.fsdp = -1  # FSDP over every device (parameters, gradients and Adam state sharded)
    config.mesh.tensor = 1  # no tensor parallelism

    config.checkpoint.every_steps = EVAL_EVERY_EXAMPLES // BATCH  # 312 steps; the reference code saves at each evaluation
    config.checkpoint.keep = 2  # latest checkpoints kept
    config.checkpoint.best_metric = "eval_loss"  # also keep the parameters with the lowest held-out DPO loss
    config.checkpoint.best_mode = "min"  # lower eval_loss is better
    config.checkpoint.keep_best = 1  # best parameter sets kept

    config.eval.every_steps = EVAL_EVERY_EXAMPLES // BATCH  # 312 steps = 20,000 examples (reference code)
    config.eval.num_examples = 256  # pairs of the test split evaluated (reference code: n_eval_examples)

    config.logging.every_steps = 1  # metrics.jsonl line every step
    config.logging.progress = True  # tqdm progress bar
    return config
