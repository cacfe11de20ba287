"""Evaluation: win rates (with bootstrap intervals and length control), pairwise judges and
reward models, task accuracy (GSM8K, MMLU, generic JSONL; generation by each model's own sampler,
causal or masked-diffusion) and comparison reports across runs."""
from pojax.eval.win_rates import lc_win_rate, win_rates

__all__ = ["lc_win_rate", "win_rates"]
