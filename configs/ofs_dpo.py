"""OFS-DPO (online fast-slow chasing DPO, Qi et al., arXiv 2406.05534) on the built-in gold-reward
gym: the online DPO loop of configs/online_dpo.py (two completions per prompt sampled from the
policy, labelled by the gold reward, ties weigh 0), trained as two LoRA modules over the frozen
SFT start. The fast module (learning rate η_F = optimizer.learning_rate) is the policy: it samples
the pairs, is evaluated and exported (adapters merged); the slow one learns at η_F /
online.fast_lr_ratio. The fast module's loss adds ofs_alpha × the DPO loss of fast against slow;
every online.swap_every steps the modules exchange roles when the slow one's DPO loss is lower.

    python -m pojax.main --config=configs/ofs_dpo.py --workdir=/tmp/pojax_ofs_dpo
    python -m pojax.main --config=configs/ofs_dpo.py --config.loss.ofs_alpha=0 --config.online.swap_every=0

(the second line is LoRA online DPO of the fast module alone: the ablation of the chasing.)
Labels spent: train.max_steps × train.batch_size, as online_dpo.

Measured on the gym (seed 0, 6400 labels, the SFT start of configs/online_dpo.py): gold reward
0.365 → 0.467 (online_dpo: → 0.853; the LoRA ablation above: → 0.468). LoRA adapters plateau near
0.47 on this gym (rank 8 or 32, learning rate 5e-3 or 1e-2) and collapse at 2e-2.
"""
from pojax.config import base_config


def get_config():
    config = base_config()  # the quickstart's model, SFT start and optimizer
    config.task = "train"
    config.train.sft_steps = 300  # the SFT start of configs/online_dpo.py
    config.train.batch_size = 32  # prompts (= labelled pairs) per step
    config.train.max_steps = 200  # 200 × 32 = 6400 labelled comparisons, as online_dpo
    config.checkpoint.every_steps = 100
    config.loss.name = "ofs_dpo"
    config.loss.beta = 0.1  # DPO's β (both modules and the regularizer)
    config.loss.ofs_alpha = 1.0  # weight of the chasing regularizer (0 = the fast module trains by DPO alone)
    config.optimizer.learning_rate = 5e-3  # η_F, the fast module's (LoRA adapters only)
    config.online.fast_lr_ratio = 4.0  # η_F / η_S
    config.online.swap_every = 1  # check the swap rule after every step (0 = never swap)
    config.online.lora_rank = 8  # each module's adapter rank
    config.online.lora_alpha = 16.0  # adapter scale numerator (scale = alpha / rank)
    config.online.temperature = 1.0  # sampling temperature of the training pairs
    config.online.reward = "gold"  # the labeller: the gym's gold reward
    return config
