"""Model + likelihood + loss → one scalar loss and its metrics for a batch."""
from pojax.objectives.diffusion import (
    diffusion_preference_loss,
    diffusion_sft_loss,
    example_draws,
    pair_elbos,
    precompute_reference,
    unpaired_elbos,
)
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
    ranked_logps,
    sft_loss,
    split_pairs,
    unpaired_logps,
)

__all__ = [
    "check_packable",
    "concat_pairs",
    "diffusion_preference_loss",
    "diffusion_sft_loss",
    "example_draws",
    "initial_loss_state",
    "packed_pair_logps",
    "packed_preference_loss",
    "pair_elbos",
    "pair_logps",
    "precompute_reference",
    "preference_loss",
    "ranked_logps",
    "sft_loss",
    "split_pairs",
    "unpaired_elbos",
    "unpaired_logps",
]
