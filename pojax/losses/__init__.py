"""pojax.losses: every preference loss as a pure, jit-able function of log-likelihoods.

    fn = pojax.losses.get("sigmoid")          # or "dpo", "ipo", "simpo", "kto", ...
    out = fn(PairLogps(...), beta=0.1)        # LossOutput(loss=[B], metrics={...})

Importing this package registers every loss module below.
"""
from pojax.losses import pairwise, reference_free, unpaired  # noqa: F401  (registration)
from pojax.losses.combine import combine, hparam_names
from pojax.losses.registry import get, names, needs_reference
from pojax.losses.types import LossOutput, PairLogps, RankedLogps, TokenLogps, UnpairedLogps
from pojax.losses.unpaired import BCOState

__all__ = [
    "BCOState", "LossOutput", "PairLogps", "RankedLogps", "TokenLogps", "UnpairedLogps",
    "combine", "get", "hparam_names", "names", "needs_reference",
]
