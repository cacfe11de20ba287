"""Batch objectives: per-sequence log-likelihoods from a model, then a registered loss.

Batches are dicts of arrays:
  paired    chosen_ids, rejected_ids [B, T] int32; chosen_mask, rejected_mask [B, T] bool
            (completion tokens); optional ref_chosen, ref_rejected [B] (precomputed reference),
            reward_margin [B] (MADPO's r(x, y_w) - r(x, y_l)), chosen_token_rewards /
            rejected_token_rewards [B, T] (TGDPO's guide rewards, aligned with the shifted
            targets: position t rewards token t + 1)
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

from pojax import losses, sharding
from pojax.likelihood import autoregressive as ar
from pojax.likelihood import shared_prompt
from pojax.likelihood.token_kl import token_kl_from_hidden

# batch columns that become TokenLogps.extra entries of each half (TGDPO's guide rewards)
TOKEN_EXTRA_COLUMNS = {losses.TOKEN_REWARDS: ("chosen_token_rewards", "rejected_token_rewards")}
# per-pair batch columns passed to the losses that accept them (pojax.losses.RUNTIME_ARGS)
RUNTIME_COLUMNS = ("reward_margin",)


def concat_pairs(chosen, rejected):
    """Stacks chosen rows over rejected rows along the batch: [2B, ...]. The one place pojax
    fuses the two halves of a pair into one forward pass (split with ``split_pairs``)."""
    return jnp.concatenate([chosen, rejected], axis=0)


def split_pairs(x):
    """Inverse of ``concat_pairs``: ([B, ...] chosen, [B, ...] rejected)."""
    n = x.shape[0] // 2
    return x[:n], x[n:]


def is_moe(model) -> bool:
    """A mixture-of-experts model (its forwards record router statistics, pojax.models.moe)."""
    return bool(getattr(getattr(model, "config", None), "num_experts", 0))


def router_segments(model, mask_BT):
    """Segment ids [B, T] int32 for a mixture-of-experts model: 1 on each right-padded row's
    tokens through its last completion token, 0 on the padding after it, so the router's
    load-balancing statistics skip padding as transformers' attention mask does (real tokens
    never attend to that padding, so their outputs do not change); None for a dense model."""
    if not is_moe(model):
        return None
    m = jnp.asarray(mask_BT, bool)
    return (jnp.cumsum(m[:, ::-1], axis=1)[:, ::-1] > 0).astype(jnp.int32)


def _token_logps(model, ids, mask, chunk_size, with_sq=False, vocab_chunk_size=ar.DEFAULT_VOCAB_CHUNK):
    targets, tmask = ar.shift_targets(ids, mask)
    out = ar.token_logps(model, ids, targets, chunk_size=chunk_size, return_log_sum_sq=with_sq,
                         vocab_chunk_size=vocab_chunk_size, segment_ids=router_segments(model, mask))
    tok, sq = out if with_sq else (out, None)
    return tok, sq, tmask


def _fused_token_logps(model, ids_list, mask_list, chunk_size, width=None, with_sq=False,
                       vocab_chunk_size=ar.DEFAULT_VOCAB_CHUNK):
    """(token logps, log Σp² or None, target mask) of K row sets [B, T] that share their
    prompts, each as a tuple of K arrays [B, T]: one forward of the K·B stacked rows, or with
    ``width`` one shared-prompt forward of T + (K - 1)·W tokens per row
    (pojax.likelihood.shared_prompt). Neither path concatenates along the (sharded) batch axis
    after the model: halves are slices."""
    k = len(ids_list)
    if width is None or is_moe(model):  # MoE: own rows, whose padding the router statistics skip
        tok, sq, tmask = _token_logps(model, jnp.concatenate(ids_list, 0), jnp.concatenate(mask_list, 0), chunk_size,
                                      with_sq, vocab_chunk_size)
        b = tok.shape[0] // k
        halves = lambda x: None if x is None else tuple(x[i * b:(i + 1) * b] for i in range(k))
        return halves(tok), halves(sq), halves(tmask)
    bkt = lambda xs: sharding.constrain(jnp.stack(xs, 1), ("batch", None, "length"))
    out = shared_prompt.token_logps(model, bkt(ids_list), bkt(mask_list), width, chunk_size=chunk_size,
                                    return_log_sum_sq=with_sq, vocab_chunk_size=vocab_chunk_size)
    halves = lambda x_BKT: tuple(x_BKT[:, i] for i in range(k))
    return halves(out[0]), (halves(out[2]) if with_sq else None), halves(out[1])


def _hidden_and_head(model, ids):
    h = model.hidden_states(ids)
    return h, model.lm_head_weight().astype(h.dtype)  # the head in the activations' dtype, as token_logps


def _with_token_kl(policy, reference, ids, mask, chunk_size):
    """(policy token logps, reference token logps, KL(π_ref ‖ π) per position, mask), all [2B, T],
    from one forward of each model: the hidden states serve both the log-probs and the KL."""
    if reference is None:
        raise ValueError("the per-token KL (tdpo) needs a reference model (reference.mode = copy or lora_base)")
    targets, tmask = ar.shift_targets(ids, mask)
    h, w = _hidden_and_head(policy, ids)
    r, wr = jax.lax.stop_gradient(_hidden_and_head(reference, ids))
    cap = ar.soft_cap_of(policy)  # policy and reference are one architecture
    tok = ar.token_logps_from_hidden(h, w, targets, chunk_size=chunk_size, logit_soft_cap=cap)
    ref_tok = ar.token_logps_from_hidden(r, wr, targets, chunk_size=chunk_size, logit_soft_cap=cap)
    return tok, ref_tok, token_kl_from_hidden(h, w, r, wr, chunk_size=chunk_size, logit_soft_cap=cap), tmask


def pair_logps(policy, reference, batch, *, chunk_size: int = 1024, with_log_sum_sq: bool = False,
               with_token_kl: bool = False, vocab_chunk_size: int | None = ar.DEFAULT_VOCAB_CHUNK,
               completion_width: int | None = None) -> losses.PairLogps:
    """PairLogps of a paired batch: one fused forward of [chosen; rejected] per model.

    ``with_token_kl`` adds TokenLogps.extra["token_kl"] [B, T] (TDPO; needs the reference
    model, gradient w.r.t. the policy); token-reward columns of the batch go to
    extra["token_rewards"] (TGDPO). ``completion_width`` W (static) runs each pair as one
    shared-prompt row of T + W tokens instead (pojax.likelihood.shared_prompt: the prompt is
    computed once; every completion token must lie in [p, p + W), see ``window_width``)."""
    sides = [batch["chosen_ids"], batch["rejected_ids"]], [batch["chosen_mask"], batch["rejected_mask"]]
    kl = sq = None
    if with_token_kl:
        ids, mask = concat_pairs(*sides[0]), concat_pairs(*sides[1])
        tok, ref_tok, kl, tmask = (split_pairs(x) for x in _with_token_kl(policy, reference, ids, mask, chunk_size))
    else:
        kw = dict(width=completion_width, vocab_chunk_size=vocab_chunk_size)
        tok, sq, tmask = _fused_token_logps(policy, *sides, chunk_size, with_sq=with_log_sum_sq, **kw)
        ref_tok = None
        if reference is not None:
            ref_tok = jax.lax.stop_gradient(_fused_token_logps(reference, *sides, chunk_size, **kw)[0])

    def tokens(half):
        pick = lambda x: None if x is None else x[half]
        extra = {} if sq is None else {"log_sum_sq_probs": pick(sq)}
        if kl is not None:
            extra[losses.TOKEN_KL] = pick(kl)
        for key, columns in TOKEN_EXTRA_COLUMNS.items():
            if columns[half] in batch:
                extra[key] = batch[columns[half]]
        return losses.TokenLogps(policy=pick(tok), ref=pick(ref_tok), mask=pick(tmask), extra=extra)

    if ref_tok is not None:
        ref_chosen, ref_rejected = (ar.sequence_logps(r, m) for r, m in zip(ref_tok, tmask))
    else:
        ref_chosen, ref_rejected = batch.get("ref_chosen"), batch.get("ref_rejected")
    chosen, rejected = (ar.sequence_logps(x, m) for x, m in zip(tok, tmask))
    chosen_len, rejected_len = (jnp.sum(m, axis=-1).astype(jnp.float32) for m in tmask)
    return losses.PairLogps(chosen=chosen, rejected=rejected, ref_chosen=ref_chosen, ref_rejected=ref_rejected,
                            chosen_len=chosen_len, rejected_len=rejected_len,
                            chosen_tokens=tokens(0), rejected_tokens=tokens(1))


def unpaired_logps(policy, reference, batch, *, chunk_size: int = 1024, vocab_chunk_size: int | None = ar.DEFAULT_VOCAB_CHUNK,
                   completion_width: int | None = None) -> losses.UnpairedLogps:
    """UnpairedLogps: completions and their mismatched (KL) twins in one fused forward
    (``completion_width``: one shared-prompt row per prompt, as in ``pair_logps``)."""
    sides = [batch["input_ids"], batch["kl_ids"]], [batch["completion_mask"], batch["kl_mask"]]
    kw = dict(width=completion_width, vocab_chunk_size=vocab_chunk_size)
    tok, _, tmask = _fused_token_logps(policy, *sides, chunk_size, **kw)
    completion, kl = (ar.sequence_logps(x, m) for x, m in zip(tok, tmask))
    if reference is not None:
        ref_tok = jax.lax.stop_gradient(_fused_token_logps(reference, *sides, chunk_size, **kw)[0])
        ref_completion, ref_kl = (ar.sequence_logps(x, m) for x, m in zip(ref_tok, tmask))
    else:
        ref_completion, ref_kl = batch.get("ref_logps"), batch.get("ref_kl")
    return losses.UnpairedLogps(completion=completion, label=batch["label"], ref_completion=ref_completion,
                                kl=jax.lax.stop_gradient(kl), ref_kl=ref_kl,
                                length=jnp.sum(tmask[0], -1).astype(jnp.float32))


def ranked_logps(policy, reference, batch, *, chunk_size: int = 1024, vocab_chunk_size: int | None = ar.DEFAULT_VOCAB_CHUNK,
                 completion_width: int | None = None) -> losses.RankedLogps:
    """RankedLogps of a ranked batch: the K responses of every prompt in one forward of B·K rows
    (``completion_width``: one shared-prompt row of T + (K - 1)·W tokens per prompt, as in
    ``pair_logps``). input_ids [B, K, T], completion_mask [B, K, T] (or [B, T] shared by the K
    responses), scores [B, K], optional rank_mask [B, K] (ragged K) and precomputed
    ref_logps [B, K]. RankedLogps.length [B, K] counts each response's scored completion tokens."""
    ids = batch["input_ids"]
    b, k, t = ids.shape
    mask = jnp.broadcast_to(batch["completion_mask"][:, None] if batch["completion_mask"].ndim == 2
                            else batch["completion_mask"], (b, k, t))
    kw = dict(chunk_size=chunk_size, vocab_chunk_size=vocab_chunk_size)
    if completion_width is None:  # B·K rows, b-major
        flat_ids, flat_mask = ids.reshape(b * k, t), mask.reshape(b * k, t)

        def logps_of(model):
            tok, _, tmask = _token_logps(model, flat_ids, flat_mask, **kw)
            return ar.sequence_logps(tok, tmask).reshape(b, k), jnp.sum(tmask, -1).reshape(b, k)
    else:
        sides = jnp.unstack(ids, axis=1), jnp.unstack(mask, axis=1)

        def logps_of(model):
            tok, _, tmask = _fused_token_logps(model, *sides, width=completion_width, **kw)
            return (jnp.stack([ar.sequence_logps(x, m) for x, m in zip(tok, tmask)], axis=1),
                    jnp.stack([jnp.sum(m, -1) for m in tmask], axis=1))

    logps, length = logps_of(policy)
    ref = jax.lax.stop_gradient(logps_of(reference)[0]) if reference is not None else batch.get("ref_logps")
    return losses.RankedLogps(logps=logps, scores=batch["scores"].astype(jnp.float32), ref_logps=ref,
                              mask=batch.get("rank_mask"), length=length.astype(jnp.float32))


