"""Log-likelihood structs that every loss consumes, and the loss output struct.

All are ``flax.struct`` dataclasses, so they are pytrees: they pass through ``jax.jit``,
``jax.vmap`` and ``jax.grad`` unchanged. Shapes use B = batch, T = completion length,
K = responses per prompt. ``None`` fields are static (not leaves).
"""
from __future__ import annotations

from typing import Any

import jax
from flax import struct

Array = jax.Array


@struct.dataclass
class TokenLogps:
    """Per-token log-probabilities, for token-level losses, LD-DPO and WPO.

    Attributes:
      policy: [B, T] log π(y_t | x, y_<t) under the policy.
      mask: [B, T] bool, True on completion tokens.
      ref: [B, T] the same under the reference, or None.
      extra: dict of further [B, T] arrays, e.g. ``"log_sum_sq_probs"``: log Σ_v p(v)² per token
        (WPO's sampling-aware weight) or token rewards for TGDPO.
    """

    policy: Array
    mask: Array
    ref: Array | None = None
    extra: dict[str, Any] = struct.field(default_factory=dict)


@struct.dataclass
class PairLogps:
    """Per-sequence log-likelihoods of a chosen and a rejected completion of each prompt.

    Attributes:
      chosen, rejected: [B] Σ_t log π(y_t | x, y_<t) over completion tokens (or an ELBO
        estimate for diffusion LMs).
      ref_chosen, ref_rejected: [B] the same under the reference; None for reference-free use.
      chosen_len, rejected_len: [B] completion token counts (≥ 1). Needed by the
        length-normalized losses (ipo, sigmoid_norm, simpo, orpo, asft, cpo's BC term).
      chosen_tokens, rejected_tokens: TokenLogps, only for LD-DPO and WPO.
    """

    chosen: Array
    rejected: Array
    ref_chosen: Array | None = None
    ref_rejected: Array | None = None
    chosen_len: Array | None = None
    rejected_len: Array | None = None
    chosen_tokens: TokenLogps | None = None
    rejected_tokens: TokenLogps | None = None


@struct.dataclass
class UnpairedLogps:
    """Per-sequence log-likelihoods of single completions with a desirable/undesirable label.

    Attributes:
      completion: [B] Σ_t log π(y_t | x, y_<t) under the policy.
      label: [B] bool, True for a desirable completion.
      ref_completion: [B] the same under the reference (None for reference-free use).
      kl, ref_kl: [B] log-likelihood of a mismatched completion (x_i paired with another row's
        y) under policy and reference: KTO's z0 estimate. None where the loss does not use it.
      length: [B] completion token counts (≥ 1), or None.
    """

    completion: Array
    label: Array
    ref_completion: Array | None = None
    kl: Array | None = None
    ref_kl: Array | None = None
    length: Array | None = None


@struct.dataclass
class RankedLogps:
    """K responses per prompt with ranking scores (listwise losses).

    Attributes:
      logps: [B, K] per-sequence log-likelihoods under the policy.
      scores: [B, K] scores (higher is better) or ranks.
      ref_logps: [B, K] under the reference, or None.
      mask: [B, K] bool for ragged K, or None (all valid).
      length: [B, K] completion token counts (≥ 1), or None. Needed by ``tpo`` (token-mean
        log-ratios); ``objectives.ranked_logps`` fills it.
    """

    logps: Array
    scores: Array
    ref_logps: Array | None = None
    mask: Array | None = None
    length: Array | None = None


@struct.dataclass
class LossOutput:
    """What every loss returns.

    Attributes:
      loss: [B] float32 per-example loss; the caller takes the (weighted) mean.
      metrics: {name: [B] or scalar} with TRL's metric names.
      state: new value of any explicit running state (BCO's δ), or None.
    """

    loss: Array
    metrics: dict[str, Array]
    state: Any = None
