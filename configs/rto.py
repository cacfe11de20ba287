"""RTO (Zhong et al., "DPO Meets PPO: Reinforced Token Optimization for RLHF", arXiv 2404.18922)
on the built-in gold-reward gym: PPO on the token rewards of a DPO-trained model,
r_t = β·log π_dpo(y_t|·)/π_ref(y_t|·) − β₂·log π(y_t|·)/π_ref(y_t|·), one sampled completion per
prompt and rollout, GAE advantages, a linear value head on the policy's hidden states
(pojax.train.rto). Stage 1 is DPO from the same SFT start (the quickstart, or loss.name=rto
without a guide); pass its export as the guide, which makes ``rto`` the online PPO stage:

    python -m pojax.main --config=configs/quickstart.py --workdir=/tmp/pojax_dpo_guide
    python -m pojax.main --config=configs/rto.py --workdir=/tmp/pojax_rto \\
        --config.reference.guide_path=/tmp/pojax_dpo_guide/final

No preference labels are spent in this stage: the gold reward is only measured (objective/scores)
unless online.rto_seq_coef > 0 adds it on the last token.
"""
from pojax.config import base_config


def get_config():
    config = base_config()  # the quickstart's tiny random Llama on the gym
    config.task = "train"  # SFT stage, then RTO's PPO stage (online: pojax.train.online)
    config.loss.name = "rto"  # with reference.guide_path: the PPO stage; without: the DPO stage
    config.loss.beta = 0.1  # β of the DPO token reward (the guide's DPO β)
    config.reference.mode = "copy"  # π_ref: the frozen SFT start
    config.reference.guide_path = ""  # required for the PPO stage: --config.reference.guide_path=<DPO run>/final
    config.train.sft_steps = 300  # the quickstart's SFT start (the guide's reference)
    config.train.max_steps = 200  # optimizer steps (online.ppo_epochs per rollout)
    config.train.batch_size = 32  # prompts (= sampled completions) per rollout
    config.optimizer.learning_rate = 2e-4  # peak learning rate (policy and value head)
    config.checkpoint.every_steps = 100  # a multiple of online.ppo_epochs
    config.online.temperature = 1.0  # sampling temperature of the rollouts
    config.online.rto_kl_coef = 0.05  # β₂: per-token KL penalty to π_ref
    config.online.rto_seq_coef = 0.0  # β₃: no sequence reward (no labels in this stage)
    config.online.gamma = 1.0  # GAE discount γ
    config.online.gae_lambda = 0.95  # GAE λ
    config.online.ppo_clip = 0.2  # PPO's ε
    config.online.value_coef = 0.1  # value-loss weight c_v
    config.online.ppo_epochs = 2  # optimizer steps per rollout
    return config
