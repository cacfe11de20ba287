"""What TRL applies around every pairwise loss: the f-divergence reward of f-DPO, the
length-desensitized log-likelihoods of LD-DPO, the pair weights of WPO and RPO's NLL term.

``pairwise_loss`` wraps a loss of ``PairLogps`` so that each of these is one keyword away
(``ld_alpha``, ``use_weighting``, ``rpo_alpha``), exactly as ``DPOConfig`` exposes them.
"""
from __future__ import annotations

import functools
import inspect
import math

import jax
import jax.numpy as jnp

from pojax.losses import terms
from pojax.losses.types import PairLogps, TokenLogps

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
_EXP_CLAMP = 80.0  # exp(80) ~ 5.5e34: representable in fp32 (TRL clamps alpha_divergence here)


def f_divergence_scores(logratios, f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = 1.0):
    r"""f'(π/π_ref) for the f-DPO family (Wang et al., "Beyond Reverse KL", arXiv 2309.16240).

    reverse_kl: u = log t ; forward_kl: 1 - 1/t ; js_divergence: log 2 + log σ(u) ;
    alpha_divergence: (t^{α-1} - 1)/(α - 1), with t = exp(u) and u the log-ratio.

    As TRL, α = 1 falls back to reverse KL and (α-1)·u is clamped at 80; pojax also clamps
    -u at 80 for forward_kl, where TRL overflows to inf for log-ratios below -88.

    Args:
      logratios: [B] log π(y|x) - log π_ref(y|x).
    Returns:
      [B] float32 scores.
    """
    u = terms.f32(logratios)
    if f_divergence_type == "reverse_kl":
        return u
    if f_divergence_type == "forward_kl":
        return 1.0 - jnp.exp(jnp.minimum(-u, _EXP_CLAMP))
    if f_divergence_type == "js_divergence":
        return math.log(2.0) + jax.nn.log_sigmoid(u)
    if f_divergence_type == "alpha_divergence":
        a = f_alpha_divergence_coef
        if abs(a - 1.0) < 1e-6:
            return u
        return (jnp.exp(jnp.minimum((a - 1.0) * u, _EXP_CLAMP)) - 1.0) / (a - 1.0)
    raise ValueError(
        f"unknown f_divergence_type {f_divergence_type!r}; known: {', '.join(F_DIVERGENCES)}"
    )


def ld_split(tokens: TokenLogps, shared_len):
    """Masks of the first ``shared_len`` completion tokens and of the rest. [B, T] bool each."""
    pos = jnp.cumsum(tokens.mask.astype(jnp.int32), axis=-1)
    shared = tokens.mask & (pos <= shared_len[:, None])
    tail = tokens.mask & (pos > shared_len[:, None])
    return shared, tail


def ld_logps(logps: PairLogps, ld_alpha: float) -> PairLogps:
    r"""LD-DPO's length-desensitized log-likelihoods (Liu et al., arXiv 2409.06411, Eq. 9).

    With ℓ_s = min(|y_w|, |y_l|) the shared length, each completion's log-likelihood becomes
    Σ_{t ≤ ℓ_s} log π(y_t) + α Σ_{t > ℓ_s} log π(y_t), for policy and reference alike.
    α = 1 is plain DPO; α = 0 ignores everything past the shorter completion.

    Needs ``chosen_tokens`` and ``rejected_tokens`` with ``ref`` when the loss uses a reference.
    """
    ct, rt = logps.chosen_tokens, logps.rejected_tokens
    if ct is None or rt is None:
        raise ValueError("ld_alpha (LD-DPO) needs PairLogps.chosen_tokens and rejected_tokens")
    shared_len = jnp.minimum(jnp.sum(ct.mask, axis=-1), jnp.sum(rt.mask, axis=-1))

    def weighted(tok_logps, tokens):
        shared, tail = ld_split(tokens, shared_len)
        tok_logps = terms.f32(tok_logps)
        return jnp.sum(jnp.where(shared, tok_logps, 0.0), -1) + ld_alpha * jnp.sum(
            jnp.where(tail, tok_logps, 0.0), -1
        )

    has_ref = ct.ref is not None and rt.ref is not None
    return logps.replace(
        chosen=weighted(ct.policy, ct),
        rejected=weighted(rt.policy, rt),
        ref_chosen=weighted(ct.ref, ct) if has_ref else logps.ref_chosen,
        ref_rejected=weighted(rt.ref, rt) if has_ref else logps.ref_rejected,
    )


