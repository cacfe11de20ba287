"""The trainer's shared-prompt decision: the window is the gym's completion span, it is off where
it cannot serve (option off, packing, TDPO, diffusion, rows that do not share a prompt), and the
reference values computed once with it equal those computed one row per sequence."""
import numpy as np

from pojax.data import gym as gym_lib
from pojax.train.objectives import reference_values, shared_prompt_width
from pojax.train.run import build_model
from tests.train.helpers import quick_config


def _rows(config, n=24):
    gym = gym_lib.from_config(config)
    return gym, gym_lib.training_rows(gym, "paired", 0, n)


def test_width_is_the_gym_completion_span_and_off_where_it_cannot_serve():
    config = quick_config()
    gym, rows = _rows(config)
    span = int(rows["chosen_mask"].sum(1).max())
    assert span == config.data.gym.response_len  # the answer symbols (BOS prompt SEP | answer)
    assert shared_prompt_width(config, rows, None) == span
    for key, value in [("likelihood.shared_prompt", False), ("data.packing", True), ("loss.name", "tdpo"),
                       ("likelihood.kind", "diffusion")]:
        other = quick_config(**{key: value})
        assert shared_prompt_width(other, rows) is None, key
    bad = dict(rows, rejected_ids=rows["rejected_ids"].copy())
    bad["rejected_ids"][3, 0] += 1  # row 3's rejected sequence has another prompt
    assert shared_prompt_width(config, bad) is None
    ranked = gym_lib.training_rows(gym, "ranked", 0, 8)
    assert shared_prompt_width(config, ranked) == span


def test_precomputed_reference_values_equal_unshared():
    config = quick_config()
    gym, rows = _rows(config)
    model = build_model(config, gym.vocab_size)
    shared = reference_values(model, rows, config, mask_id=None, batch_size=8)
    apart = reference_values(model, rows, quick_config(**{"likelihood.shared_prompt": False}), mask_id=None,
                             batch_size=8)
    assert set(shared) == {"ref_chosen", "ref_rejected"}
    for k in shared:
        np.testing.assert_allclose(shared[k], apart[k], atol=2e-5, rtol=1e-6)
