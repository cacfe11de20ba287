"""The compute floor of a DPO step: model FLOPs over the machine's measured matmul throughput.

FLOPs of one optimizer step on ``2·pairs`` sequences of S tokens (N = 2·pairs·S tokens):

    policy forward + backward   6 · P_mm · N + 3 · A
    reference forward           2 · P_mm · N + A
    A (attention scores and values, one forward) = layers · 4 · S² · d · 2·pairs

P_mm counts the parameters that multiply activations (every linear layer and the LM head; the
embedding lookup is free). Attention is counted in full (S², as for a bidirectional model): a
causal kernel may skip half, so the floor is conservative for the causal models here.
"""
from __future__ import annotations

import subprocess
import sys

from experiments.bench.workload import Workload


def matmul_params(w: Workload) -> int:
    head = w.hidden // w.heads
    attn = 2 * w.hidden * w.hidden + 2 * w.hidden * w.kv_heads * head
    return w.layers * (attn + 3 * w.hidden * w.intermediate) + w.vocab * w.hidden


def dpo_step_flops(w: Workload) -> float:
    seqs = 2 * w.pairs
    tokens = seqs * w.seq_len
    attention = w.layers * 4 * w.seq_len ** 2 * w.hidden * seqs
    return 8 * matmul_params(w) * tokens + 4 * attention


def pojax_step_flops(w: Workload) -> float:
    """FLOPs of pojax's own DPO step on the workload: each pair as one shared-prompt row of
    prompt + 2 · completion tokens (pojax.likelihood.shared_prompt), the LM head on the 2 ·
    completion scoring positions only, plus the head's recomputation in the tiled log-prob
    backward; attention over the key ranges of ``layout_parts`` (causal query blocks of the
    first sequence, the window against the first sequence and itself), or the whole row."""
    from pojax.likelihood.shared_prompt import layout_parts

    t, width = w.prompt_len + w.completion_len, w.completion_len
    layer_params = matmul_params(w) - w.vocab * w.hidden
    row_tokens, head_tokens = w.pairs * (t + width), w.pairs * 2 * width
    parts = layout_parts(t, width, 2) or ((0, t + width, ((0, t + width),)),)  # None: one full attention
    key_pairs = sum((qe - qs) * sum(b - a for a, b in kr) for qs, qe, kr in parts)
    attention = w.layers * 4 * key_pairs * w.hidden * w.pairs  # one forward: QKᵀ and PV, 2 FLOPs per MAC
    forward = 2 * layer_params * row_tokens + 2 * w.vocab * w.hidden * head_tokens + attention
    return forward * 3 + 2 * w.vocab * w.hidden * head_tokens + forward  # policy fwd + bwd, recompute, reference


_MATMUL = """
import time, jax, jax.numpy as jnp
n = {n}
a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
f = jax.jit(lambda x: x @ x)
f(a).block_until_ready()
best = min((lambda t0: (f(a).block_until_ready(), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range({reps}))
print(2 * n ** 3 / best)
"""


def matmul_flops_per_s(n: int = 2048, reps: int = 10, python: str = sys.executable) -> float:
    """Best-of-``reps`` fp32 throughput of a jitted n×n matmul, measured in a fresh process."""
    out = subprocess.run([python, "-c", _MATMUL.format(n=n, reps=reps)], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])
