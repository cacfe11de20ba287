"""DPO, SimPO and IPO on Llama-3-8B-Instruct with UltraFeedback-binarized, on a v5p-64 TPU VM.

The Llama-3-Instruct rows of the SimPO paper (Meng et al., arXiv 2405.14734, appendix table of
tuned hyperparameters): DPO β = 0.01, lr 7e-7; SimPO β = 10, γ/β = 0.3 (γ = 3), lr 1e-6,
reference-free; IPO τ = 0.01 (TRL's β), lr 7e-7. Every run: batch 128, 1 epoch, cosine, warm-up
10 %. Checkpoints, metrics and per-host logs go to ``gcs``/<run>; the model and data paths are
local copies prepared on every host (e.g. by a startup script) at the paths below.

    python -m experiments.launch --sweep=experiments/sweeps/llama3_8b_losses.py --backend=tpu-vm --dry-run
"""
base = "configs/llama3_8b_dpo_ultrafeedback.py"
slice = "v5p-64"  # 32 chips, 8 hosts
zone = "us-east5-a"  # a v5p zone
project = ""  # "" = gcloud's default project
gcs = "gs://pojax-runs/llama3_8b_losses"

fixed = {
    "model.path": "/mnt/disks/ckpt/Meta-Llama-3-8B-Instruct",
    "data.path": "/mnt/disks/data/ultrafeedback_binarized",
    "data.tfds_dir": "/mnt/disks/data/tfds",
    "mesh.data": 1,
    "mesh.fsdp": -1,  # FSDP over all 32 chips
}
runs = [
    {"loss.name": "sigmoid", "loss.beta": 0.01, "optimizer.learning_rate": 7e-7},
    {"loss.name": "simpo", "loss.beta": 10.0, "loss.simpo_gamma": 3.0, "optimizer.learning_rate": 1e-6,
     "reference.mode": "none"},
    {"loss.name": "ipo", "loss.beta": 0.01, "optimizer.learning_rate": 7e-7},
]
