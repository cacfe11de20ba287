"""Preference objectives on packed batches (pojax.data.packing): several chosen/rejected pairs per
row, each sequence its own segment.

One forward per model over the packed rows [R, L] (segment ids keep attention inside a segment,
positions restart per segment), per-token log-probs with targets that never cross a segment
boundary, per-segment sums [R, S], then a gather of each pair slot's chosen and rejected segment
into PairLogps [P]. Every pair's numbers equal those of ``pair_logps`` on the unpacked pair (up to
float rounding of the attention over a different padding); the loss is a mean over the pair
slots that hold a pair (``pair_mask``), since the number of pairs per batch varies.

Batch keys (see pojax.data.packing): input_ids, segment_ids, positions [R, L] int32;
completion_mask [R, L] bool; pair_row, pair_chosen, pair_rejected [P] int32; pair_mask [P] bool;
optional ref_chosen / ref_rejected [P] float32 (precomputed reference).
"""
from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp

from pojax import losses
from pojax.likelihood import autoregressive as ar

# Losses whose per-example values depend on the other examples of the batch: empty pair slots
# would enter their batch statistic (the sort of AOT, the token-averaged chosen NLL).
_COUPLED = ("aot", "aot_unpaired", "sft", "orpo", "asft")


def _segment_sums(model, batch, num_segments: int, chunk_size: int, vocab_chunk_size=ar.DEFAULT_VOCAB_CHUNK):
    """([R, S] per-segment completion log-likelihoods, [R, S] completion token counts)."""
    ids, seg = batch["input_ids"], batch["segment_ids"]
    targets, tmask = ar.shift_targets(ids, batch["completion_mask"], segment_ids_BT=seg)
    tok = ar.token_logps(model, ids, targets, chunk_size=chunk_size, positions=batch["positions"], segment_ids=seg,
                         vocab_chunk_size=vocab_chunk_size)
    counts = ar.segment_logps(jnp.ones(tok.shape, jnp.float32), seg, tmask, num_segments)
    return ar.segment_logps(tok, seg, tmask, num_segments), counts


def _gather(x_RS, batch, side: str, empty: float):
    """[P] values of each slot's ``side`` segment ("chosen" | "rejected"); ``empty`` where no pair."""
    col = jnp.maximum(batch[f"pair_{side}"] - 1, 0)  # segment s sits in column s - 1; empty slots hold 0
    return jnp.where(batch["pair_mask"], x_RS[batch["pair_row"], col], empty)


