"""Per-token log-probs of a causal LM from its final hidden states, without the logits wall.

log p(y_t) = z_t[y_t] - logsumexp_v z_t[v] with z_t = h_t · W is computed in tiles: chunks of C
positions of the sequence, and within each, tiles of Vt columns of the vocabulary reduced by an
online logsumexp (running max and rescaled sum, as in flash attention). A hand-written VJP keeps
only the inputs and the per-position logsumexps, and recomputes each tile's logits in the
backward pass, where d log p(y)/dz = onehot(y) - softmax(z) needs nothing else. Peak temporary
memory therefore grows with B·C·Vt (per device) plus the [D, V] gradient of the head: never with
B·T·V, and not with V beyond one tile (tests/likelihood/test_autoregressive.py compares the
compiled memory at V = 128k). This is the fused "linear + cross-entropy" of Liger-Kernel / Apple's
Cut-Cross-Entropy, written in plain JAX so XLA compiles it for CPU, GPU and TPU alike.

The batch axis stays whole inside every chunk, so a batch sharded over ("data", "fsdp") stays
sharded through the scan; ``chunk_size`` counts sequence positions, not tokens of the batch.

Conventions: position t of ``token_logps`` holds log p(targets[t] | h_t); for a causal LM
``shift_targets`` makes targets[t] = input_ids[t + 1]. Masks are bool, True = count this
position. All outputs are float32.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Vocabulary tile of the log-softmax: temp memory ∝ B·C·min(V, tile). 8192 keeps the tile's
# matmul large enough to run at full speed on CPU/GPU while a 128k vocabulary costs no more
# memory than an 8k one.
DEFAULT_VOCAB_CHUNK = 8192


def soft_cap(z, cap: float | None):
    """cap · tanh(z / cap), Gemma 2's logit soft cap; z as it is when cap is None."""
    return z if cap is None else cap * jnp.tanh(z / cap)


def head_logits(h_BCD, w_DV, logit_soft_cap: float | None = None):
    """Logits [B, C, V] float32 of hidden states [B, C, D] under a head [D, V]: bf16 in, fp32
    out (the products accumulate in fp32 and the logits are never rounded), soft-capped when
    ``logit_soft_cap`` is set, as the model's own logits are."""
    return soft_cap(jnp.einsum("bcd,dv->bcv", h_BCD, w_DV, preferred_element_type=jnp.float32), logit_soft_cap)


def _tile(h_BCD, w_DV, i, *, vt: int, logit_soft_cap):
    """Logits of vocabulary tile i: ([B, C, vt] fp32, column ids [vt], fresh [vt] bool).

    The last tile is clamped to end at V, so it may overlap the previous one; ``fresh`` marks
    the columns no earlier tile covered (the others must be ignored).
    """
    v = w_DV.shape[1]
    start = jnp.minimum(i * vt, v - vt)
    w_DT = jax.lax.dynamic_slice_in_dim(w_DV, start, vt, axis=1)
    z_BCT = head_logits(h_BCD, w_DT, logit_soft_cap)
    cols_T = start + jnp.arange(vt)
    return z_BCT, start, cols_T, cols_T >= i * vt