def _scalar_metrics(metrics: dict) -> dict:
    return {k: jnp.nanmean(v) if jnp.ndim(v) else v for k, v in metrics.items()}


def initial_loss_state(loss_name, hparams: dict | None = None):
    """The running state a loss threads through training (BCO's δ, β-DPO's margin statistics,
    KTO's running reference points), or None."""
    states = {"bco": losses.BCOState, "beta_dpo": losses.BetaDPOState}
    if loss_name == "kto" and (hparams or {}).get("kto_reference_point") in losses.unpaired.RUNNING_REFERENCE_POINTS:
        return losses.KTOBaselineState()
    return states[loss_name]() if isinstance(loss_name, str) and loss_name in states else None


def needs_token_kl(loss_name) -> bool:
    """Whether the loss (or a part of a "+" combination) reads TokenLogps.extra["token_kl"]."""
    parts = [p.strip() for p in loss_name.split("+")] if isinstance(loss_name, str) else list(loss_name)
    return "tdpo" in parts


def preference_loss(policy, reference, batch, *, loss_name: str, hparams: dict, chunk_size: int = 1024, state=None,
                    vocab_chunk_size: int | None = ar.DEFAULT_VOCAB_CHUNK, completion_width: int | None = None):
    """(mean loss, {metric: scalar}, new loss state) of a registered loss on a batch
    (``completion_width``: shared-prompt forwards, see ``pair_logps``)."""
    fn = losses.get(loss_name)
    kw = dict(chunk_size=chunk_size, vocab_chunk_size=vocab_chunk_size, completion_width=completion_width)
    if "scores" in batch:
        logps = ranked_logps(policy, reference, batch, **kw)
    elif "label" in batch:
        logps = unpaired_logps(policy, reference, batch, **kw)
    else:
        logps = pair_logps(policy, reference, batch, with_log_sum_sq=bool(hparams.get("use_weighting", False)),
                           with_token_kl=needs_token_kl(loss_name), **kw)
    extra = {"state": state} if state is not None else {}
    accepted = losses.hparam_names(fn)
    extra.update({k: batch[k] for k in RUNTIME_COLUMNS if k in batch and k in accepted})
    out = fn(logps, **hparams, **extra)
    return jnp.mean(out.loss), _scalar_metrics(out.metrics), out.state


def sft_loss(policy, batch, *, chunk_size: int = 1024, vocab_chunk_size: int | None = ar.DEFAULT_VOCAB_CHUNK):
    """(token-averaged NLL of the completion tokens, metrics)."""
    tok, _, tmask = _token_logps(policy, batch["input_ids"], batch["completion_mask"], chunk_size,
                                 vocab_chunk_size=vocab_chunk_size)
    n = jnp.maximum(jnp.sum(tmask), 1)
    nll = -jnp.sum(jnp.where(tmask, tok, 0.0)) / n
    return nll, {"nll": nll}
