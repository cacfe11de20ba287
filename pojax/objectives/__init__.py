"""Model + likelihood + loss → one scalar loss and its metrics for a batch."""
from pojax.objectives.preference import (
    concat_pairs, pair_logps, preference_loss, sft_loss, split_pairs, unpaired_logps,
)

__all__ = ["concat_pairs", "pair_logps", "preference_loss", "sft_loss", "split_pairs", "unpaired_logps"]
