"""The batch objectives of a run config: ``likelihood.kind`` picks exact autoregressive
log-probs or masked-diffusion ELBOs, ``data.packing`` the packed path, ``reference.mode`` where
the reference comes from. Each objective is ``(model, reference, batch, loss_state) -> (loss,
metrics, loss_state)`` for pojax.train.loop.run_stage.

Diffusion randomness is stateless: SFT masks come from ``fold_in(key, counter)`` with the counter
carried in the loss state (so a resumed run draws the same masks); preference ELBOs use fixed
per-example draws (``fold_in(key, example_id)``, the ELBO-KTO authors' choice), shared by policy
and reference, which keeps a precomputed reference valid.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pojax.config import ConfigError, loss_hparams
from pojax.models import moe
from pojax.models.lora import without_adapters
from pojax.likelihood.shared_prompt import window_width
from pojax.objectives import initial_loss_state, packed_preference_loss, preference_loss, sft_loss
from pojax.objectives.preference import is_moe, needs_token_kl
from pojax.objectives import diffusion as diff_obj


def mask_id_of(model, config) -> int | None:
    """The [MASK] id of a diffusion run's model (None for autoregressive runs)."""
    if config.likelihood.kind != "diffusion":
        return None
    mask_id = getattr(model.config, "mask_token_id", None)
    if mask_id is None:
        raise ConfigError("likelihood.kind", "'diffusion' needs a masked-diffusion model: model.family=llada "
                          "or a llada checkpoint in model.path")
    return int(mask_id)


def _draw_key(config):
    return jax.random.PRNGKey(config.train.seed + 13)


def vocab_chunk(config) -> int | None:
    """likelihood.vocab_chunk_size as pojax.likelihood.autoregressive takes it (0 → None: the
    whole vocabulary in one tile, the full [B, C, V] logits of each sequence chunk)."""
    return config.likelihood.vocab_chunk_size or None


def with_router_aux_loss(objective, config):
    """``objective`` plus, for a mixture-of-experts policy, router_aux_loss_coef × the router's
    load-balancing loss over the policy's forwards of the batch (pojax.models.moe), reported as
    metric ``aux_loss``, as TRL adds it. ``model.router_aux_loss_coef`` unset takes the
    checkpoint's own coefficient (its config.json's router_aux_loss_coef); 0 turns it off.
    Dense policies are unchanged; a coefficient set for one is refused (as TRL does)."""
    coef = config.model.get("router_aux_loss_coef")

    def wrapped(m, ref, b, ls):
        if not is_moe(m):
            if coef:
                raise ConfigError("model.router_aux_loss_coef", f"{coef} is set, but the policy "
                                  f"({m.config.model_type}) is not a mixture-of-experts model")
            return objective(m, ref, b, ls)
        moe.router_aux_loss(m)  # drop statistics of forwards outside this objective
        loss, metrics, ls = objective(m, ref, b, ls)
        aux = moe.router_aux_loss(m)
        weight = m.config.router_aux_loss_coef if coef is None else coef
        return loss + weight * aux, dict(metrics, aux_loss=aux), ls

    return wrapped


def sft_objective(config, mask_id: int | None):
    """(objective, initial loss state) of the SFT stage."""
    chunk = config.likelihood.chunk_size
    if mask_id is None:
        vocab = vocab_chunk(config)
        return with_router_aux_loss(lambda m, ref, b, ls: (*sft_loss(m, b, chunk_size=chunk, vocab_chunk_size=vocab), ls),
                                    config), None
    base = jax.random.PRNGKey(config.train.seed + 9)

    def objective(m, ref, b, counter):
        loss, metrics = diff_obj.diffusion_sft_loss(m, b, jax.random.fold_in(base, counter), mask_id=mask_id,
                                                    chunk_size=chunk)
        return loss, metrics, counter + 1

    return objective, jnp.zeros((), jnp.int32)


def _row_sets(rows: dict):
    """(ids [N, K, T], completion mask [N, K, T]) of paired / unpaired / ranked rows: the K
    sequences that share each prompt."""
    if "chosen_ids" in rows:
        mask = [rows.get("chosen_mask", rows.get("completion_mask")), rows.get("rejected_mask", rows.get("completion_mask"))]
        return np.stack([rows["chosen_ids"], rows["rejected_ids"]], 1), np.stack(mask, 1)
    if "kl_ids" in rows:
        return (np.stack([rows["input_ids"], rows["kl_ids"]], 1),
                np.stack([rows["completion_mask"], rows["kl_mask"]], 1))
    ids, mask = rows["input_ids"], rows["completion_mask"]
    return ids, np.broadcast_to(mask[:, None], ids.shape) if mask.ndim == 2 else mask


