"""The loss registry: one name (plus aliases) per loss function.

``get(name)`` returns the function; ``names()`` lists every registered name. A list of names
gives the weighted sum of those losses (TRL's ``loss_type=[...]``, ``loss_weights=[...]``).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

_REGISTRY: dict[str, Callable] = {}
_REFERENCE_FREE: set[str] = set()
_NEEDS_TOKENS: set[str] = set()
_INPUT_KINDS = {"PairLogps": "pair", "UnpairedLogps": "unpaired", "RankedLogps": "ranked"}

# Keyword arguments of some losses that carry batch data or running state, not configuration:
# BCO's and beta-DPO's running ``state``, beta-DPO's PRNG ``key`` (its filtering), soft-label
# ``preference`` probabilities (soft_dpo, adpo) and reward-model ``reward_margin`` (madpo), each
# [B]. The trainer passes them per batch; they are never config keys.
RUNTIME_ARGS = ("state", "key", "preference", "reward_margin", "ref_sample_chosen",  # + XPO's side flag
                "slow_logps")  # + OFS-DPO's slow module (PairLogps)


def register(*names: str, reference_free: bool = False, tokens: bool = False) -> Callable[[Callable], Callable]:
    """Registers a loss function under one or more names (the first is canonical).

    ``reference_free=True`` marks losses that never read reference log-probs; ``tokens=True``
    marks losses that need ``PairLogps.chosen_tokens`` / ``rejected_tokens``.
    """

    def wrap(fn: Callable) -> Callable:
        if reference_free:
            _REFERENCE_FREE.update(names)
        if tokens:
            _NEEDS_TOKENS.update(names)
        for name in names:
            if name in _REGISTRY:
                raise ValueError(f"loss name {name!r} is registered twice")
            _REGISTRY[name] = fn
        return fn

    return wrap


def names() -> list[str]:
    """All registered loss names, aliases included, sorted."""
    return sorted(_REGISTRY)


def needs_reference(name: str | Sequence[str]) -> bool:
    """Whether the loss (or any part of a "+"-joined / listed combination) reads reference log-probs."""
    parts = _split(name)
    for part in parts:
        get(part)  # unknown names raise here
    return any(part not in _REFERENCE_FREE for part in parts)


def needs_tokens(name: str | Sequence[str]) -> bool:
    """Whether the loss (or any part of a combination) reads per-token log-probs (TokenLogps)."""
    parts = _split(name)
    for part in parts:
        get(part)
    return any(part in _NEEDS_TOKENS for part in parts)


def input_kind(name: str | Sequence[str]) -> str:
    """Which struct the loss takes: "pair" (PairLogps), "unpaired" (UnpairedLogps) or "ranked"
    (RankedLogps), read from the annotation of its first parameter. Combinations are "pair"."""
    parts = _split(name)
    if len(parts) > 1 or not isinstance(name, str):
        return "pair"  # combine() accepts only PairLogps losses
    first = next(iter(inspect.signature(get(name)).parameters.values()))
    annotation = getattr(first.annotation, "__name__", first.annotation)
    return _INPUT_KINDS[str(annotation)]


def _split(name: str | Sequence[str]) -> list[str]:
    if isinstance(name, str):
        return [part.strip() for part in name.split("+")]
    return list(name)


def get(name: str | Sequence[str]) -> Callable:
    """Returns the loss function registered as ``name``.

    Args:
      name: a registered name; a list of names, or names joined by "+" ("sigmoid+sft"), for
        their weighted sum (see ``pojax.losses.combine.combine``).

    Raises:
      ValueError: unknown name; the message lists the known ones.
    """
    parts = _split(name)
    if len(parts) > 1 or not isinstance(name, str):
        from pojax.losses.combine import combine  # late import: combine uses this registry

        return combine(parts)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(names())}") from None