def packed_pair_logps(policy, reference, batch, *, chunk_size: int = 1024,
                      vocab_chunk_size: int | None = ar.DEFAULT_VOCAB_CHUNK) -> tuple[losses.PairLogps, jax.Array]:
    """PairLogps [P] of a packed batch, and its pair mask [P] bool.

    Empty slots get log-likelihoods 0 and lengths 1 (finite in every loss, so their masked-out
    values cannot leak NaN into gradients). Token-level fields (chosen_tokens) are None: the
    per-pair token rows would have to be unpacked.

    Args:
      policy: the causal LM (``hidden_states(ids, positions=, segment_ids=)``, ``lm_head_weight()``).
      reference: a frozen causal LM, or None (then ``batch["ref_chosen"]`` / ``["ref_rejected"]``
        if present, else a reference-free PairLogps).
      batch: a packed batch (module docstring); S is taken as 2 · (P // R).
      chunk_size: sequence positions per log-softmax chunk.

    Returns:
      (PairLogps with [P] float32 fields, pair_mask [P] bool).
    """
    num_rows, num_slots = batch["input_ids"].shape[0], batch["pair_mask"].shape[0]
    num_segments = 2 * (num_slots // num_rows)
    seq, counts = _segment_sums(policy, batch, num_segments, chunk_size, vocab_chunk_size)
    if reference is not None:
        ref_seq = jax.lax.stop_gradient(_segment_sums(reference, batch, num_segments, chunk_size, vocab_chunk_size)[0])
        ref_chosen, ref_rejected = _gather(ref_seq, batch, "chosen", 0.0), _gather(ref_seq, batch, "rejected", 0.0)
    else:
        ref_chosen, ref_rejected = batch.get("ref_chosen"), batch.get("ref_rejected")
    logps = losses.PairLogps(
        chosen=_gather(seq, batch, "chosen", 0.0), rejected=_gather(seq, batch, "rejected", 0.0),
        ref_chosen=ref_chosen, ref_rejected=ref_rejected,
        chosen_len=_gather(counts, batch, "chosen", 1.0), rejected_len=_gather(counts, batch, "rejected", 1.0))
    return logps, jnp.asarray(batch["pair_mask"], bool)


def check_packable(loss_name, hparams: dict) -> None:
    """Raises ValueError for a loss or hyperparameter that packed batches cannot serve (yet):
    batch-coupled losses (AOT's sort, the chosen-NLL term of sft / orpo / asft / cpo_alpha /
    rpo_alpha), whose batch statistic would include the empty pair slots, and the token-level
    modifiers (ld_alpha, use_weighting), which need per-pair token rows."""
    parts = [p.strip() for p in loss_name.split("+")] if isinstance(loss_name, str) else list(loss_name)
    coupled = {id(losses.get(n)) for n in _COUPLED}
    for part in parts:
        fn = losses.get(part)
        cpo = inspect.signature(fn).parameters.get("cpo_alpha")
        cpo_alpha = hparams.get("cpo_alpha", cpo.default) if cpo is not None else 0.0
        if id(fn) in coupled or cpo_alpha:
            why = f"cpo_alpha={cpo_alpha}" if cpo_alpha else f"loss {part!r}"
            raise ValueError(f"data.packing: {why} couples the examples of a batch (a batch-wide sort or "
                             "token-averaged NLL), which empty pair slots would distort; set data.packing=False")
    token_level = [k for k in ("ld_alpha", "use_weighting") if hparams.get(k) not in (None, False)]
    if token_level:
        raise ValueError(f"data.packing: loss.{token_level[0]} needs per-pair token log-probs, which packed "
                         "batches do not provide; set data.packing=False")
    if hparams.get("rpo_alpha") not in (None, 0, 0.0):
        raise ValueError("data.packing: loss.rpo_alpha adds a batch-wide chosen NLL, which empty pair slots "
                         "would distort; set data.packing=False")


def _masked_metrics(metrics: dict, pair_mask) -> dict:
    """Per-example metrics → their mean over present pairs (NaN entries skipped, as nanmean)."""
    out = {}
    for k, v in metrics.items():
        if jnp.ndim(v):
            keep = pair_mask & ~jnp.isnan(v)
            out[k] = jnp.sum(jnp.where(keep, v, 0.0)) / jnp.sum(keep)
        else:
            out[k] = v
    return out


def packed_preference_loss(policy, reference, batch, *, loss_name, hparams: dict, chunk_size: int = 1024,
                           state=None, vocab_chunk_size: int | None = ar.DEFAULT_VOCAB_CHUNK):
    """(mean loss over present pairs, {metric: scalar}, new loss state) of a registered paired
    loss on a packed batch; ``pojax.objectives.preference_loss`` for packed rows.

    L = Σ_k m_k ℓ_k / max(Σ_k m_k, 1) with m = pair_mask and ℓ_k the loss of pair slot k, so a
    batch gives the same loss and gradients as ``preference_loss`` on its pairs unpacked.

    Raises:
      ValueError: a loss or hyperparameter that packing does not support (``check_packable``).
    """
    check_packable(loss_name, hparams)
    logps, pair_mask = packed_pair_logps(policy, reference, batch, chunk_size=chunk_size,
                                         vocab_chunk_size=vocab_chunk_size)
    out = losses.get(loss_name)(logps, **hparams)
    n = jnp.maximum(jnp.sum(pair_mask), 1).astype(jnp.float32)
    loss = jnp.sum(jnp.where(pair_mask, out.loss, 0.0)) / n
    del state  # no paired loss keeps state; the argument mirrors preference_loss
    return loss, _masked_metrics(out.metrics, pair_mask), out.state