def shared_prompt_width(config, *row_sets: dict | None) -> int | None:
    """The completion window W of likelihood.shared_prompt for these rows (the prompt of each
    pair / ranked set / KTO twin computed once, pojax.likelihood.shared_prompt), or None where
    the run computes each sequence in its own row: the option is off, packed or diffusion
    batches, TDPO's token KL, or rows whose sequences do not share their prompt."""
    lk = config.likelihood
    if (not lk.get("shared_prompt", True) or lk.kind != "autoregressive" or config.data.packing
            or needs_token_kl(config.loss.name)):
        return None
    widths = []
    for rows in row_sets:
        if rows is None or not len(next(iter(rows.values()))):
            continue
        if not any(k in rows for k in ("chosen_ids", "kl_ids", "scores")):
            return None
        width = window_width(*_row_sets(rows))
        if width is None:
            logging.info("likelihood.shared_prompt: the sequences of some row do not share their prompt; "
                         "each sequence gets its own row")
            return None
        widths.append(width)
    return max(widths) if widths else None


def preference_objective(config, *, mask_id: int | None, lora_base: bool, packed: bool | None = None,
                         completion_width: int | None = None):
    """(objective, initial loss state) of the preference stage (``packed`` defaults to
    data.packing; evaluation reads unpacked rows; ``completion_width``: shared-prompt rows,
    from ``shared_prompt_width``)."""
    name, hparams, chunk = config.loss.name, loss_hparams(config), config.likelihood.chunk_size
    if mask_id is not None:
        lk = config.likelihood
        kw = dict(loss_name=name, hparams=hparams, key=_draw_key(config), n_mc=lk.n_mc, mask_id=mask_id,
                  estimator=lk.estimator, chunk_size=chunk)
        loss_fn = lambda m, ref, b, ls: diff_obj.diffusion_preference_loss(m, ref, b, state=ls, **kw)
    else:
        packed = config.data.packing if packed is None else packed
        vocab = vocab_chunk(config)
        kw = dict(loss_name=name, hparams=hparams, chunk_size=chunk, vocab_chunk_size=vocab)
        if packed:
            loss_fn = lambda m, ref, b, ls: packed_preference_loss(m, ref, b, state=ls, **kw)
        else:
            loss_fn = lambda m, ref, b, ls: preference_loss(m, ref, b, state=ls, completion_width=completion_width, **kw)

    def objective(m, ref, b, ls):
        return loss_fn(m, without_adapters(m) if lora_base else ref, b, ls)

    return with_router_aux_loss(objective, config), initial_loss_state(name, hparams)


def half_budget_objective(config, *, mask_id: int, lora_base: bool):
    """``(model, reference, batch, loss_state) -> (a_B, c_B)``: per-example losses of a diffusion
    batch under two independent halves of likelihood.n_mc draws
    (``pojax.objectives.diffusion.half_budget_losses``), for eval_loss_mc_stderr."""
    lk = config.likelihood
    kw = dict(loss_name=config.loss.name, hparams=loss_hparams(config), key=_draw_key(config), n_mc=lk.n_mc,
              mask_id=mask_id, estimator=lk.estimator, chunk_size=lk.chunk_size)

    def objective(m, ref, b, ls):
        return diff_obj.half_budget_losses(m, without_adapters(m) if lora_base else ref, b, state=ls, **kw)

    return objective


def with_example_ids(rows: dict, offset: int = 0) -> dict:
    """Rows with ``example_id`` [N] int32 (their dataset index + offset): the key of their
    fixed diffusion draws."""
    n = len(next(iter(rows.values())))
    return dict(rows, example_id=np.arange(offset, offset + n, dtype=np.int32))


def reference_values(reference, rows: dict, config, *, mask_id: int | None, batch_size: int) -> dict:
    """The reference's per-sequence values of every row, computed once: log-likelihoods, or
    ELBOs with the very draws training will use."""
    from pojax.train.evaluate import reference_logps

    if mask_id is None:
        return reference_logps(reference, rows, batch_size=batch_size, chunk_size=config.likelihood.chunk_size,
                               completion_width=shared_prompt_width(config, rows))
    from flax import nnx

    lk = config.likelihood
    fn = nnx.jit(lambda ref, b: diff_obj.precompute_reference(
        ref, b, _draw_key(config), n_mc=lk.n_mc, mask_id=mask_id, estimator=lk.estimator,
        chunk_size=lk.chunk_size))
    n, outs = len(next(iter(rows.values()))), {}
    for start in range(0, n, batch_size):
        for k, v in fn(reference, {k: v[start:start + batch_size] for k, v in rows.items()}).items():
            outs.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in outs.items()}
