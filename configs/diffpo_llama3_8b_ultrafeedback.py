"""DiffPO at paper scale: a Llama-3-8B-Instruct aligner (the paper's DiffPO-8B, arXiv 2503.04240)
trained on UltraFeedback trajectories, then applied to other models' answers and scored by a
reward model (rm_win_rate of aligned vs base answers per base policy in results.json).

On a TPU VM (every host runs the same command) or a GPU machine, with local copies of
meta-llama/Meta-Llama-3-8B-Instruct, openbmb/UltraFeedback (its JSONL / parquet files: per prompt
an ``instruction`` and 4 ``completions`` from different models, each with an ``overall_score``)
and a sequence-classification reward model:

    python -m pojax.main --config=configs/diffpo_llama3_8b_ultrafeedback.py \\
        --config.model.path=/ckpts/Meta-Llama-3-8B-Instruct \\
        --config.data.path=/data/UltraFeedback \\
        --config.eval.reward_model_path=/ckpts/reward_model \\
        --workdir=/runs/diffpo_llama3_8b_ultrafeedback

Other systems' answers to refine: --config.diffpo.eval_path=<rows in the same layout> (each
completion's ``model`` is one base policy); by default eval.num_examples rows of data.path are
held out. A file scored by another reward model trains the same way in pojax's ``ranked`` layout
(prompt, completions, scores[, models]) with --config.diffpo.trajectory_source=ranked.

What is public and what pojax chose (the training code of DiffPO is not released; its repository,
zjuruizhechen/DiffPO, has the evaluation code, which builds on hao-ai-lab/Consistency_LLM):
  - public: the aligner families (DiffPO-8B: Llama-3-8B; DiffPO-9B: Gemma-2-9B,
    configs/diffpo_gemma2_9b_ultrafeedback.py), 256 refined tokens per answer
    (``--max_new_tokens_for_consistency 256``), greedy Jacobi updates to a fixed point, the
    reserved prefix (``gen_DiffuPO_answer.py``: each answer's first r tokens kept, r uniform on
    0 … 12 per answer; pojax seeds the draw with train.seed), the CLLM recipe it builds on
    (``cllm/cllm_trainer_global.py``, ``scripts/train_cllm.sh``: lr 2e-5, cosine, 3 % warm-up, no
    weight decay, 1 epoch, bf16, L = L_cons + 10 · L_AR, i.e. ω = 0.1 here up to an overall scale;
    L_AR label-smoothed with ε = 0.1; L_cons the soft cross-entropy from the first token where the
    state and the target differ).
  - chosen: UltraFeedback's GPT-4 ``overall_score`` ranks the trajectories (4 completions: 3
    states + the target), 1024 prompt tokens, global batch 32 (CLLM trains with batch 1 per
    device), uniform t, k ∈ {1, 2, 4, 8} at evaluation.
  - departures: states are other models' answers ranked by score, not the aligner's own Jacobi
    trajectories (as the paper describes its data); L_AR scores the response tokens only (CLLM's
    labels include the prompt); both terms are per-example token means (pojax.diffpo.loss).
"""
import os

from pojax.config import recipe

HERE = os.path.dirname(os.path.abspath(__file__))

