"""TGDPO (token-level reward guidance, Zhu et al., arXiv 2506.14574) on the built-in gold-reward
gym: DPO whose every token's β is shaped by the token reward of a DPO-trained guide,
r̂_t = β·(log π_guide(y_t|·) − log π_ref(y_t|·)), computed once before training. The guide has
no default: train it first with DPO from the same SFT start (the quickstart), then pass its export.

    python -m pojax.main --config=configs/quickstart.py --workdir=/tmp/pojax_dpo_guide
    python -m pojax.main --config=configs/tgdpo.py --workdir=/tmp/pojax_tgdpo \\
        --config.reference.guide_path=/tmp/pojax_dpo_guide/final

reference.guide_path: a Hugging Face checkpoint dir (config.json + safetensors) with the policy's
vocabulary. reference.mode: copy | lora_base. tgdpo_alpha = 0 is sigmoid DPO.
"""
from pojax.config import base_config


def get_config():
    config = base_config()  # the quickstart's tiny random Llama on the gym
    config.task = "train"  # SFT stage, then preference optimization
    config.loss.name = "tgdpo"  # pojax.losses registry name
    config.loss.beta = 0.1  # DPO's β, also the scale of the guide's token rewards
    config.loss.tgdpo_alpha = 0.5  # α: β_t = β(1 ± α r̂_t) (the authors' default)
    config.reference.mode = "copy"  # copy | lora_base
    config.reference.guide_path = ""  # required: --config.reference.guide_path=<DPO run>/final
    config.train.sft_steps = 300  # the quickstart's SFT start (the guide's reference)
    config.train.max_steps = 200  # preference steps
    config.train.batch_size = 32  # pairs per step
    config.optimizer.learning_rate = 5e-4  # peak learning rate
    config.checkpoint.every_steps = 100  # steps between checkpoints
    return config
