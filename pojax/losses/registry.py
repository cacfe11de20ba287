"""The loss registry: one name (plus aliases) per loss function.

``get(name)`` returns the function; ``names()`` lists every registered name. A list of names
gives the weighted sum of those losses (TRL's ``loss_type=[...]``, ``loss_weights=[...]``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

_REGISTRY: dict[str, Callable] = {}
_REFERENCE_FREE: set[str] = set()


def register(*names: str, reference_free: bool = False) -> Callable[[Callable], Callable]:
    """Registers a loss function under one or more names (the first is canonical).

    ``reference_free=True`` marks losses that never read reference log-probs.
    """

    def wrap(fn: Callable) -> Callable:
        if reference_free:
            _REFERENCE_FREE.update(names)
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
