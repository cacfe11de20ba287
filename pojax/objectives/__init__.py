"""Model + likelihood + loss → one scalar loss and its metrics for a batch."""
from pojax.objectives.packed import (
    check_packable,
    packed_pair_logps,
    packed_preference_loss,
)
from pojax.objectives.preference import (
    concat_pairs,
    initial_loss_state,
    pair_logps,
    preference_loss,
    sft_loss,
    split_pairs,
    unpaired_logps,
)

__all__ = [
    "check_packable",
    "concat_pairs",
    "initial_loss_state",
    "packed_pair_logps",
    "packed_preference_loss",
    "pair_logps",
    "preference_loss",
    "sft_loss",
    "split_pairs",
    "unpaired_logps",
]
