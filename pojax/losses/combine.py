"""Weighted sums of DPO loss types: TRL's ``loss_type=[...]`` with ``loss_weights=[...]``.

MPO-style mixtures (e.g. sigmoid + bco_pair + sft) are one call:
``pojax.losses.get(["sigmoid", "sft"])(logps, loss_weights=[1.0, 0.5], beta=0.1)``.
"""
from __future__ import annotations

import inspect

from pojax.losses import registry
from pojax.losses.modifiers import pairwise_loss
from pojax.losses.types import LossOutput, PairLogps

_F_DIVERGENCE_KEYS = ("f_divergence_type", "f_alpha_divergence_coef")


def hparam_names(fn) -> list[str]:
    """The keyword hyperparameters a loss function accepts (modifiers included)."""
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind == p.KEYWORD_ONLY]


def combine(names: list[str]):
    """Returns L = Σ_k w_k L_k over the named DPO loss types (all must take PairLogps).

    Each hyperparameter goes to every component that accepts it; one that no component
    accepts raises TypeError. As in TRL, a non-default f-divergence requires every component
    to support it. ``ld_alpha`` / ``use_weighting`` / ``rpo_alpha`` act once on the sum
    (WPO's weight distributes over the sum; RPO's NLL is added once).
    """
    if not names:
        raise ValueError("combine needs at least one loss name")
    fns = [registry.get(n) for n in names]
    for n, fn in zip(names, fns):
        if not hasattr(fn, "raw"):
            raise ValueError(f"loss {n!r} cannot be combined: only DPO loss types (taking PairLogps) can")
    accepted = [set(hparam_names(fn.raw)) for fn in fns]
    union = sorted(set().union(*accepted))
    weighting = all(fn.weighting for fn in fns)

    def raw(logps: PairLogps, *, loss_weights=None, **hparams) -> LossOutput:
        weights = [1.0] * len(names) if loss_weights is None else list(loss_weights)
        if len(weights) != len(names):
            raise ValueError(f"loss_weights has {len(weights)} entries for {len(names)} loss types {names}")
        for key in hparams:
            if key not in union:
                raise TypeError(f"loss_type {names} got an unexpected hyperparameter {key!r}; accepted: {', '.join(union)}")
        fdiv = hparams.get("f_divergence_type", "reverse_kl")
        unsupported = [n for n, acc in zip(names, accepted) if "f_divergence_type" not in acc]
        if fdiv != "reverse_kl" and unsupported:
            raise ValueError(f"f_divergence_type={fdiv!r} is not supported by {unsupported}")
        total, metrics = 0.0, {}
        for name, fn, weight, acc in zip(names, fns, weights, accepted):
            out = fn.raw(logps, **{k: v for k, v in hparams.items() if k in acc})
            total = total + weight * out.loss
            metrics.update(out.metrics)
            metrics[f"loss/{name}"] = out.loss
        return LossOutput(loss=total, metrics=metrics)

    raw.__name__ = "+".join(names)
    combined = pairwise_loss(raw, weighting=weighting)
    sig = inspect.signature(combined)  # (logps, *, loss_weights, ld_alpha, use_weighting, rpo_alpha)
    first, *kwonly = sig.parameters.values()
    own = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None) for k in union]
    combined.__signature__ = inspect.Signature([first, kwonly[0], *own, *kwonly[1:]])
    return combined
