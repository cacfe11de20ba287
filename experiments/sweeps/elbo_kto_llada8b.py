"""ELBO-KTO on LLaDA-8B-Instruct (the seed paper's setting), on a v5p-64 TPU VM: KTO on Monte
Carlo ELBOs (K = 8, each l uniform on 1..L as the authors draw it, draws shared by policy and
reference; configs/elbo_kto.py has the authors' settings), on kto-mix-14k (unpaired) and on UltraFeedback-binarized (its pairs
unpaired into desirable / undesirable completions, as TRL's unpair_preference_dataset does),
β ∈ {0.1, 0.5}; logs and checkpoints under the gs:// root below.

    python -m experiments.launch --sweep=experiments/sweeps/elbo_kto_llada8b.py --backend=tpu-vm --dry-run
"""
base = "configs/elbo_kto.py"
slice = "v5p-64"  # 32 chips, 8 hosts
zone = "us-east5-a"
project = ""
gcs = "gs://pojax-runs/elbo_kto_llada8b"

fixed = {
    "model.path": "/mnt/disks/ckpt/LLaDA-8B-Instruct",
    "data.tfds_dir": "/mnt/disks/data/tfds",
}
runs = [
    {"data.format": "kto_mix", "data.path": "/mnt/disks/data/kto-mix-14k"},
    {"data.format": "ultrafeedback_binarized", "data.path": "/mnt/disks/data/ultrafeedback_binarized"},
]
grid = {"loss.beta": [0.1, 0.5]}
