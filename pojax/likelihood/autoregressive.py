"""Per-token log-probs of a causal LM from its final hidden states, without the logits wall.

log p(y_t) = z_t[y_t] - logsumexp_v z_t[v] with z_t = h_t · W is computed chunk by chunk over
the sequence axis: each chunk builds its [B, C, V] float32 logits, reduces them to [B, C], and
runs under ``jax.checkpoint``, so the backward pass recomputes a chunk's logits instead of
keeping them. Peak temporary memory therefore grows with B·C·V (per device), never with B·T·V
(tests/likelihood/test_autoregressive.py compares the compiled memory at V = 128k).

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


def _chunk_token_logps(h_BCD, w_DV, targets_BC, *, logit_soft_cap, with_sq: bool):
    """log p(target) [B, C] and log Σ_v p(v)² [B, C] (zeros unless with_sq) of one chunk.

    The [B, C, V] logits exist only inside this function (and its recomputation).
    """
    # bf16 in, fp32 out: the products accumulate in fp32 and the logits are never rounded.
    logits_BCV = jnp.einsum("bcd,dv->bcv", h_BCD, w_DV, preferred_element_type=jnp.float32)
    if logit_soft_cap is not None:
        # Gemma-2 style cap, applied before the softmax exactly as in the model's own logits.
        logits_BCV = logit_soft_cap * jnp.tanh(logits_BCV / logit_soft_cap)
    lse_BC = jax.nn.logsumexp(logits_BCV, axis=-1)
    picked_BC = jnp.take_along_axis(logits_BCV, targets_BC[..., None], axis=-1)[..., 0]
    if with_sq:
        # log Σ p² = logsumexp(2z) - 2·logsumexp(z): stays finite where Σ p² underflows.
        log_sq_BC = jax.nn.logsumexp(2.0 * logits_BCV, axis=-1) - 2.0 * lse_BC
    else:
        log_sq_BC = jnp.zeros_like(lse_BC)
    return picked_BC - lse_BC, log_sq_BC


def token_logps_from_hidden(hidden_BTD, lm_head_DV, targets_BT, *, chunk_size: int = 1024,
                            logit_soft_cap: float | None = None, return_log_sum_sq: bool = False):
    r"""Per-position log-probs of ``targets`` under softmax(h · W), chunked over the sequence.

    .. math:: \log p_{b,t} = z_{b,t}[y_{b,t}] - \log \sum_v e^{z_{b,t}[v]},\quad
              z_{b,t} = \mathrm{cap}(h_{b,t} W)

    and, when asked, :math:`\log \sum_v p_{b,t}(v)^2` (WPO's sampling-aware weight, Zhou et al.,
    arXiv 2406.11827, Eq. 5) from the same logits.

    T is padded up to a multiple of the chunk C (padded positions are computed on zeros and
    dropped). Each chunk runs under ``jax.checkpoint`` inside ``jax.lax.map``: the backward pass
    recomputes its logits, so neither pass holds more than a few [B, C, V] fp32 buffers plus the
    [D, V] gradient of the head. Gradients flow to ``hidden_BTD`` and ``lm_head_DV``
    (also through the log Σ p² output; stop them in the loss if it wants a constant weight).

    Args:
      hidden_BTD: [B, T, D] final (post-norm) hidden states, float32 or bfloat16.
      lm_head_DV: [D, V] LM-head weight (the transposed embedding when tied), any float dtype;
        the matmul accumulates in float32 whatever the inputs.
      targets_BT: [B, T] int token ids scored at each position (any value where masked out,
        but within [0, V)).
      chunk_size: C, sequence positions per chunk (clamped to T); temp memory ∝ B·C·V.
      logit_soft_cap: if set, logits become cap·tanh(logits / cap) before the softmax
        (Gemma-2's final_logit_softcapping); None leaves them as they are.
      return_log_sum_sq: also return log Σ_v p(v)² per position, computed in the same pass.

    Returns:
      [B, T] float32 log p(targets), or a pair ([B, T], [B, T]) float32 with log Σ p² second.
    """
    b, t, d = hidden_BTD.shape
    c = max(1, min(int(chunk_size), t))
    n_chunks = -(-t // c)
    pad = n_chunks * c - t
    targets_BT = targets_BT.astype(jnp.int32)
    if pad:
        hidden_BTD = jnp.pad(hidden_BTD, ((0, 0), (0, pad), (0, 0)))
        targets_BT = jnp.pad(targets_BT, ((0, 0), (0, pad)))
    # [B, T, D] -> [N, B, C, D]: chunks lead (the lax.map axis), the batch axis stays intact.
    h_NBCD = jnp.moveaxis(hidden_BTD.reshape(b, n_chunks, c, d), 1, 0)
    targets_NBC = jnp.moveaxis(targets_BT.reshape(b, n_chunks, c), 1, 0)

    body = functools.partial(_chunk_token_logps, logit_soft_cap=logit_soft_cap,
                             with_sq=return_log_sum_sq)
    # prevent_cse=False is safe (and cheaper) under a loop: lax.map cannot CSE across iterations.
    body = jax.checkpoint(body, prevent_cse=False)
    logps_NBC, log_sq_NBC = jax.lax.map(lambda xs: body(xs[0], lm_head_DV, xs[1]), (h_NBCD, targets_NBC))

    def unchunk(x_NBC):
        return jnp.moveaxis(x_NBC, 0, 1).reshape(b, n_chunks * c)[:, :t]

    if return_log_sum_sq:
        return unchunk(logps_NBC), unchunk(log_sq_NBC)
    return unchunk(logps_NBC)


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


def token_logps(model, input_ids_BT, targets_BT, *, chunk_size: int = 1024, positions=None,
                segment_ids=None, logit_soft_cap: float | None = None, return_log_sum_sq: bool = False):
    """Per-token log-probs [B, T] float32 of ``targets`` under a pojax causal LM.

    ``model.hidden_states`` followed by ``token_logps_from_hidden``; the full logits are never
    built. Any object with ``hidden_states(input_ids, *, positions, segment_ids) -> [B, T, D]``
    and ``lm_head_weight() -> [D, V]`` works (duck-typed: likelihood/ does not import models/).

    Args:
      model: the causal LM.
      input_ids_BT: [B, T] int32 inputs.
      targets_BT: [B, T] int ids scored at each position (see ``shift_targets``).
      chunk_size, logit_soft_cap, return_log_sum_sq: as in ``token_logps_from_hidden``.
      positions, segment_ids: optional [B, T], passed to the model (packed rows).

    Returns:
      [B, T] float32, or ([B, T], [B, T]) with log Σ p² when ``return_log_sum_sq``.
    """
    hidden_BTD = model.hidden_states(input_ids_BT, positions=positions, segment_ids=segment_ids)
    # The head in the activations' dtype, as the model's own full-logits path casts it, so both
    # paths give the same numbers in bf16.
    w_DV = model.lm_head_weight().astype(hidden_BTD.dtype)
    return token_logps_from_hidden(hidden_BTD, w_DV, targets_BT, chunk_size=chunk_size,
                                   logit_soft_cap=logit_soft_cap, return_log_sum_sq=return_log_sum_sq)
