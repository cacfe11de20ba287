"""DiffPO on the gold-reward gym: an aligner trained on reward-ranked trajectories of several base
policies refines the answers of any policy at inference time (arXiv 2503.04240).

    python -m pojax.main --config=configs/diffpo.py --workdir=/tmp/pojax_diffpo
    python -m pojax.main --config=configs/diffpo.py --config.diffpo.omega=0.0        # the ω = 0 control
    python -m pojax.main --config=configs/diffpo.py --config.diffpo.trajectory_order=shuffled
    # the successor gym, whose shift_* policies make consistent mistakes (the shuffled control's
    # target then teaches the wrong token):
    python -m pojax.main --config=configs/diffpo.py --config.diffpo.gym_rule=successor \
      "--config.diffpo.train_policies=('shift_0.9','shift_0.6','skill_0.3','skill_0.6')" \
      "--config.diffpo.eval_policies=('skill_0.3','shift_0.6','skill_0.2','shift_0.3','copy')"

The paper's exact hyperparameters (ω, the t-sampling, the trajectory length) are not all public;
the values below are pojax's choices for the gym. What its code and CLLM's do is on by default:
L_AR label-smoothed with ε = 0.1 and L_consistency from the first token where y(t) and y(T) differ
(CLLM's trainer), and a reserved prefix of each base answer kept at inference (DiffPO's
gen_DiffuPO_answer.py), scaled to the gym's 6-token answers. The loss before these terms:
--config.diffpo.label_smoothing=0.0 --config.diffpo.consistency_mask=response; no reserved prefix:
--config.diffpo.reserve_tokens=0.
"""
import ml_collections

from pojax.config import base_config


def get_config():
    config = base_config()
    config.task = "diffpo"
    config.data.gym.num_train = 2048  # prompts, one trajectory each
    config.data.gym.num_eval = 256  # held-out prompts answered by every eval policy
    config.train.max_steps = 300
    config.train.batch_size = 32
    config.optimizer.learning_rate = 1e-3
    config.checkpoint.every_steps = 300
    config.logging.plots = False
    config.diffpo = ml_collections.ConfigDict()
    config.diffpo.omega = 1.0  # ω, weight of L_consistency in L_AR + ω·L_consistency (0 = SFT on y(T) only)
    config.diffpo.divergence = "kl"  # kl | soft_ce: per-position divergence of the consistency term
    config.diffpo.label_smoothing = 0.1  # ε of L_AR in [0, 1): (1-ε)·NLL + ε·mean_v(-log q(v)) (CLLM 0.1; 0 = NLL)
    # consistency positions: response (all) | first_difference (CLLM: from the first token where y(t) and y(T) differ)
    config.diffpo.consistency_mask = "first_difference"
    config.diffpo.t_sampling = "uniform"  # state y(t), t ~ U{0..T-1} per example and step
    # chain: each ideal token is the previous one + 1, so a Jacobi step reads its left neighbour and
    # the step budget k matters; successor: pojax.data.gym's position-wise rule (one step suffices)
    config.diffpo.gym_rule = "chain"  # chain | successor
    config.diffpo.trajectory_order = "reward"  # reward (y(T) = best by gold reward) | shuffled (the control)
    # base policies whose responses (one each per prompt) form the trajectories, T + 1 = 4
    config.diffpo.train_policies = ("skill_0.2", "skill_0.5", "skill_0.8", "skill_0.95")
    # policies refined at evaluation; skill_0.3, skill_0.7 and copy were not used for training
    config.diffpo.eval_policies = ("skill_0.5", "skill_0.3", "skill_0.7", "copy")
    config.diffpo.eval_steps = (1, 2, 4)  # Jacobi step budgets k reported (plus convergence)
    config.diffpo.eval_converged = True  # files: also refine to convergence (the gym always does)
    # reserved prefix at inference (the authors' rule): each base answer's first r tokens are kept, r uniform on
    # 0..reserve_tokens per held-out prompt, seeded by train.seed; the authors keep 0..12 of 256-token answers, the
    # gym's answers have 6 tokens, so the smallest count that is not 0 (0 = the whole answer refined)
    config.diffpo.reserve_tokens = 1  # tokens, >= 0
    config.diffpo.prefix_cache = False  # keep the prompt in a KV cache: each Jacobi step runs only the response block
    config.diffpo.temperature = 0.0  # Jacobi updates: 0 = greedy; τ > 0 = sampled (Gumbel noise fixed per position)
    # where trajectories come from: gym (data.format = gym) | ranked (pojax ranked rows: prompt,
    # completions, scores[, models]) | ultrafeedback (openbmb/UltraFeedback: instruction, completions
    # [{model, response, <score_field>}]); files are read from data.path (pojax.diffpo.text_data)
    config.diffpo.trajectory_source = "gym"  # gym | ranked | ultrafeedback
    config.diffpo.score_field = "overall_score"  # ultrafeedback: per-completion score ranking the trajectory
    config.diffpo.max_states = 3  # files: states y(0..T-1) kept per trajectory (the best below the target)
    config.diffpo.eval_path = ""  # files: held-out rows (same layout) whose responses are refined; "" = hold out eval.num_examples rows
    config.diffpo.on_overflow = "truncate"  # files: base answers longer than data.max_completion_length: truncate | blocks | error
    return config
