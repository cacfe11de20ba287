r"""Preference-data diagnostics: likelihood displacement (CHES) and the implicit-reward
generalization check.

CHES (Razin et al., "Unintentional Unalignment: Likelihood Displacement in Direct Preference
Optimization", arXiv 2410.08847, Definition 2): with :math:`h_{x,y_{<k}}` the final (post-norm,
pre-unembedding) hidden state at the position that predicts the k-th response token,

.. math:: \mathrm{CHES}_x(y^+, y^-) = \Big\langle \sum_{k=1}^{|y^+|} h_{x,y^+_{<k}},
          \sum_{k'=1}^{|y^-|} h_{x,y^-_{<k'}} \Big\rangle - \Big\| \sum_{k=1}^{|y^+|} h_{x,y^+_{<k}} \Big\|^2

and the length-normalized variant (their Section 6 filter) divides the inner product by
:math:`|y^+||y^-|` and the squared norm by :math:`|y^+|^2`. A high score says the two responses
look alike to the model, and DPO on the pair tends to push the preferred response's likelihood
down with the dispreferred one's (likelihood displacement); the paper filters the top-scoring
pairs out.

Implicit-reward generalization (Lin et al., "On the Limited Generalization Capability of the
Implicit Reward Model Induced by Direct Preference Optimization", arXiv 2409.03650): the DPO
policy's implicit reward :math:`r(x, y) = \beta(\log\pi(y|x) - \log\pi_{ref}(y|x))` and an
explicit reward model each rank the held-out pairs; their preference accuracies, the gap
(explicit − implicit) and, given a domain label per pair, the same per domain (in- vs
out-of-distribution).

Rows are pojax's paired batches (pojax.objectives.preference): chosen_ids, rejected_ids [N, T]
int32 right-padded, chosen_mask, rejected_mask [N, T] bool on the completion tokens.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pojax.likelihood import autoregressive as ar
from pojax.models.reward import reward_scores

PAIR_KEYS = ("chosen_ids", "rejected_ids", "chosen_mask", "rejected_mask")


# ----------------------------------------------------------------------------- CHES

def completion_hidden_sums(hidden_BTD, mask_BT):
    r"""The sum of the hidden states that predict each completion token, and the token count.

    Position t predicts token t + 1 (pojax.likelihood.autoregressive.shift_targets), so the
    summed positions are those just before each completion token: :math:`\sum_k h_{x, y_{<k}}`.

    Args:
      hidden_BTD: [B, T, D] final hidden states (any float dtype; summed in float32).
      mask_BT: [B, T] bool, True on completion tokens (not shifted).

    Returns:
      ([B, D] float32 sums, [B] float32 completion lengths |y|).
    """
    b, t = mask_BT.shape
    _, pred_BT = ar.shift_targets(jnp.zeros((b, t), jnp.int32), mask_BT)
    # a masked sum, not a matmul: exact float32 adds where matmuls may take bf16 passes (TPU)
    sums_BD = jnp.sum(jnp.where(pred_BT[..., None], hidden_BTD.astype(jnp.float32), 0.0), axis=1)
    return sums_BD, jnp.sum(pred_BT, axis=-1).astype(jnp.float32)


def ches_from_sums(chosen_sum_BD, rejected_sum_BD, chosen_len_B=None, rejected_len_B=None):
    r"""CHES [B] float32 from summed hidden states (arXiv 2410.08847, Definition 2).

    .. math:: \langle s^+, s^- \rangle - \|s^+\|^2, \quad s^\pm = \sum_k h_{x, y^\pm_{<k}}

    With both lengths given, the length-normalized score
    :math:`\langle s^+, s^- \rangle / (|y^+||y^-|) - \|s^+\|^2 / |y^+|^2`
    (lengths below 1 count as 1, so an empty completion gives 0, not NaN).

    Args:
      chosen_sum_BD, rejected_sum_BD: [B, D] float sums of hidden states.
      chosen_len_B, rejected_len_B: [B] completion lengths, or both None (unnormalized).

    Returns:
      [B] float32.
    """
    if (chosen_len_B is None) != (rejected_len_B is None):
        raise ValueError("ches_from_sums: give both completion lengths (length-normalized) or neither")
    s_pos = jnp.asarray(chosen_sum_BD, jnp.float32)
    s_neg = jnp.asarray(rejected_sum_BD, jnp.float32)
    cross_B = jnp.sum(s_pos * s_neg, axis=-1)
    self_B = jnp.sum(s_pos * s_pos, axis=-1)
    if chosen_len_B is None:
        return cross_B - self_B
    n_pos = jnp.maximum(jnp.asarray(chosen_len_B, jnp.float32), 1.0)
    n_neg = jnp.maximum(jnp.asarray(rejected_len_B, jnp.float32), 1.0)
    return cross_B / (n_pos * n_neg) - self_B / jnp.square(n_pos)


@nnx.jit
def ches_scores(model, batch: dict) -> dict:
    """{"ches": [B], "ln_ches": [B]} float32 (CHES and its length-normalized variant, arXiv
    2410.08847) of a paired batch under a pojax causal LM, from one fused forward of
    [chosen; rejected] rows through ``model.hidden_states``.

    Args:
      model: a pojax causal LM (``hidden_states(input_ids) -> [B, T, D]``).
      batch: chosen_ids, rejected_ids [B, T] int32; chosen_mask, rejected_mask [B, T] bool.
    """
    ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]], axis=0)
    mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], axis=0)
    sums, lens = completion_hidden_sums(model.hidden_states(ids), mask)
    b = batch["chosen_ids"].shape[0]
    return {"ches": ches_from_sums(sums[:b], sums[b:]),
            "ln_ches": ches_from_sums(sums[:b], sums[b:], lens[:b], lens[b:])}


def _check_pairs(rows: dict, name: str) -> int:
    missing = [k for k in PAIR_KEYS if k not in rows]
    if missing:
        raise ValueError(f"{name}: paired rows need {', '.join(PAIR_KEYS)}; missing {', '.join(missing)}")
    n = len(rows["chosen_ids"])
    if n == 0:
        raise ValueError(f"{name}: no rows")
    return n


def _batches(rows: dict, keys, batch_size: int):
    """(batch of fixed size, number of real rows): the last batch repeats its final row so every
    call has one static shape."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(rows[keys[0]])
    for start in range(0, n, batch_size):
        chunk = {k: np.asarray(rows[k][start:start + batch_size]) for k in keys}
        m = len(chunk[keys[0]])
        if m < batch_size:
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - m, axis=0)]) for k, v in chunk.items()}
        yield {k: jnp.asarray(v) for k, v in chunk.items()}, m


