"""DiffPO at paper scale with the paper's other aligner family: a Gemma-2-9B-it aligner (the
paper's DiffPO-9B, arXiv 2503.04240) trained on UltraFeedback trajectories, then applied to other
models' answers and scored by a reward model — configs/diffpo_llama3_8b_ultrafeedback.py with
Gemma 2 (Gemma Team, arXiv 2408.00118) in place of Llama 3; every choice and departure listed
there holds here.

On a TPU VM (every host runs the same command) or a GPU machine, with local copies of
google/gemma-2-9b-it, openbmb/UltraFeedback and a sequence-classification reward model:

    python -m pojax.main --config=configs/diffpo_gemma2_9b_ultrafeedback.py \\
        --config.model.path=/ckpts/gemma-2-9b-it \\
        --config.data.path=/data/UltraFeedback \\
        --config.eval.reward_model_path=/ckpts/reward_model \\
        --workdir=/runs/diffpo_gemma2_9b_ultrafeedback

Gemma 2's soft caps are applied where the aligner's logits are used: the final-logit cap (30) in
L_AR's log-probs, in the consistency KL and in the Jacobi refinement; the attention cap (50) in
pojax's XLA attention (model.attention_impl = "xla").
"""
import os

from pojax.config import recipe

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
    config = recipe(os.path.join(HERE, "diffpo_llama3_8b_ultrafeedback.py"))  # DiffPO-8B's settings
    config.model.path = ""  # required: --config.model.path=<gemma-2-9b-it HF dir> (the aligner)
    config.model.attention_impl = "xla"  # pojax's attention: Gemma 2's attention-logit soft cap
    config.data.chat_template = "auto"  # Gemma chat template of the tokenizer (<start_of_turn>user ... model)
    config.likelihood.chunk_size = 64  # sequence chunk of the [B, C, 256k] logits, tokens (twice Llama 3's vocabulary)
    config.train.grad_accum_steps = 8  # micro-batch 4 (9B, 256k vocabulary); it must divide by the device count
    return config
