"""ELBO-KTO on LLaDA-8B-Instruct (the seed paper's setting), on a v5p-64 TPU VM: KTO with the
diffusion ELBO as the sequence log-likelihood (antithetic draws shared by policy and reference),
on kto-mix-14k (unpaired) and on UltraFeedback-binarized (its pairs split into desirable /
undesirable completions), β ∈ {0.1, 0.5}.

Dry-run only for now: training with likelihood.kind = "diffusion" lands with the diffusion
issues (pojax.config.validate refuses it until then), so a real launch stops at validation.

    python -m experiments.launch --sweep=experiments/sweeps/elbo_kto_llada8b.py --backend=tpu-vm --dry-run
"""
base = "configs/kto.py"
slice = "v5p-64"  # 32 chips, 8 hosts
zone = "us-east5-a"
project = ""
gcs = "gs://pojax-runs/elbo_kto_llada8b"

fixed = {
    "model.path": "/mnt/disks/ckpt/LLaDA-8B-Instruct",
    "model.dtype": "bfloat16",
    "model.remat": "full",
    "likelihood.kind": "diffusion",
    "likelihood.n_mc": 8,
    "likelihood.estimator": "antithetic",
    "data.max_prompt_length": 512,
    "data.max_completion_length": 512,
    "data.tfds_dir": "/mnt/disks/data/tfds",
    "train.batch_size": 64,
    "mesh.data": 1,
    "mesh.fsdp": -1,
}
runs = [
    {"data.format": "kto_mix", "data.path": "/mnt/disks/data/kto-mix-14k"},
    {"data.format": "unpaired", "data.path": "/mnt/disks/data/ultrafeedback_binarized_unpaired.jsonl"},
]
grid = {"loss.beta": [0.1, 0.5]}