def ches_dataset(model, rows: dict, *, batch_size: int = 8) -> dict:
    """{"ches": [N], "ln_ches": [N]} numpy float32 for every pair of ``rows`` (``ches_scores`` in
    batches of ``batch_size``)."""
    _check_pairs(rows, "ches_dataset")
    out = {"ches": [], "ln_ches": []}
    for batch, m in _batches(rows, PAIR_KEYS, min(batch_size, len(rows["chosen_ids"]))):
        scores = jax.device_get(ches_scores(model, batch))
        for k, values in out.items():
            values.append(np.asarray(scores[k], np.float32)[:m])
    return {k: np.concatenate(v) for k, v in out.items()}


def flag_displacement(scores, *, fraction: float = 0.1) -> np.ndarray:
    """[N] bool: the ceil(fraction · N) pairs with the highest score (CHES or length-normalized
    CHES), the ones most likely to make the chosen likelihood fall under DPO (arXiv 2410.08847,
    Section 6 filters such pairs out). Ties at the threshold go to the earlier row."""
    s = np.asarray(scores, np.float64)
    if s.ndim != 1:
        raise ValueError(f"flag_displacement: scores must be [N], got shape {s.shape}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"flag_displacement: fraction must be in [0, 1], got {fraction}")
    if not np.all(np.isfinite(s)):
        raise ValueError("flag_displacement: scores contain NaN or inf")
    k = math.ceil(fraction * len(s))
    flags = np.zeros(len(s), bool)
    flags[np.argsort(-s, kind="stable")[:k]] = True
    return flags


# ------------------------------------------------------- implicit vs explicit reward

def preference_accuracy(chosen_rewards, rejected_rewards) -> float:
    """Fraction of pairs whose chosen response gets the higher reward; ties count ½ (a constant
    reward scores chance, 0.5, where TRL's strict ``rewards/accuracies`` would give 0).

    Args:
      chosen_rewards, rejected_rewards: [N] floats.
    """
    c, r = np.asarray(chosen_rewards, np.float64), np.asarray(rejected_rewards, np.float64)
    if c.shape != r.shape or c.ndim != 1 or len(c) == 0:
        raise ValueError(f"preference_accuracy: need two [N] arrays with N >= 1, got {c.shape} and {r.shape}")
    return float(np.mean((c > r) + 0.5 * (c == r)))


@nnx.jit
def _pair_logps(model, batch):
    ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]], axis=0)
    mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], axis=0)
    targets, tmask = ar.shift_targets(ids, mask)
    seq = ar.sequence_logps(ar.token_logps(model, ids, targets), tmask)
    b = batch["chosen_ids"].shape[0]
    return seq[:b], seq[b:]


def pair_sequence_logps(model, rows: dict, *, batch_size: int = 8):
    """(chosen [N], rejected [N]) numpy float32: Σ_t log π(y_t | x, y_<t) of each completion."""
    n = _check_pairs(rows, "pair_sequence_logps")
    chosen, rejected = [], []
    for batch, m in _batches(rows, PAIR_KEYS, min(batch_size, n)):
        c, r = jax.device_get(_pair_logps(model, batch))
        chosen.append(np.asarray(c, np.float32)[:m])
        rejected.append(np.asarray(r, np.float32)[:m])
    return np.concatenate(chosen), np.concatenate(rejected)


