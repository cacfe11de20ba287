"""pojax.train.data: the ELBO-KTO authors' n_D / n_U (data.desirable_fraction /
undesirable_fraction) subsample the unpaired training rows, not the held-out ones."""
import numpy as np

from pojax.config import base_config
from pojax.train import data


def gym_config(**fractions):
    config = base_config()
    config.loss.name = "kto"
    config.data.gym.num_train, config.eval.num_examples = 300, 40
    for key, value in fractions.items():
        config.data[key] = value
    return config


def test_label_fractions_subsample_the_training_rows_only():
    full = data.gym_data(gym_config())
    sub = data.gym_data(gym_config(desirable_fraction=0.25, undesirable_fraction=0.5))
    label, kept = np.asarray(full.preference["label"], bool), np.asarray(sub.preference["label"], bool)
    assert kept.sum() == int(label.sum() * 0.25) and (~kept).sum() == int((~label).sum() * 0.5)
    # the kept rows are rows of the full set, in its order, with their KL twins rebuilt among them
    ids = [tuple(r) for r in np.asarray(full.preference["input_ids"])]
    where = [ids.index(tuple(r)) for r in np.asarray(sub.preference["input_ids"])]
    assert where == sorted(where)
    assert set(sub.preference) == set(full.preference)
    for k in ("input_ids", "completion_mask", "label"):
        np.testing.assert_array_equal(sub.held_out[k], full.held_out[k])
    # the same seed, the same subset; another seed, another
    again = data.gym_data(gym_config(desirable_fraction=0.25, undesirable_fraction=0.5))
    np.testing.assert_array_equal(again.preference["input_ids"], sub.preference["input_ids"])
    other = data.gym_data(gym_config(desirable_fraction=0.25, undesirable_fraction=0.5, subsample_seed=7))
    assert not np.array_equal(other.preference["input_ids"], sub.preference["input_ids"])
