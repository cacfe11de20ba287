"""Log-probs of K completions of one prompt from one forward pass that computes the prompt once.

Prefix sharing (Wang & Hegde, "Accelerating Direct Preference Optimization with Prefix Sharing",
arXiv 2410.20305). A paired batch holds each pair as two right-padded rows that repeat the
prompt, [prompt chosen pad] and [prompt rejected pad]; the fused [chosen; rejected] forward runs
the prompt twice. Here the K sequences of row b (K = 2 for pairs, K responses for ranked rows),
which share their first p_b tokens, become ONE row of T + (K - 1)·W tokens:

    tokens    [prompt  completion_0  pad ... ][completion_1 window (W)] ... [completion_K-1 window]
    branch     0 0 0   1 1 1 1 1 1   1 ...     2 2 2 2 2 2 2 2            ... K K K K K K K K
    position   0 .. p-1  p p+1 ...             p p+1 ... p+W-1                p ...

where window k holds tokens [p_b, p_b + W) of sequence k. Attention keeps keys with a position
≤ the query's on the shared trunk (branch 0) or on the query's own branch, so every completion
token sees exactly the tokens it sees in its own row, at the same positions: the numbers equal
those of the separate rows up to float rounding. The LM head then runs only on the K·W positions
that score a completion token (the last prompt token's hidden state scores the first token of
every completion), not on all K·T.

For the tiny benchmark (64 + 64 tokens, K = 2) the transformer runs 192 positions instead of 256
and the head 128 instead of 256; on the small one the head is ~40% of the FLOPs per token.

Preconditions (``check_rows`` tests them on the host; pojax.train checks every row it trains on):
the K sequences of a row are equal before p_b (the first completion token of any of them), and
every completion token lies in [p_b, p_b + W). Tokens outside the window would be dropped.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from pojax.likelihood.autoregressive import DEFAULT_VOCAB_CHUNK, soft_cap_of, token_logps_from_hidden


def prompt_lengths(mask_BKT):
    """[B] int32: p_b, the index of the first completion token of row b over its K sequences
    (T for a row without completion tokens)."""
    any_BT = jnp.any(jnp.asarray(mask_BKT, bool), axis=1)
    t = any_BT.shape[-1]
    return jnp.where(jnp.any(any_BT, -1), jnp.argmax(any_BT, -1), t).astype(jnp.int32)


def shared_rows(ids_BKT, prompt_len_B, width: int):
    """The shared-prompt layout of K sequences per row (module docstring).

    Args:
      ids_BKT: [B, K, T] int token ids, right-padded, equal before prompt_len_B.
      prompt_len_B: [B] int32, p_b.
      width: W, the static completion window.

    Returns:
      (input_ids, positions, branch_ids), each [B, T + (K - 1)·W] int32.
    """
    b, k, t = ids_BKT.shape
    src_BW = prompt_len_B[:, None] + jnp.arange(width, dtype=jnp.int32)[None]  # token index of window slot j
    idx = jnp.broadcast_to(jnp.minimum(src_BW, t - 1)[:, None, :], (b, k - 1, width))
    windows = jnp.take_along_axis(ids_BKT[:, 1:], idx, axis=2).reshape(b, (k - 1) * width)
    pos_T = jnp.arange(t, dtype=jnp.int32)
    positions = jnp.concatenate([jnp.broadcast_to(pos_T, (b, t)),
                                 jnp.broadcast_to(src_BW[:, None, :], (b, k - 1, width)).reshape(b, -1)], axis=1)
    trunk = jnp.where(pos_T[None] < prompt_len_B[:, None], 0, 1).astype(jnp.int32)
    branches = jnp.broadcast_to(jnp.arange(2, k + 1, dtype=jnp.int32)[None, :, None], (b, k - 1, width))
    branch_ids = jnp.concatenate([trunk, branches.reshape(b, -1)], axis=1)
    return jnp.concatenate([ids_BKT[:, 0], windows], axis=1).astype(jnp.int32), positions, branch_ids


QUERY_BLOCK = 64  # causal query blocks of the first sequence (attention_parts)


def attention_parts(t: int, width: int, k: int, query_block: int = QUERY_BLOCK) -> tuple:
    """Static key ranges of the shared layout (pojax.models.layers.PartMasks): the first
    sequence [0, T) in causal query blocks (block [s, e) sees keys [0, e): later ones are in its
    future), and window i sees only [0, T) and itself (never another completion). The scores of
    the hidden blocks are then never computed: at T = 512, W = 256, K = 2, 393k of 590k."""
    first = tuple((s, min(s + query_block, t), ((0, min(s + query_block, t)),)) for s in range(0, t, query_block))
    windows = tuple((t + i * width, t + (i + 1) * width, ((0, t), (t + i * width, t + (i + 1) * width)))
                    for i in range(k - 1))
    return first + windows


def layout_parts(t: int, width: int, k: int) -> tuple | None:
    """The attention parts ``token_logps`` uses: ``attention_parts`` once the first sequence
    spans more than one query block, else None (one masked attention over the whole row).
    Measured on the benchmarks' shared-prompt steps (experiments/bench, jitted-step A/B): the
    tiny step (T = 128) 0.344 s with one attention, 0.326 with 128-token blocks, 0.313 with 64;
    the small one (T = 512) the same within noise for 256, 128 and 64."""
    return attention_parts(t, width, k) if t > QUERY_BLOCK else None


def _scoring_index(prompt_len_B, k: int, t: int, width: int):
    """[B, K, W] row index whose hidden state scores window slot j of sequence k: p_b − 1 + j in
    the first sequence; for the others p_b − 1 (the shared last prompt token) at j = 0, else
    the previous slot of their own window. Clamped into the row (p_b = 0 scores nothing at j = 0,
    slots past T nothing at all)."""
    j = jnp.arange(width, dtype=jnp.int32)
    first = prompt_len_B[:, None] - 1 + j[None]  # [B, W]
    own = t + (jnp.arange(1, k, dtype=jnp.int32)[:, None] - 1) * width + j[None] - 1  # [K-1, W]
    others = jnp.where(j[None, None] == 0, first[:, None, :1], own[None])  # [B, K-1, W]
    rows = jnp.concatenate([first[:, None], others], axis=1)
    return jnp.clip(rows, 0, t + (k - 1) * width - 1)  # out-of-range slots are masked out


def _to_rows(x_BKW, prompt_len_B, t: int):
    """[B, K, W] window values → [B, K, T] at the shifted-target positions (position t scores
    token t + 1, as ``shift_targets``): slot j sits at t = p_b − 1 + j; 0 / False elsewhere."""
    width = x_BKW.shape[-1]
    j_BT = jnp.arange(t, dtype=jnp.int32)[None] - (prompt_len_B[:, None] - 1)
    inside = (j_BT >= 0) & (j_BT < width)
    got = jnp.take_along_axis(x_BKW, jnp.clip(j_BT, 0, width - 1)[:, None, :], axis=2)
    return jnp.where(inside[:, None, :], got, jnp.zeros((), x_BKW.dtype))


def token_logps(model, ids_BKT, mask_BKT, width: int, *, chunk_size: int = 1024, return_log_sum_sq: bool = False,
                vocab_chunk_size: int | None = DEFAULT_VOCAB_CHUNK):
    """Per-token log-probs of K completions per row from one shared-prompt forward.

    The same result as ``shift_targets`` + ``autoregressive.token_logps`` on each of the K·B
    rows (module docstring for the layout and the preconditions).

    Args:
      model: a causal LM with ``hidden_states(ids, *, positions, branch_ids, attention_parts)`` and
        ``lm_head_weight()`` (pojax.models.CausalLM).
      ids_BKT: [B, K, T] int32 token ids, right-padded; the K rows of b share their prompt.
      mask_BKT: [B, K, T] bool, the completion tokens to score.
      width: W, static; every completion token lies in [p_b, p_b + W).
      chunk_size, return_log_sum_sq, vocab_chunk_size: as in
        ``autoregressive.token_logps_from_hidden``.

    Returns:
      (log-probs [B, K, T] float32, target mask [B, K, T] bool) aligned as ``shift_targets``
      aligns them (position t scores token t + 1), 0 where the mask is False, and log Σ p²
      [B, K, T] third when asked.
    """
    b, k, t = ids_BKT.shape
    width = max(1, min(int(width), t))
    p_B = prompt_lengths(mask_BKT)
    ids, positions, branch_ids = shared_rows(ids_BKT, p_B, width)
    hidden = model.hidden_states(ids, positions=positions, branch_ids=branch_ids,
                                 attention_parts=layout_parts(t, width, k))  # [B, T + (K-1)W, D]
    rows = _scoring_index(p_B, k, t, width).reshape(b, k * width)
    h_BND = jnp.take_along_axis(hidden, rows[:, :, None], axis=1)  # [B, K·W, D]
    src_BW = p_B[:, None] + jnp.arange(width, dtype=jnp.int32)[None]
    src_BKW = jnp.broadcast_to(jnp.minimum(src_BW, t - 1)[:, None], (b, k, width))
    targets = jnp.take_along_axis(ids_BKT, src_BKW, axis=2)
    tmask = (jnp.take_along_axis(jnp.asarray(mask_BKT, bool), src_BKW, axis=2)
             & (src_BW < t)[:, None] & (src_BW >= 1)[:, None])
    w = model.lm_head_weight().astype(hidden.dtype)
    out = token_logps_from_hidden(h_BND, w, targets.reshape(b, k * width), chunk_size=chunk_size,
                                  logit_soft_cap=soft_cap_of(model), return_log_sum_sq=return_log_sum_sq, vocab_chunk_size=vocab_chunk_size)
    outs = out if return_log_sum_sq else (out,)
    outs = [_to_rows(jnp.where(tmask, o.reshape(b, k, width), 0.0), p_B, t) for o in outs]
    mask_rows = _to_rows(tmask, p_B, t)
    return (outs[0], mask_rows, outs[1]) if return_log_sum_sq else (outs[0], mask_rows)


def window_width(ids_NKT: np.ndarray, mask_NKT: np.ndarray) -> int | None:
    """The smallest W that serves every row of a dataset (max over rows of last completion
    token + 1 − p_b), or None when some row breaks the shared-prompt precondition (two of its
    sequences with completion tokens differ before p_b) or has no completion token at all.
    Sequences without completion tokens (ragged ranked rows) score nothing and may differ.
    Host-side numpy, in blocks of rows."""
    widths = []
    for start in range(0, len(ids_NKT), 4096):
        ids, mask = np.asarray(ids_NKT[start:start + 4096]), np.asarray(mask_NKT[start:start + 4096], bool)
        has = mask.any(axis=2)  # [n, K]
        anyc = mask.any(axis=1)  # [n, T]
        if not has.any(axis=1).all():
            return None
        t = mask.shape[-1]
        p = anyc.argmax(axis=1)
        last = t - 1 - anyc[:, ::-1].argmax(axis=1)
        lead = ids[np.arange(len(ids)), has.argmax(axis=1)]  # [n, T] a sequence with completion tokens
        before = np.arange(t)[None] < p[:, None]  # [n, T]
        differ = (ids != lead[:, None]) & before[:, None] & has[:, :, None]
        if differ.any():
            return None
        widths.append(int((last + 1 - p).max()))
    return max(widths) if widths else None