def _n_tiles(v: int, vt: int) -> int:
    return -(-v // vt)


def _tiles(n: int, body, carry):
    """fori_loop over n tiles, or one direct call when there is a single tile."""
    return body(0, carry) if n == 1 else jax.lax.fori_loop(0, n, body, carry)


def _chunk_forward(h_BCD, w_DV, targets_BC, *, vt, logit_soft_cap, with_sq):
    """(log p(target), lse, lse of 2z) [B, C] each, by an online logsumexp over vocab tiles."""
    zeros = jnp.zeros_like(targets_BC, dtype=jnp.float32)

    def body(i, carry):
        m, s, s2, picked = carry
        z, _, cols, fresh = _tile(h_BCD, w_DV, i, vt=vt, logit_soft_cap=logit_soft_cap)
        z = jnp.where(fresh, z, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(z, axis=-1))
        scale = jnp.exp(m - m_new)
        s = s * scale + jnp.sum(jnp.exp(z - m_new[..., None]), axis=-1)
        if with_sq:
            s2 = s2 * scale**2 + jnp.sum(jnp.exp(2.0 * (z - m_new[..., None])), axis=-1)
        hit = fresh & (cols == targets_BC[..., None])
        picked = picked + jnp.sum(jnp.where(hit, z, 0.0), axis=-1)
        return m_new, s, s2, picked

    m, s, s2, picked = _tiles(_n_tiles(w_DV.shape[1], vt), body, (zeros - jnp.inf, zeros, zeros, zeros))
    lse = m + jnp.log(s)
    # log Σ p² = logsumexp(2z) - 2·logsumexp(z): stays finite where Σ p² underflows.
    lse2 = 2.0 * m + jnp.log(s2) if with_sq else zeros
    return picked - lse, lse, lse2


def _chunk_backward(h_BCD, w_DV, targets_BC, lse, lse2, g, g_sq, dw_DV, *, vt, logit_soft_cap, with_sq):
    """(dh [B, C, D] fp32, dW [D, V] fp32 with this chunk added), recomputing each tile's logits.

    d log p(y)/dz_v = 1[v = y] - p_v;  d log Σ p²/dz_v = 2 q_v - 2 p_v with q = softmax(2z);
    through the cap, dz/dl = 1 - (z / cap)².
    """
    def body(i, carry):
        dh, dw = carry
        z, start, cols, fresh = _tile(h_BCD, w_DV, i, vt=vt, logit_soft_cap=logit_soft_cap)
        p = jnp.exp(z - lse[..., None])
        dz = jnp.where(cols == targets_BC[..., None], g[..., None], 0.0) - g[..., None] * p
        if with_sq:
            dz = dz + g_sq[..., None] * (2.0 * jnp.exp(2.0 * z - lse2[..., None]) - 2.0 * p)
        if logit_soft_cap is not None:
            dz = dz * (1.0 - (z / logit_soft_cap) ** 2)
        dz = jnp.where(fresh, dz, 0.0).astype(h_BCD.dtype)
        w_DT = jax.lax.dynamic_slice_in_dim(w_DV, start, vt, axis=1)
        dh = dh + jnp.einsum("bcv,dv->bcd", dz, w_DT, preferred_element_type=jnp.float32)
        # Under an explicit mesh the batch contraction needs the output's sharding: the head's.
        dw_DT = jnp.einsum("bcd,bcv->dv", h_BCD, dz, preferred_element_type=jnp.float32,
                           out_sharding=jax.typeof(w_DT).sharding)
        dw = jax.lax.dynamic_update_slice_in_dim(
            dw, jax.lax.dynamic_slice_in_dim(dw, start, vt, axis=1) + dw_DT, start, axis=1)
        return dh, dw

    dh0 = jnp.zeros_like(h_BCD, dtype=jnp.float32)
    return _tiles(_n_tiles(w_DV.shape[1], vt), body, (dh0, dw_DV))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _chunked_logps(h_NBCD, w_DV, targets_NBC, vt, logit_soft_cap, with_sq):
    """(log p [N, B, C], log Σ p² [N, B, C]) over sequence chunks N and vocabulary tiles."""
    out, _ = _chunked_logps_fwd(h_NBCD, w_DV, targets_NBC, vt, logit_soft_cap, with_sq)
    return out


def _chunked_logps_fwd(h_NBCD, w_DV, targets_NBC, vt, logit_soft_cap, with_sq):
    fwd = functools.partial(_chunk_forward, vt=vt, logit_soft_cap=logit_soft_cap, with_sq=with_sq)
    logp, lse, lse2 = jax.lax.map(lambda xs: fwd(xs[0], w_DV, xs[1]), (h_NBCD, targets_NBC))
    log_sq = lse2 - 2.0 * lse if with_sq else jnp.zeros_like(lse)
    # Residuals: the inputs and two [N, B, C] statistics; no logits are kept.
    return (logp, log_sq), (h_NBCD, w_DV, targets_NBC, lse, lse2)


def _chunked_logps_bwd(vt, logit_soft_cap, with_sq, res, cotangents):
    h_NBCD, w_DV, targets_NBC, lse, lse2 = res
    g_logp, g_sq = cotangents
    bwd = functools.partial(_chunk_backward, vt=vt, logit_soft_cap=logit_soft_cap, with_sq=with_sq)

    def step(dw, xs):
        h, tg, l1, l2, g, gs = xs
        dh, dw = bwd(h, w_DV, tg, l1, l2, g.astype(jnp.float32), gs.astype(jnp.float32), dw)
        return dw, dh.astype(h_NBCD.dtype)

    dw0 = jnp.zeros_like(w_DV, dtype=jnp.float32)  # keeps the head's sharding
    dw, dh = jax.lax.scan(step, dw0, (h_NBCD, targets_NBC, lse, lse2, g_logp, g_sq))
    return dh, dw.astype(w_DV.dtype), None


_chunked_logps.defvjp(_chunked_logps_fwd, _chunked_logps_bwd)


def token_logps_from_hidden(hidden_BTD, lm_head_DV, targets_BT, *, chunk_size: int = 1024,
                            logit_soft_cap: float | None = None, return_log_sum_sq: bool = False,
                            vocab_chunk_size: int | None = DEFAULT_VOCAB_CHUNK):
    r"""Per-position log-probs of ``targets`` under softmax(h · W), chunked over the sequence.

    .. math:: \log p_{b,t} = z_{b,t}[y_{b,t}] - \log \sum_v e^{z_{b,t}[v]},\quad
              z_{b,t} = \mathrm{cap}(h_{b,t} W)

    and, when asked, :math:`\log \sum_v p_{b,t}(v)^2` (WPO's sampling-aware weight, Zhou et al.,
    arXiv 2406.11827, Eq. 5) from the same logits.

    T is padded up to a multiple of the chunk C (padded positions are computed on zeros and
    dropped). Sequence chunks run inside ``jax.lax.map`` and vocabulary tiles inside a
    ``fori_loop`` with an online logsumexp; the custom VJP recomputes each tile's logits, so
    neither pass holds more than a few [B, C, Vt] fp32 buffers plus the [D, V] fp32 gradient of
    the head. Gradients flow to ``hidden_BTD`` and ``lm_head_DV`` (also through the log Σ p²
    output; stop them in the loss if it wants a constant weight).

    With a vocabulary sharded over a mesh axis, a tile smaller than V slices across shards
    (XLA gathers the head); ``vocab_chunk_size=None`` keeps the whole vocabulary in one tile.

    Args:
      hidden_BTD: [B, T, D] final (post-norm) hidden states, float32 or bfloat16.
      lm_head_DV: [D, V] LM-head weight (the transposed embedding when tied), any float dtype;
        the matmul accumulates in float32 whatever the inputs.
      targets_BT: [B, T] int token ids scored at each position (any value where masked out,
        but within [0, V)).
      chunk_size: C, sequence positions per chunk (clamped to T); temp memory ∝ B·C·Vt.
      logit_soft_cap: if set, logits become cap·tanh(logits / cap) before the softmax
        (Gemma-2's final_logit_softcapping); None leaves them as they are.
      return_log_sum_sq: also return log Σ_v p(v)² per position, computed in the same pass.
      vocab_chunk_size: Vt, vocabulary columns per tile (clamped to V); None = one tile of V.

    Returns:
      [B, T] float32 log p(targets), or a pair ([B, T], [B, T]) float32 with log Σ p² second.
    """
    t = hidden_BTD.shape[1]
    h_NBCD, targets_NBC = to_chunks(hidden_BTD, chunk_size), to_chunks(targets_BT.astype(jnp.int32), chunk_size)
    v = lm_head_DV.shape[1]
    vt = v if vocab_chunk_size is None else max(1, min(int(vocab_chunk_size), v))
    logps_NBC, log_sq_NBC = _chunked_logps(h_NBCD, lm_head_DV, targets_NBC, vt, logit_soft_cap,
                                           bool(return_log_sum_sq))
    if return_log_sum_sq:
        return from_chunks(logps_NBC, t), from_chunks(log_sq_NBC, t)
    return from_chunks(logps_NBC, t)


def to_chunks(x_BT, chunk_size: int):
    """[B, T, ...] -> [N, B, C, ...]: sequence chunks of C = min(chunk_size, T) positions lead
    (the lax.map / scan axis), the batch axis stays whole (a batch-sharded input stays sharded);
    T is zero-padded up to N·C."""
    b, t = x_BT.shape[:2]
    c = max(1, min(int(chunk_size), t))
    n = -(-t // c)
    if n * c - t:
        x_BT = jnp.pad(x_BT, ((0, 0), (0, n * c - t)) + ((0, 0),) * (x_BT.ndim - 2))
    return jnp.moveaxis(x_BT.reshape(b, n, c, *x_BT.shape[2:]), 1, 0)


def from_chunks(x_NBC, t: int):
    """[N, B, C] -> [B, T]: the inverse of ``to_chunks`` for per-position outputs (padding dropped)."""
    n, b, c = x_NBC.shape
    return jnp.moveaxis(x_NBC, 0, 1).reshape(b, n * c)[:, :t]


def chunked_map(fn, xs_BT: tuple, chunk_size: int):
    """``fn(*chunks) -> [B, C]`` over sequence chunks of the [B, T, ...] arrays ``xs_BT`` (same
    B and T) under ``jax.lax.map``, reassembled to [B, T]: the per-position map shared by the
    chunked divergences (TDPO's token KL, DiffPO's consistency loss, Jacobi's next tokens).
    Padded positions are computed on zeros and dropped."""
    t = xs_BT[0].shape[1]
    out_NBC = jax.lax.map(lambda xs: fn(*xs), tuple(to_chunks(x, chunk_size) for x in xs_BT))
    return from_chunks(out_NBC, t)


def shift_targets(input_ids_BT, mask_BT, *, segment_ids_BT=None):
    """Next-token targets of a causal LM and the mask aligned to them.

    Position t scores the token after it: targets[:, t] = input_ids[:, t + 1] and
    mask[:, t] = mask_BT[:, t + 1], where ``mask_BT`` marks the *tokens* to score (e.g. the
    completion tokens, prompt and padding False). The last position has no next token: its
    target is 0 and its mask False. With ``segment_ids_BT`` (packed rows), a position whose next
    token starts another document is masked too, so no document scores its neighbour's tokens.
    On every unmasked position, the scored token belongs to segment_ids[t] (= segment_ids[t + 1]),
    so the unshifted segment ids can be passed to ``segment_logps`` with the returned mask.

    Args:
      input_ids_BT: [B, T] int token ids.
      mask_BT: [B, T] bool (or 0/1), True on tokens whose log-prob counts.
      segment_ids_BT: optional [B, T] int document ids of a packed row (0 = padding).

    Returns:
      (targets [B, T] int, mask [B, T] bool).
    """
    targets = jnp.concatenate([input_ids_BT[:, 1:], jnp.zeros_like(input_ids_BT[:, :1])], axis=1)
    mask = jnp.asarray(mask_BT, bool)
    mask = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
    if segment_ids_BT is not None:
        same_doc = segment_ids_BT[:, 1:] == segment_ids_BT[:, :-1]
        mask = mask & jnp.concatenate([same_doc, jnp.zeros_like(same_doc[:, :1])], axis=1)
    return targets, mask


def sequence_logps(token_logps_BT, mask_BT):
    """Σ_t mask[b, t] · log p[b, t]: the log-likelihood of each row's masked tokens.

    Args:
      token_logps_BT: [B, T] per-token log-probs (any float dtype).
      mask_BT: [B, T] bool, True on counted positions.

    Returns:
      [B] float32.
    """
    # `where`, not a product: a masked -inf (e.g. a padded target) must not turn the sum into NaN.
    values = jnp.where(jnp.asarray(mask_BT, bool), token_logps_BT.astype(jnp.float32), 0.0)
    return jnp.sum(values, axis=-1)


def mean_logps(token_logps_BT, mask_BT):
    """Σ_t mask · log p / max(Σ_t mask, 1): the per-token average (SimPO, IPO-style lengths).

    Args:
      token_logps_BT: [B, T] per-token log-probs.
      mask_BT: [B, T] bool.

    Returns:
      [B] float32; 0 for a row with no counted token.
    """
    n = jnp.sum(jnp.asarray(mask_BT, bool), axis=-1).astype(jnp.float32)
    return sequence_logps(token_logps_BT, mask_BT) / jnp.maximum(n, 1.0)


def segment_logps(token_logps_BT, segment_ids_BT, mask_BT, num_segments: int):
    """Per-document sums of packed rows: column s - 1 sums the masked positions of segment s.

    Args:
      token_logps_BT: [B, T] per-token log-probs.
      segment_ids_BT: [B, T] int, documents numbered 1..S within each row; 0 = padding.
        Ids outside 1..S are ignored.
      mask_BT: [B, T] bool, True on counted positions.
      num_segments: S, static.

    Returns:
      [B, S] float32; 0 for a segment that is absent or fully masked.
    """
    values_BT = jnp.where(jnp.asarray(mask_BT, bool), token_logps_BT.astype(jnp.float32), 0.0)
    ids_S = jnp.arange(1, num_segments + 1, dtype=segment_ids_BT.dtype)
    in_seg_BTS = segment_ids_BT[..., None] == ids_S
    # A masked sum rather than a one-hot matmul: exact fp32 adds even where matmuls default to
    # bf16 passes (TPU), and [B, T, S] is small next to the activations.
    return jnp.sum(jnp.where(in_seg_BTS, values_BT[..., None], 0.0), axis=1)


def soft_cap_of(model) -> float | None:
    """The model's final-logit soft cap (its ``logit_soft_cap``: Gemma 2's 30), None without one."""
    return getattr(model, "logit_soft_cap", None)


def token_logps(model, input_ids_BT, targets_BT, *, chunk_size: int = 1024, positions=None,
                segment_ids=None, logit_soft_cap: float | None = None, return_log_sum_sq: bool = False,
                vocab_chunk_size: int | None = DEFAULT_VOCAB_CHUNK):
    """Per-token log-probs [B, T] float32 of ``targets`` under a pojax causal LM.

    ``model.hidden_states`` followed by ``token_logps_from_hidden``; the full logits are never
    built. Any object with ``hidden_states(input_ids, *, positions, segment_ids) -> [B, T, D]``
    and ``lm_head_weight() -> [D, V]`` works (duck-typed: likelihood/ does not import models/).

    Args:
      model: the causal LM.
      input_ids_BT: [B, T] int32 inputs.
      targets_BT: [B, T] int ids scored at each position (see ``shift_targets``).
      chunk_size, logit_soft_cap, return_log_sum_sq, vocab_chunk_size: as in
        ``token_logps_from_hidden``; logit_soft_cap defaults to the model's own (``soft_cap_of``).
      positions, segment_ids: optional [B, T], passed to the model (packed rows).

    Returns:
      [B, T] float32, or ([B, T], [B, T]) with log Σ p² when ``return_log_sum_sq``.
    """
    hidden_BTD = model.hidden_states(input_ids_BT, positions=positions, segment_ids=segment_ids)
    # The head in the activations' dtype, as the model's own full-logits path casts it, so both
    # paths give the same numbers in bf16.
    w_DV = model.lm_head_weight().astype(hidden_BTD.dtype)
    cap = soft_cap_of(model) if logit_soft_cap is None else logit_soft_cap
    return token_logps_from_hidden(hidden_BTD, w_DV, targets_BT, chunk_size=chunk_size,
                                   logit_soft_cap=cap, return_log_sum_sq=return_log_sum_sq,
                                   vocab_chunk_size=vocab_chunk_size)