def wpo_weights(logps: PairLogps):
    r"""WPO's pair weight (Zhou et al., arXiv 2406.11827, Eq. 2, sampling-aligned form), no gradient.

    w(x, y) = exp( (1/|y|) Σ_t [log π(y_t | ·) - log Σ_v π(v | ·)²] ); the pair weight is
    w(x, y_w) · w(x, y_l). Needs ``extra["log_sum_sq_probs"]`` in both TokenLogps.
    Returns [B] float32.
    """

    def weight(tokens: TokenLogps | None, side: str):
        if tokens is None or "log_sum_sq_probs" not in tokens.extra:
            raise ValueError(
                f"use_weighting (WPO) needs PairLogps.{side}_tokens with extra['log_sum_sq_probs']"
            )
        aligned = terms.f32(tokens.policy) - terms.f32(tokens.extra["log_sum_sq_probs"])
        n = jnp.maximum(jnp.sum(tokens.mask, axis=-1), 1).astype(jnp.float32)
        return jnp.exp(jnp.sum(jnp.where(tokens.mask, aligned, 0.0), -1) / n)

    w = weight(logps.chosen_tokens, "chosen") * weight(logps.rejected_tokens, "rejected")
    return jax.lax.stop_gradient(w)


def cast_pair(logps: PairLogps) -> PairLogps:
    """Casts every per-sequence field of a PairLogps to float32."""
    return logps.replace(
        chosen=terms.f32(logps.chosen),
        rejected=terms.f32(logps.rejected),
        ref_chosen=terms.f32(logps.ref_chosen),
        ref_rejected=terms.f32(logps.ref_rejected),
        chosen_len=terms.f32(logps.chosen_len),
        rejected_len=terms.f32(logps.rejected_len),
    )


_MODIFIERS = [
    inspect.Parameter("ld_alpha", inspect.Parameter.KEYWORD_ONLY, default=None),
    inspect.Parameter("use_weighting", inspect.Parameter.KEYWORD_ONLY, default=False),
    inspect.Parameter("rpo_alpha", inspect.Parameter.KEYWORD_ONLY, default=None),
]


def pairwise_loss(fn=None, *, weighting: bool = True):
    """Decorates a loss of PairLogps with TRL's DPOConfig modifiers.

    The wrapped loss takes, besides its own hyperparameters:
      ld_alpha: LD-DPO α in [0, 1] (None: off); rewrites the log-likelihoods first.
      use_weighting: multiply the per-example loss by WPO's pair weight.
      rpo_alpha: add α · NLL(chosen) (RPO, Pang et al., arXiv 2404.19733); None: off.
    ``weighting=False`` marks losses that sort the batch (aot), where TRL refuses WPO.
    """
    if fn is None:
        return functools.partial(pairwise_loss, weighting=weighting)
    name = fn.__name__

    @functools.wraps(fn)
    def wrapped(logps: PairLogps, *, ld_alpha=None, use_weighting=False, rpo_alpha=None, **hparams):
        logps = cast_pair(logps)
        if ld_alpha is not None:
            logps = ld_logps(logps, ld_alpha)
        out = fn(logps, **hparams)
        loss = out.loss
        if use_weighting:
            if not weighting:
                raise ValueError(f"use_weighting (WPO) is not supported by {name!r}: it sorts the batch")
            loss = loss * wpo_weights(logps)
        if rpo_alpha is not None:
            loss = loss + rpo_alpha * terms.chosen_nll(logps, name)
        return out.replace(loss=loss)

    own = [p for p in inspect.signature(fn).parameters.values() if p.kind == p.KEYWORD_ONLY]
    first = next(iter(inspect.signature(fn).parameters.values()))
    wrapped.__signature__ = inspect.Signature([first, *own, *_MODIFIERS])
    wrapped.raw = fn
    wrapped.weighting = weighting
    return wrapped
