"""Online DPO on the built-in gold-reward gym (the quickstart's model and SFT start): every step
samples two completions per prompt from the current policy, labels them with the gym's gold
reward (chosen = higher, ties weigh 0) and takes a sigmoid DPO step against the frozen SFT start.

    python -m pojax.main --config=configs/online_dpo.py --workdir=/tmp/pojax_online_dpo
    python -m pojax.main --config=configs/online_dpo.py --config.loss.name=xpo --config.loss.alpha=0.05

loss.name: online_dpo | xpo (one completion from the reference and XPO's exploration term α).
Labels spent: train.max_steps × train.batch_size reward comparisons (metrics.jsonl: labels).

Measured on the gym (seeds 0-2, data.gym.num_train=6400 so that the SFT start equals the offline
run's; 6400 labels each): online_dpo gold reward 0.365 → 0.846 (offline quickstart DPO on 6400 fixed
pairs: → 0.796; online beats offline head to head 0.80-0.84). xpo with TRL's α = 0.05 only reaches
0.44: the reference's samples hold the rule's symbol most often, so pushing their likelihood down
fights the task; α = 5e-3 → 0.73, α = 5e-4 → 0.79 (seed 0).
"""
from pojax.config import base_config


def get_config():
    config = base_config()  # the quickstart's model, SFT start and optimizer
    config.task = "train"
    config.train.sft_steps = 300
    config.train.batch_size = 32  # prompts (= labelled pairs) per step
    config.optimizer.learning_rate = 5e-4
    config.checkpoint.every_steps = 100
    config.loss.name = "online_dpo"  # online_dpo | xpo (pojax.config.ONLINE_LOSSES)
    config.loss.beta = 0.1  # DPO's β
    config.online.temperature = 1.0  # sampling temperature of the training pairs
    config.online.reward = "gold"  # the labeller: the gym's gold reward
    config.train.max_steps = 200  # 200 × 32 = 6400 labelled comparisons
    return config
