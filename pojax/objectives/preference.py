"""Batch objectives: per-sequence log-likelihoods from a model, then a registered loss.

Batches are dicts of arrays:
  paired    chosen_ids, rejected_ids [B, T] int32; chosen_mask, rejected_mask [B, T] bool
            (completion tokens); optional ref_chosen, ref_rejected [B] (precomputed reference)
  unpaired  input_ids [B, T], completion_mask [B, T], label [B] bool, kl_ids / kl_mask [B, T]
            (each prompt with a mismatched completion, for KTO's z0); optional ref_logps, ref_kl
  ranked    input_ids [B, K, T], completion_mask [B, K, T] or [B, T], scores [B, K], optional
            rank_mask [B, K] and ref_logps [B, K]
  sft       input_ids [B, T], completion_mask [B, T]
The reference is a model (a frozen copy, or the LoRA base) or None (precomputed / reference-free).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pojax import losses
from pojax.likelihood import autoregressive as ar


def concat_pairs(chosen, rejected):
    """Stacks chosen rows over rejected rows along the batch: [2B, ...]. The one place pojax
    fuses the two halves of a pair into one forward pass (split with ``split_pairs``)."""
    return jnp.concatenate([chosen, rejected], axis=0)


def split_pairs(x):
    """Inverse of ``concat_pairs``: ([B, ...] chosen, [B, ...] rejected)."""
    n = x.shape[0] // 2
    return x[:n], x[n:]


def _token_logps(model, ids, mask, chunk_size, with_sq=False):
    targets, tmask = ar.shift_targets(ids, mask)
    out = ar.token_logps(model, ids, targets, chunk_size=chunk_size, return_log_sum_sq=with_sq)
    tok, sq = out if with_sq else (out, None)
    return tok, sq, tmask


def pair_logps(policy, reference, batch, *, chunk_size: int = 1024, with_log_sum_sq: bool = False) -> losses.PairLogps:
    """PairLogps of a paired batch: one fused forward of [chosen; rejected] per model."""
    ids = concat_pairs(batch["chosen_ids"], batch["rejected_ids"])
    mask = concat_pairs(batch["chosen_mask"], batch["rejected_mask"])
    tok, sq, tmask = _token_logps(policy, ids, mask, chunk_size, with_log_sum_sq)
    ref_tok = ref_seq = None
    if reference is not None:
        ref_tok = jax.lax.stop_gradient(_token_logps(reference, ids, mask, chunk_size)[0])
        ref_seq = ar.sequence_logps(ref_tok, tmask)
    seq = ar.sequence_logps(tok, tmask)
    lens = jnp.sum(tmask, axis=-1).astype(jnp.float32)

    def tokens(half):
        pick = lambda x: None if x is None else split_pairs(x)[half]
        extra = {} if sq is None else {"log_sum_sq_probs": pick(sq)}
        return losses.TokenLogps(policy=pick(tok), ref=pick(ref_tok), mask=pick(tmask), extra=extra)

    if ref_seq is not None:
        ref_chosen, ref_rejected = split_pairs(ref_seq)
    else:
        ref_chosen, ref_rejected = batch.get("ref_chosen"), batch.get("ref_rejected")
    chosen, rejected = split_pairs(seq)
    chosen_len, rejected_len = split_pairs(lens)
    return losses.PairLogps(chosen=chosen, rejected=rejected, ref_chosen=ref_chosen, ref_rejected=ref_rejected,
                            chosen_len=chosen_len, rejected_len=rejected_len,
                            chosen_tokens=tokens(0), rejected_tokens=tokens(1))


def unpaired_logps(policy, reference, batch, *, chunk_size: int = 1024) -> losses.UnpairedLogps:
    """UnpairedLogps: completions and their mismatched (KL) twins in one fused forward."""
    ids = concat_pairs(batch["input_ids"], batch["kl_ids"])
    mask = concat_pairs(batch["completion_mask"], batch["kl_mask"])
    tok, _, tmask = _token_logps(policy, ids, mask, chunk_size)
    completion, kl = split_pairs(ar.sequence_logps(tok, tmask))
    if reference is not None:
        ref_tok = jax.lax.stop_gradient(_token_logps(reference, ids, mask, chunk_size)[0])
        ref_completion, ref_kl = split_pairs(ar.sequence_logps(ref_tok, tmask))
    else:
        ref_completion, ref_kl = batch.get("ref_logps"), batch.get("ref_kl")
    return losses.UnpairedLogps(completion=completion, label=batch["label"], ref_completion=ref_completion,
                                kl=jax.lax.stop_gradient(kl), ref_kl=ref_kl,
                                length=split_pairs(jnp.sum(tmask, -1).astype(jnp.float32))[0])


def ranked_logps(policy, reference, batch, *, chunk_size: int = 1024) -> losses.RankedLogps:
    """RankedLogps of a ranked batch: the K responses of every prompt in one forward of B·K rows.
    input_ids [B, K, T], completion_mask [B, K, T] (or [B, T] shared by the K responses),
    scores [B, K], optional rank_mask [B, K] (ragged K) and precomputed ref_logps [B, K]."""
    ids = batch["input_ids"]
    b, k, t = ids.shape
    mask = jnp.broadcast_to(batch["completion_mask"][:, None] if batch["completion_mask"].ndim == 2
                            else batch["completion_mask"], (b, k, t))
    flat_ids, flat_mask = ids.reshape(b * k, t), mask.reshape(b * k, t)
    tok, _, tmask = _token_logps(policy, flat_ids, flat_mask, chunk_size)
    logps = ar.sequence_logps(tok, tmask).reshape(b, k)
    if reference is not None:
        ref_tok = jax.lax.stop_gradient(_token_logps(reference, flat_ids, flat_mask, chunk_size)[0])
        ref = ar.sequence_logps(ref_tok, tmask).reshape(b, k)
    else:
        ref = batch.get("ref_logps")
    return losses.RankedLogps(logps=logps, scores=batch["scores"].astype(jnp.float32), ref_logps=ref,
                              mask=batch.get("rank_mask"))


def _scalar_metrics(metrics: dict) -> dict:
    return {k: jnp.nanmean(v) if jnp.ndim(v) else v for k, v in metrics.items()}


def initial_loss_state(loss_name):
    """The running state a loss threads through training (BCO's δ, β-DPO's margin statistics),
    or None."""
    states = {"bco": losses.BCOState, "beta_dpo": losses.BetaDPOState}
    return states[loss_name]() if isinstance(loss_name, str) and loss_name in states else None


def preference_loss(policy, reference, batch, *, loss_name: str, hparams: dict, chunk_size: int = 1024, state=None):
    """(mean loss, {metric: scalar}, new loss state) of a registered loss on a batch."""
    fn = losses.get(loss_name)
    if "scores" in batch:
        logps = ranked_logps(policy, reference, batch, chunk_size=chunk_size)
    elif "label" in batch:
        logps = unpaired_logps(policy, reference, batch, chunk_size=chunk_size)
    else:
        logps = pair_logps(policy, reference, batch, chunk_size=chunk_size,
                           with_log_sum_sq=bool(hparams.get("use_weighting", False)))
    extra = {"state": state} if state is not None else {}
    out = fn(logps, **hparams, **extra)
    return jnp.mean(out.loss), _scalar_metrics(out.metrics), out.state


def sft_loss(policy, batch, *, chunk_size: int = 1024):
    """(token-averaged NLL of the completion tokens, metrics)."""
    tok, _, tmask = _token_logps(policy, batch["input_ids"], batch["completion_mask"], chunk_size)
    n = jnp.maximum(jnp.sum(tmask), 1)
    nll = -jnp.sum(jnp.where(tmask, tok, 0.0)) / n
    return nll, {"nll": nll}