def implicit_rewards(policy, reference, rows: dict, *, beta: float, batch_size: int = 8):
    r"""(chosen [N], rejected [N]) numpy float32: the DPO implicit reward
    :math:`\beta(\log\pi(y|x) - \log\pi_{ref}(y|x))` (arXiv 2305.18290 Eq. 5; arXiv 2409.03650's
    DPORM). ``reference`` None reads precomputed ``ref_chosen`` / ``ref_rejected`` [N] from rows."""
    if beta <= 0:
        raise ValueError(f"implicit_rewards: beta must be > 0, got {beta}")
    pc, pr = pair_sequence_logps(policy, rows, batch_size=batch_size)
    if reference is not None:
        rc, rr = pair_sequence_logps(reference, rows, batch_size=batch_size)
    elif "ref_chosen" in rows and "ref_rejected" in rows:
        rc, rr = np.asarray(rows["ref_chosen"], np.float32), np.asarray(rows["ref_rejected"], np.float32)
    else:
        raise ValueError("implicit_rewards: no reference model and no precomputed ref_chosen / ref_rejected in rows")
    return beta * (pc - rc), beta * (pr - rr)


def _last_index_plus_one(mask) -> np.ndarray:
    """[N] int32: one past the last True position of each row (the right-padded row's length)."""
    m = np.asarray(mask, bool)
    t = m.shape[1]
    return np.where(m.any(1), t - np.argmax(m[:, ::-1], axis=1), 0).astype(np.int32)


def reward_model_rewards(rm, rows: dict, *, batch_size: int = 8):
    """(chosen [N], rejected [N]) numpy float32: an explicit reward model's scores
    (pojax.models.reward.RewardModel) of the paired rows' token ids, read at each row's last
    completion token. The rows must be tokenized with the reward model's tokenizer; for text
    under another tokenizer use pojax.eval.rewards.score_completions."""
    n = _check_pairs(rows, "reward_model_rewards")
    vocab = rm.config.vocab_size
    for key in ("chosen_ids", "rejected_ids"):
        top = int(np.max(rows[key]))
        if top >= vocab:
            raise ValueError(f"reward_model_rewards: {key} holds token id {top} >= the reward model's vocab_size "
                             f"{vocab}: tokenize the rows with the reward model's tokenizer")
    out = []
    for ids_key, mask_key in (("chosen_ids", "chosen_mask"), ("rejected_ids", "rejected_mask")):
        lengths = _last_index_plus_one(rows[mask_key])
        if np.any(lengths == 0):
            raise ValueError(f"reward_model_rewards: a row of {mask_key} has no completion token")
        scores = []
        data = {"ids": np.asarray(rows[ids_key], np.int32), "len": lengths}
        for batch, m in _batches(data, ("ids", "len"), min(batch_size, n)):
            scores.append(np.asarray(reward_scores(rm, batch["ids"], batch["len"]), np.float32)[:m])
        out.append(np.concatenate(scores))
    return out[0], out[1]


def generalization_report(implicit, explicit, *, domain=None) -> dict:
    """Implicit vs explicit reward accuracy on the same held-out pairs (arXiv 2409.03650).

    Args:
      implicit: (chosen [N], rejected [N]) implicit DPO rewards (``implicit_rewards``).
      explicit: (chosen [N], rejected [N]) explicit reward-model scores (``reward_model_rewards``).
      domain: optional [N] labels (e.g. "in", "out"); adds the three figures per label.

    Returns:
      {implicit_reward_accuracy, explicit_reward_accuracy, reward_accuracy_gap (explicit −
      implicit), num_pairs} and, per label L, the same keys suffixed "/L".
    """
    ic, ir = (np.asarray(a, np.float64) for a in implicit)
    ec, er = (np.asarray(a, np.float64) for a in explicit)
    if not (ic.shape == ir.shape == ec.shape == er.shape) or ic.ndim != 1:
        raise ValueError(f"generalization_report: implicit and explicit rewards must all be [N]; got "
                         f"{ic.shape}, {ir.shape}, {ec.shape}, {er.shape}")

    def figures(sel, suffix=""):
        a_imp = preference_accuracy(ic[sel], ir[sel])
        a_exp = preference_accuracy(ec[sel], er[sel])
        return {f"implicit_reward_accuracy{suffix}": a_imp, f"explicit_reward_accuracy{suffix}": a_exp,
                f"reward_accuracy_gap{suffix}": a_exp - a_imp, f"num_pairs{suffix}": int(np.sum(sel))}

    out = figures(np.ones(len(ic), bool))
    if domain is not None:
        d = np.asarray(domain)
        if d.shape != ic.shape:
            raise ValueError(f"generalization_report: domain must be [N] = {ic.shape}, got {d.shape}")
        for label in sorted(set(d.tolist()), key=str):
            out.update(figures(d == label, f"/{label}"))
    return out
