"""DiffPO (arXiv 2503.04240): a policy-agnostic aligner that refines any base model's response at
inference time by Jacobi iteration, trained with L_AR + ω·L_consistency on reward-ranked
trajectories. Modules: loss (pure, chunked; CLLM's label smoothing and first-difference mask),
jacobi (the token-level core: greedy or sampled updates, optional prompt KV cache), refine (text
in, text out; the authors' reserved prefix), trajectories (gym data), text_data (trajectories from
ranked / UltraFeedback files); the ``diffpo`` task is pojax.train.diffpo."""
from pojax.diffpo.jacobi import JacobiResult, greedy_next, jacobi_refine, jacobi_step
from pojax.diffpo.loss import (
           diffpo_loss,
           diffpo_model_loss,
           token_divergence_from_hidden,
)
from pojax.diffpo.refine import draw_reserved_prefix, refine

__all__ = ["JacobiResult", "diffpo_loss", "diffpo_model_loss", "draw_reserved_prefix", "greedy_next", "jacobi_refine",
           "jacobi_step", "refine", "token_divergence_from_hidden"]