UF_ROWS = 63_967  # prompts of openbmb/UltraFeedback
BATCH = 32  # global batch, trajectories (pojax's choice)
EPOCH_STEPS = -(-UF_ROWS // BATCH)  # 1,999 optimizer steps = 1 epoch


def get_config():
    config = recipe(os.path.join(HERE, "diffpo.py"))  # the diffpo section and its defaults
    config.task = "diffpo"  # aligner training, then refinement of held-out base answers

    config.model.path = ""  # required: --config.model.path=<Meta-Llama-3-8B-Instruct HF dir> (the aligner)
    config.model.dtype = "bfloat16"  # compute dtype; master parameters, softmax, KL and log-probs stay float32
    config.model.scan_layers = True  # nnx.scan over the 32 layers: compile time independent of depth
    config.model.remat = "full"  # recompute each layer in the backward pass

    config.data.path = ""  # required: --config.data.path=<openbmb/UltraFeedback file or dir>
    config.data.format = "ranked"  # scored responses per prompt (the trajectory layout itself: diffpo.trajectory_source)
    config.data.max_prompt_length = 1024  # tokens; prompts keep their end
    config.data.max_completion_length = 256  # tokens per response = the Jacobi block (DiffPO: 256)
    config.data.chat_template = "auto"  # Llama-3 chat template of the tokenizer

    config.diffpo.trajectory_source = "ultrafeedback"  # openbmb/UltraFeedback rows
    config.diffpo.score_field = "overall_score"  # GPT-4's overall rating of each completion ranks the trajectory
    config.diffpo.max_states = 3  # 4 completions per prompt: 3 states below the target
    config.diffpo.omega = 0.1  # CLLM: L_cons + 10·L_AR, i.e. L_AR + 0.1·L_cons up to scale
    config.diffpo.divergence = "soft_ce"  # CLLM: -Σ_v sg[q(v|x,y(T))] log q(v|x,y(t)) (KL + entropy: KL's gradient)
    config.diffpo.label_smoothing = 0.1  # CLLM's LabelSmoother(epsilon=0.1) on L_AR
    config.diffpo.consistency_mask = "first_difference"  # CLLM: L_cons from the first token where y(t) and y(T) differ
    config.diffpo.reserve_tokens = 12  # DiffPO's --reserve_tokens: each base answer's first r ~ U{0..12} tokens kept
    config.diffpo.eval_steps = (1, 2, 4, 8)  # Jacobi step budgets reported
    config.diffpo.eval_converged = False  # up to 257 passes per 256-token block: off at this scale
    config.diffpo.on_overflow = "truncate"  # base answers are cut to the 256-token block
    config.diffpo.temperature = 0.0  # greedy Jacobi updates
    config.diffpo.prefix_cache = True  # 1024 prompt tokens computed once; each step runs 257 tokens, logits [8, 257, V] fp32

    config.likelihood.chunk_size = 128  # sequence chunk of the [B, C, 128k] logits, tokens

    config.optimizer.learning_rate = 2e-5  # CLLM
    config.optimizer.schedule = "cosine"  # CLLM
    config.optimizer.warmup_steps = round(0.03 * EPOCH_STEPS)  # CLLM's warm-up ratio 0.03 → 60 steps
    config.optimizer.weight_decay = 0.0  # CLLM
    config.optimizer.max_grad_norm = 1.0  # HF Trainer default

    config.train.max_steps = EPOCH_STEPS  # 1 epoch (CLLM)
    config.train.batch_size = BATCH  # global, trajectories
    config.train.grad_accum_steps = 4  # micro-batch 8; it must divide by the device count (mesh.data × mesh.fsdp)
    config.train.seed = 42  # orders the data and the state draws

    config.mesh.data = 1  # no pure data-parallel replicas
    config.mesh.fsdp = -1  # FSDP over every device
    config.mesh.tensor = 1  # no tensor parallelism

    config.checkpoint.every_steps = 200  # steps between checkpoints (resume)
    config.checkpoint.keep = 2  # latest checkpoints kept

    config.eval.num_examples = 805  # held-out prompts (AlpacaEval's size) when diffpo.eval_path is unset
    config.eval.reward_model_path = ""  # HF sequence-classification dir: rm_win_rate of aligned vs base answers
    config.eval.judge_path = ""  # optional local judge LM: judged win_rate / lc_win_rate of aligned vs base

    config.logging.every_steps = 1  # metrics_diffpo.jsonl line every step
    config.logging.progress = True  # tqdm progress bar
    config.logging.plots = False  # no plots for the diffpo task
    return config
