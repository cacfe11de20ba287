"""pojax.losses: every preference loss as a pure, jit-able function of log-likelihoods.

    fn = pojax.losses.get("sigmoid")          # or "dpo", "ipo", "simpo", "kto", ...
    out = fn(PairLogps(...), beta=0.1)        # LossOutput(loss=[B], metrics={...})

Importing this package registers every loss module below.
"""
from pojax.losses import (  # noqa: F401  (registration)
    adaptive,
    listwise,
    online,
    pairwise,
    reference_free,
    token_level,
    unpaired,
)
from pojax.losses.adaptive import BetaDPOState, madpo_weight
from pojax.losses.combine import combine, hparam_names
from pojax.losses.registry import (
    RUNTIME_ARGS,
    get,
    input_kind,
    names,
    needs_reference,
    needs_tokens,
)
from pojax.losses.token_level import TOKEN_KL, TOKEN_REWARDS, rto_token_rewards
from pojax.losses.types import (
    LossOutput,
    PairLogps,
    RankedLogps,
    TokenLogps,
    UnpairedLogps,
)
from pojax.losses.unpaired import BCOState, KTOBaselineState

__all__ = [
    "RUNTIME_ARGS",
    "TOKEN_KL",
    "TOKEN_REWARDS",
    "BCOState",
    "KTOBaselineState",
    "BetaDPOState",
    "LossOutput",
    "PairLogps",
    "RankedLogps",
    "TokenLogps",
    "UnpairedLogps",
    "combine",
    "get",
    "hparam_names",
    "input_kind",
    "madpo_weight",
    "names",
    "needs_reference",
    "needs_tokens",
    "rto_token_rewards",
]
