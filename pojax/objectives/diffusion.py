r"""Batch objectives for masked-diffusion LMs: every pairwise / unpaired loss on Monte Carlo ELBOs.

The log-likelihood log π(y|x) of an autoregressive policy becomes the ELBO estimate
B_θ(y|x) = (1/M) Σ_j w_j Σ_{i ∈ A_j} log p_θ(y_i | x, y_{A_j}) (pojax.likelihood.diffusion, on the
SUM scale), and the implicit reward r̂ = B_θ − B_ref. The batch layouts are those of
pojax.objectives.preference:

  paired    chosen_ids, rejected_ids [B, T] int32; chosen_mask, rejected_mask [B, T] bool
            (completion tokens); optional ref_chosen, ref_rejected [B] (precomputed B_ref)
  unpaired  input_ids [B, T], completion_mask [B, T], label [B] bool; optional kl_ids / kl_mask
            [B, T] (mismatched completions, KTO's "kl" z0); optional ref_logps, ref_kl [B]
  sft       input_ids [B, T], completion_mask [B, T]
  any       optional example_id [B] int32: a stable id of each example (its dataset row)

Positions: the completion mask marks the response, the only positions ever masked and scored;
the prompt is what comes before it; positions after it (padding) are never masked or scored but
stay visible model inputs (bidirectional attention sees them), as in the ELBO-KTO authors' code;
so B depends on the padding, identically for policy and reference.

Shared draws, exactly (VRPO's antithetic sampling; ELBO-KTO's per-example seeds): the draws of
an example come from ``fold_in(fold_in(fold_in(key, step?), role), example_id)`` where role
tells chosen (and unpaired completions), rejected and KL rows apart. They depend only on that
key, the response positions, T, n_mc, estimator and ε — never on the model or the batch
position — so policy and reference see identical masks and weights, and a reference ELBO
precomputed once (``precompute_reference``) stays valid for every later batch holding that
example with the same padded length T. ``step=None`` (default; the authors' choice) keeps the
draws of each example the same every epoch; passing the training step gives fresh draws every
step (the step is folded into the key; a precomputed reference is then invalid).

Without ``example_id`` in the batch the ids are ``step_offset + arange(B)`` (``step_offset``
defaults to 0): the row's position in the batch, so two batches without ids share draws row by
row. The trainer should always carry ``example_id``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pojax import losses
from pojax.likelihood import diffusion as dl
from pojax.objectives.preference import _scalar_metrics, split_pairs

ROLE_CHOSEN = 0  # chosen rows, and the completions of unpaired batches
ROLE_REJECTED = 1
ROLE_KL = 2  # mismatched (prompt_i, completion_j) rows of KTO's "kl" reference point


def _as_key(seed_or_key):
    if isinstance(seed_or_key, (int, np.integer)) and not isinstance(seed_or_key, bool):
        return jax.random.key(int(seed_or_key))
    return seed_or_key


def _check_response(name: str, mask_BT) -> None:
    """ValueError, outside jit, naming the rows whose response is empty (e.g. truncated away)."""
    if isinstance(mask_BT, jax.core.Tracer):
        return
    empty = np.flatnonzero(~np.asarray(mask_BT, bool).any(axis=-1)).tolist()
    if empty:
        raise ValueError(
            f"{name}: rows {empty} have an empty response (0 completion tokens, e.g. after truncation "
            "to max_length); the diffusion ELBO needs at least one response token per row")


def example_draws(seed_or_key, example_ids_B, response_mask_BT, *, n_mc: int,
                  estimator: str = "length_stratified", eps: float = dl.DEFAULT_EPS, step=None,
                  role: int = ROLE_CHOSEN) -> dl.MaskDraws:
    """Per-example Monte Carlo draws: row b uses the key folded from the global key and its id.

    Args:
      seed_or_key: an int seed or a PRNG key (the global draw key).
      example_ids_B: [B] int, a stable id per example (the dataset row).
      response_mask_BT: [B, T] bool, the maskable response positions.
      n_mc: M ≥ 1 draws per row.
      estimator, eps: as in ``pojax.likelihood.diffusion.make_draws``.
      step: None (same draws every epoch) or the training step (fresh draws each step).
      role: ROLE_CHOSEN | ROLE_REJECTED | ROLE_KL, so the rows of one example draw independently.

    Returns:
      MaskDraws with mask [B, M, T] bool and weight [B, M] float32; row b depends only on
      (key, step, role, example_ids[b], response_mask[b], T, n_mc, estimator, eps).

    Raises:
      ValueError: n_mc < 1, unknown estimator, or (outside jit) a row without response tokens.
    """
    n_mc = dl._check_n_mc(n_mc)
    _check_response("response_mask", response_mask_BT)
    key = _as_key(seed_or_key)
    if step is not None:
        key = jax.random.fold_in(key, step)
    key = jax.random.fold_in(key, role)
    keys_B = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(example_ids_B, jnp.uint32))

    def one(k, resp_T):
        d = dl.make_draws(k, resp_T[None], n_mc=n_mc, estimator=estimator, eps=eps)
        return d.mask[0], d.weight[0]

    mask, weight = jax.vmap(one)(keys_B, jnp.asarray(response_mask_BT, bool))
    return dl.MaskDraws(mask=mask, weight=weight)


def example_ids(batch, *, step_offset=0):
    """[B] int32: ``batch["example_id"]``, else ``step_offset + arange(B)`` (see module doc)."""
    if "example_id" in batch:
        return jnp.asarray(batch["example_id"], jnp.int32)
    b = next(v for k, v in batch.items() if k in ("chosen_ids", "input_ids")).shape[0]
    return jnp.asarray(step_offset, jnp.int32) + jnp.arange(b, dtype=jnp.int32)


def _elbos(model, ids_BT, draws, *, mask_id, chunk_size):
    return jnp.mean(dl.elbo_per_draw(model, ids_BT, draws, mask_id=mask_id, chunk_size=chunk_size), axis=-1)


def _rows_elbos(policy, reference, ids_BT, resp_BT, roles, key, ref_key, ex_B, *, n_mc, estimator,
                eps, step, mask_id, chunk_size):
    """Policy and reference ELBOs [R·B] of R stacked row groups (``roles``), one fused forward each."""
    def draws_for(k):
        parts = [example_draws(k, ex_B, r, n_mc=n_mc, estimator=estimator, eps=eps, step=step, role=role)
                 for r, role in zip(resp_BT, roles)]
        return dl.MaskDraws(mask=jnp.concatenate([p.mask for p in parts]),
                            weight=jnp.concatenate([p.weight for p in parts]))

    ids = jnp.concatenate(ids_BT)
    draws = draws_for(key)
    kw = dict(mask_id=mask_id, chunk_size=chunk_size)
    pol = _elbos(policy, ids, draws, **kw)
    ref = None
    if reference is not None:
        ref_draws = draws if ref_key is None else draws_for(ref_key)
        ref = jax.lax.stop_gradient(_elbos(reference, ids, ref_draws, **kw))
    return pol, ref


def pair_elbos(policy, reference, batch, key, *, n_mc: int, mask_id: int,
               estimator: str = "length_stratified", chunk_size: int = 1024, eps: float = dl.DEFAULT_EPS,
               step=None, step_offset=0, ref_key=None) -> losses.PairLogps:
    """PairLogps of a paired batch with ELBOs in place of log-likelihoods.

    chosen / rejected: B_θ [B] float32 on the sum scale; ref_chosen / ref_rejected: B_ref under
    ``stop_gradient`` with the SAME per-example draws (or the batch's precomputed values when
    ``reference`` is None); chosen_len / rejected_len: completion token counts. One fused forward
    of [chosen; rejected] × M per model. ``ref_key`` (default None: the policy's key) gives the
    reference independent draws — only for variance diagnostics and tests.

    Raises:
      ValueError: n_mc < 1, unknown estimator, or (outside jit) an empty chosen/rejected response.
    """
    dl._check_n_mc(n_mc)
    _check_response("chosen_mask", batch["chosen_mask"])
    _check_response("rejected_mask", batch["rejected_mask"])
    ex = example_ids(batch, step_offset=step_offset)
    pol, ref = _rows_elbos(policy, reference, (batch["chosen_ids"], batch["rejected_ids"]),
                           (batch["chosen_mask"], batch["rejected_mask"]), (ROLE_CHOSEN, ROLE_REJECTED),
                           key, ref_key, ex, n_mc=n_mc, estimator=estimator, eps=eps, step=step,
                           mask_id=mask_id, chunk_size=chunk_size)
    chosen, rejected = split_pairs(pol)
    if ref is not None:
        ref_chosen, ref_rejected = split_pairs(ref)
    else:
        ref_chosen, ref_rejected = batch.get("ref_chosen"), batch.get("ref_rejected")
    lens = lambda m: jnp.sum(jnp.asarray(m, bool), axis=-1).astype(jnp.float32)
    return losses.PairLogps(chosen=chosen, rejected=rejected, ref_chosen=ref_chosen, ref_rejected=ref_rejected,
                            chosen_len=lens(batch["chosen_mask"]), rejected_len=lens(batch["rejected_mask"]))


def unpaired_elbos(policy, reference, batch, key, *, n_mc: int, mask_id: int,
                   estimator: str = "length_stratified", chunk_size: int = 1024, eps: float = dl.DEFAULT_EPS,
                   step=None, step_offset=0, ref_key=None) -> losses.UnpairedLogps:
    """UnpairedLogps of an unpaired batch with ELBOs: completion (+ the kl rows when the batch has
    kl_ids / kl_mask, fused into the same forward; their policy ELBO carries no gradient, as in
    KTO). Reference values as in ``pair_elbos`` (precomputed: ref_logps, ref_kl).

    Raises:
      ValueError: n_mc < 1, unknown estimator, or (outside jit) an empty completion / kl response.
    """
    dl._check_n_mc(n_mc)
    _check_response("completion_mask", batch["completion_mask"])
    has_kl = "kl_ids" in batch and "kl_mask" in batch
    ids, resp, roles = [batch["input_ids"]], [batch["completion_mask"]], [ROLE_CHOSEN]
    if has_kl:
        _check_response("kl_mask", batch["kl_mask"])
        ids.append(batch["kl_ids"]), resp.append(batch["kl_mask"]), roles.append(ROLE_KL)
    ex = example_ids(batch, step_offset=step_offset)
    pol, ref = _rows_elbos(policy, reference, tuple(ids), tuple(resp), tuple(roles), key, ref_key, ex,
                           n_mc=n_mc, estimator=estimator, eps=eps, step=step, mask_id=mask_id,
                           chunk_size=chunk_size)
    kl = ref_kl = None
    if has_kl:
        completion, kl = split_pairs(pol)
        kl = jax.lax.stop_gradient(kl)
    else:
        completion = pol
    if ref is not None:
        ref_completion, ref_kl = split_pairs(ref) if has_kl else (ref, None)
    else:
        ref_completion, ref_kl = batch.get("ref_logps"), batch.get("ref_kl")
    length = jnp.sum(jnp.asarray(batch["completion_mask"], bool), axis=-1).astype(jnp.float32)
    return losses.UnpairedLogps(completion=completion, label=jnp.asarray(batch["label"], bool),
                                ref_completion=ref_completion, kl=kl, ref_kl=ref_kl, length=length)


def precompute_reference(reference, batch, key, **kw) -> dict:
    """B_ref of a batch with the per-example draws the training objective will use: for a paired
    batch {"ref_chosen", "ref_rejected"}, for an unpaired one {"ref_logps"[, "ref_kl"]}, each [B]
    float32. ``kw`` as in ``pair_elbos`` and must equal the training call's (n_mc, estimator,
    eps, step=None, mask_id) and the batch must keep its example_id and padded T."""
    if "label" in batch:
        u = unpaired_elbos(reference, None, batch, key, **kw)
        out = {"ref_logps": u.completion}
        if u.kl is not None:
            out["ref_kl"] = u.kl
        return out
    p = pair_elbos(reference, None, batch, key, **kw)
    return {"ref_chosen": p.chosen, "ref_rejected": p.rejected}


def _check_loss(loss_name) -> None:
    if losses.needs_tokens(loss_name):
        raise ValueError(f"loss {loss_name!r} needs per-token log-probs, which a diffusion ELBO does not "
                         "give; use a sequence-level loss with likelihood.kind=diffusion")
    if losses.input_kind(loss_name) == "ranked":
        raise ValueError(f"loss {loss_name!r} is listwise; diffusion_preference_loss takes paired or "
                         "unpaired batches")


def _preference_output(policy, reference, batch, *, loss_name, hparams: dict, key, n_mc: int, mask_id: int,
                       estimator: str, chunk_size: int, state, eps: float, step, step_offset) -> losses.LossOutput:
    """The registered loss's LossOutput (per-example loss [B]) on the batch's ELBOs."""
    _check_loss(loss_name)
    fn = losses.get(loss_name)
    kw = dict(n_mc=n_mc, mask_id=mask_id, estimator=estimator, chunk_size=chunk_size, eps=eps, step=step,
              step_offset=step_offset)
    if "label" in batch:
        logps = unpaired_elbos(policy, reference, batch, key, **kw)
    else:
        logps = pair_elbos(policy, reference, batch, key, **kw)
    extra = {"state": state} if state is not None else {}
    return fn(logps, **hparams, **extra)


def diffusion_preference_loss(policy, reference, batch, *, loss_name, hparams: dict, key, n_mc: int,
                              mask_id: int, estimator: str = "length_stratified", chunk_size: int = 1024,
                              state=None, eps: float = dl.DEFAULT_EPS, step=None, step_offset=0):
    """(mean loss, {metric: scalar}, new loss state) of a registered loss on diffusion ELBOs.

    The contract of ``pojax.objectives.preference_loss`` with B_θ / B_ref in place of the
    sequence log-likelihoods; a batch with ``label`` is unpaired, else paired. ``key`` is the
    global draw key (the same every step for fixed per-example draws); ``step`` / ``step_offset``
    as in the module docstring. Adds ``elbo/n_mc`` to the metrics.

    Raises:
      ValueError: a token-level or listwise loss, n_mc < 1, an empty response (outside jit).
    """
    out = _preference_output(policy, reference, batch, loss_name=loss_name, hparams=hparams, key=key, n_mc=n_mc,
                             mask_id=mask_id, estimator=estimator, chunk_size=chunk_size, state=state, eps=eps,
                             step=step, step_offset=step_offset)
    metrics = _scalar_metrics(out.metrics)
    metrics["elbo/n_mc"] = jnp.asarray(n_mc, jnp.float32)
    return jnp.mean(out.loss), metrics, out.state


def half_budget_losses(policy, reference, batch, *, loss_name, hparams: dict, key, n_mc: int, mask_id: int,
                       estimator: str = "length_stratified", chunk_size: int = 1024, state=None,
                       eps: float = dl.DEFAULT_EPS):
    r"""Per-example losses (a_B, c_B) under two independent half budgets, for the MC standard error.

    Each half draws n_mc / 2 per-example draws from its own key (``fold_in(key, 1)`` and
    ``fold_in(key, 2)``), policy and reference sharing the draws within a half as in training.
    To first order the full-budget row loss is the mean of two such halves, L_b ≈ (a_b + c_b) / 2,
    so Var(L_b) ≈ Var(a_b) / 2 = E[(a_b − c_b)²] / 4; rows draw independently, hence the standard
    error of the batch-mean loss over N rows is

        SE ≈ sqrt(Σ_b (a_b − c_b)² / 4) / N        (``mc_stderr``).

    Approximations: linearization of the loss in the ELBOs (its O(1/M) curvature bias cancels in
    a − c); for stratified estimators (length_stratified, timestep_stratified) a half stratifies
    over n_mc / 2 strata, not n_mc, so the figure errs on the high side; losses that couple the
    batch (KTO's z0) are treated as if rows were independent.

    Args:
      policy, reference, batch, loss_name, hparams, mask_id, estimator, chunk_size, state, eps:
        as in ``diffusion_preference_loss`` (fixed per-example draws, step=None).
      key: the global draw key of the full budget.
      n_mc: the full budget M, even and ≥ 2.

    Returns:
      (a_B, c_B): [B] float32 per-example losses of the two halves.

    Raises:
      ValueError: n_mc odd or < 2, and as ``diffusion_preference_loss``.
    """
    if n_mc < 2 or n_mc % 2:
        raise ValueError(f"the half-budget standard error needs an even n_mc >= 2, got {n_mc}")
    kw = dict(loss_name=loss_name, hparams=hparams, n_mc=n_mc // 2, mask_id=mask_id, estimator=estimator,
              chunk_size=chunk_size, state=state, eps=eps, step=None, step_offset=0)
    key = _as_key(key)
    a = _preference_output(policy, reference, batch, key=jax.random.fold_in(key, 1), **kw).loss
    c = _preference_output(policy, reference, batch, key=jax.random.fold_in(key, 2), **kw).loss
    return a.astype(jnp.float32), c.astype(jnp.float32)


def mc_stderr(diff_sq_sum, n) -> float:
    """sqrt(Σ_b (a_b − c_b)² / 4) / N: the MC standard error of an N-row mean loss from the summed
    squared half-budget differences (see ``half_budget_losses``)."""
    return float(np.sqrt(diff_sq_sum / 4.0) / n) if n else float("nan")


def diffusion_sft_loss(model, batch, key, *, mask_id: int, chunk_size: int = 1024, eps: float = dl.DEFAULT_EPS):
    """(LLaDA's SFT loss, metrics) of an input_ids / completion_mask batch.

    The prompt (positions before the completion) is never masked; every later position — the
    completion and the EOS padding after it — is masked and trained on and counts in the
    per-row normalizer, LLaDA's convention (``pojax.likelihood.diffusion.sft_loss``). ``key``
    must change every step (e.g. ``fold_in(seed, step)``).

    Returns:
      (scalar float32 batch mean, {"nll": the same}); "nll" is the per-answer-token negative
      ELBO estimate.

    Raises:
      ValueError: (outside jit) a row with an empty completion.
    """
    _check_response("completion_mask", batch["completion_mask"])
    mask = jnp.asarray(batch["completion_mask"], bool)
    prompt = jnp.cumsum(mask, axis=-1) == 0
    loss = jnp.mean(dl.sft_loss(model, batch["input_ids"], prompt, key, mask_id=mask_id, eps=eps,
                                chunk_size=chunk_size))
    return loss, {"nll": loss}


__all__ = ["ROLE_CHOSEN", "ROLE_KL", "ROLE_REJECTED", "diffusion_preference_loss",
           "diffusion_sft_loss", "example_draws", "example_ids", "half_budget_losses", "mc_stderr",
           "pair_elbos", "precompute_reference", "unpaired_elbos"]
