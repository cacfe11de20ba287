"""RTO (Zhong et al., "DPO Meets PPO: Reinforced Token Optimization for RLHF", arXiv 2404.18922)
on the built-in gold-reward gym: PPO on the token rewards of a DPO-trained model, shaped as the
authors' code does (zkshan2002/RTO, ``experience_maker.py``; coefficients of
``examples/scripts/train_rto_llama_8b.sh``):

    r_t = clip(β₁·log π_dpo(y_t|·)/π_ref(y_t|·), ±0.05) − β₂·log π(y_t|·)/π_ref(y_t|·)
          + 1[t = last]·clip((r(x, y) − μ)/σ, ±10),

β₁ = 0.05, β₂ = 0.01, r = online.reward (the gym's gold reward stands in for their trained reward
model; μ, σ measured once on held-out gym pairs), one sampled completion per prompt and rollout,
GAE advantages, a linear value head on the policy's hidden states where they train a separate
critic initialised from the reward model (pojax.train.rto). Stage 1 is DPO from the same SFT start
(the quickstart, or loss.name=rto without a guide); pass its export as the guide, which makes
``rto`` the online PPO stage:

    python -m pojax.main --config=configs/quickstart.py --workdir=/tmp/pojax_dpo_guide
    python -m pojax.main --config=configs/rto.py --workdir=/tmp/pojax_rto \\
        --config.reference.guide_path=/tmp/pojax_dpo_guide/final

With the sequence reward the stage spends gold labels (one per sampled completion);
--config.online.rto_seq_coef=0 trains on the DPO token rewards alone (the gold reward is then
only measured: objective/scores).
"""
from pojax.config import base_config


def get_config():
    config = base_config()  # the quickstart's tiny random Llama on the gym
    config.task = "train"  # SFT stage, then RTO's PPO stage (online: pojax.train.online)
    config.loss.name = "rto"  # with reference.guide_path: the PPO stage; without: the DPO stage
    config.loss.beta = 0.1  # β of the DPO stage (the guide's DPO β); the PPO stage reads online.rto_dpo_beta
    config.reference.mode = "copy"  # π_ref: the frozen SFT start
    config.reference.guide_path = ""  # required for the PPO stage: --config.reference.guide_path=<DPO run>/final
    config.train.sft_steps = 300  # the quickstart's SFT start (the guide's reference)
    config.train.max_steps = 200  # optimizer steps (online.ppo_epochs per rollout)
    config.train.batch_size = 32  # prompts (= sampled completions) per rollout
    config.optimizer.learning_rate = 2e-4  # peak learning rate (policy and value head)
    config.checkpoint.every_steps = 100  # a multiple of online.ppo_epochs
    config.online.temperature = 1.0  # sampling temperature of the rollouts
    config.online.rto_dpo_beta = 0.05  # β₁: scale of the DPO token reward (authors: --dpo_reward_scale 0.05)
    config.online.rto_dpo_clip = 0.05  # c₁: clip of the scaled DPO token reward (authors: --dpo_reward_clip 0.05)
    config.online.rto_kl_coef = 0.01  # β₂: per-token KL penalty to π_ref (authors: --init_kl_coef 0.01, fixed)
    config.online.rto_seq_coef = 1.0  # β₃: the normalized gold reward on the last token (authors: RM score, weight 1)
    config.online.rto_seq_clip = 10.0  # c₃: clamp of the normalized sequence reward (authors: hard-coded 10)
    config.online.gamma = 1.0  # GAE discount γ (authors: 1)
    config.online.gae_lambda = 0.95  # GAE λ (authors: 0.95)
    config.online.ppo_clip = 0.2  # PPO's ε (authors: 0.2)
    config.online.value_coef = 0.1  # value-loss weight c_v (authors: a separate critic with its own optimizer)
    config.online.ppo_epochs = 2  # optimizer steps per rollout
    return config
