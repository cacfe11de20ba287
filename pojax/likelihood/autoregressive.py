"""Per-token log-probs of a causal LM without the logits wall.

log p(y_t) = h_t·w_{y_t} - logsumexp_v(h_t·w_v) is computed chunk by chunk over the flattened
B·T positions: each chunk builds its [C, V] float32 logits, reduces them, and is wrapped in
``jax.checkpoint`` so the backward pass recomputes them instead of keeping them. Peak memory
therefore scales with the chunk size C, not with B·T·V (see tests/likelihood for the
compiled-memory comparison at V = 128k).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _chunk_logps(h_CD, w_DV, targets_C, with_sq: bool):
    """[C] log p(target) (and [C] log Σ_v p(v)²) for one chunk; logits live only here."""
    logits = jnp.dot(h_CD, w_DV, preferred_element_type=jnp.float32)  # [C, V] fp32
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets_C[:, None], axis=-1)[:, 0]
    log_sq = jax.nn.logsumexp(2.0 * logits, axis=-1) - 2.0 * lse if with_sq else jnp.zeros_like(lse)
    return picked - lse, log_sq


def token_logps_from_hidden(hidden_BTD, lm_head_DV, targets_BT, *, chunk_size: int = 1024,
                            return_log_sum_sq: bool = False):
    """log p(targets[b, t] | h[b, t]) for every position, chunked over B·T positions.

    Args:
      hidden_BTD: [B, T, D] final hidden states (any float dtype; matmul accumulates in fp32).
      lm_head_DV: [D, V] LM-head weight.
      targets_BT: [B, T] int token ids to score at each position.
      chunk_size: positions per chunk (C); peak memory ∝ C·V.
      return_log_sum_sq: also return log Σ_v p(v)² per position (WPO's weight), same pass.
    Returns:
      [B, T] float32 log-probs, and [B, T] float32 log Σ p² when asked.
    """
    b, t, d = hidden_BTD.shape
    n = b * t
    c = max(1, min(chunk_size, n))
    n_chunks = -(-n // c)
    pad = n_chunks * c - n
    h = jnp.pad(hidden_BTD.reshape(n, d), ((0, pad), (0, 0))).reshape(n_chunks, c, d)
    tg = jnp.pad(targets_BT.reshape(n).astype(jnp.int32), (0, pad)).reshape(n_chunks, c)
    body = jax.checkpoint(functools.partial(_chunk_logps, with_sq=return_log_sum_sq))
    logps, log_sq = jax.lax.map(lambda args: body(args[0], lm_head_DV, args[1]), (h, tg))
    logps = logps.reshape(-1)[:n].reshape(b, t)
    if return_log_sum_sq:
        return logps, log_sq.reshape(-1)[:n].reshape(b, t)
    return logps


def shift_targets(input_ids_BT, mask_BT):
    """Next-token targets of a causal LM: position t scores input_ids[t + 1].

    Returns (targets [B, T], mask [B, T]) where targets[:, t] = input_ids[:, t + 1] and
    mask[:, t] = mask_BT[:, t + 1] (the last position scores nothing). ``mask_BT`` marks the
    tokens to score (e.g. completion tokens), so the log-prob at t is that of token t + 1.
    """
    targets = jnp.concatenate([input_ids_BT[:, 1:], jnp.zeros_like(input_ids_BT[:, :1])], axis=1)
    mask = jnp.concatenate([mask_BT[:, 1:], jnp.zeros_like(mask_BT[:, :1])], axis=1).astype(bool)
    return targets, mask


def sequence_logps(token_logps_BT, mask_BT):
    """Σ_t over masked positions: [B] float32 per-sequence log-likelihood."""
    return jnp.sum(jnp.where(mask_BT, token_logps_BT.astype(jnp.float32), 0.0), axis=-1)


def segment_logps(token_logps_BT, segment_ids_BT, mask_BT, num_segments: int):
    """Per-document sums of a packed row: [B, S] with column s-1 the sum over segment id s
    (ids 1..S; 0 = padding) of the masked positions."""
    onehot = jax.nn.one_hot(segment_ids_BT - 1, num_segments, dtype=jnp.float32)  # id 0 → all zeros
    values = jnp.where(mask_BT, token_logps_BT.astype(jnp.float32), 0.0)
    return jnp.einsum("bt,bts->bs", values, onehot)


def token_logps(model, input_ids_BT, targets_BT, *, chunk_size: int = 1024, positions=None, segment_ids=None,
                return_log_sum_sq: bool = False):
    """Per-token log-probs [B, T] of ``targets`` under a pojax causal LM, never building the
    full logits: ``model.hidden_states`` then the chunked LM-head pass above."""
    hidden = model.hidden_states(input_ids_BT, positions=positions, segment_ids=segment_ids)
    return token_logps_from_hidden(hidden, model.lm_head_weight(), targets_BT, chunk_size=chunk_size,
                                   return_log_sum_sq=return_log_sum_sq)
