"""DPO (or any pairwise / reference-free loss) on any Hugging Face causal LM and any paired data.

    python -m pojax.main --config=configs/dpo.py --workdir=runs/dpo \\
        --config.model.path=/ckpts/Llama-3-8B-Instruct --config.data.path=/data/ultrafeedback_binarized \\
        --config.data.format=ultrafeedback_binarized --config.mesh.fsdp=-1 --config.mesh.data=1

The model directory holds config.json, *.safetensors and the tokenizer files; the data is JSONL /
parquet with TRL's columns (prompt, chosen, rejected; strings or message lists).
"""
from pojax.config import base_config


def get_config():
    config = base_config()
    config.task = "train"
    config.model.path = ""  # required: --config.model.path=<HF checkpoint dir>
    config.model.dtype = "bfloat16"  # parameters and compute; norms, softmax, log-probs stay fp32
    config.data.path = ""  # required: --config.data.path=<file or dir>
    config.data.format = "paired"  # paired | ultrafeedback_binarized
    config.data.max_prompt_length = 512
    config.data.max_completion_length = 512
    config.loss.name = "sigmoid"
    config.loss.beta = 0.1
    config.reference.mode = "copy"
    config.optimizer.learning_rate = 5e-7  # TRL / zephyr-style DPO learning rate
    config.optimizer.warmup_steps = 100
    config.train.batch_size = 64
    config.train.max_steps = 1000
    config.checkpoint.every_steps = 200
    config.eval.num_examples = 512
    config.likelihood.chunk_size = 256
    config.mesh.data = 1
    config.mesh.fsdp = -1  # FSDP over every device
    return config
