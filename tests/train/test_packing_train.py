"""Training on packed pairs: when one batch holds the whole dataset, packed and unpacked runs see
the same pairs, so their losses and updates agree step by step; bad packing settings name their
config key."""
import math

import numpy as np
import pytest

from pojax.config import ConfigError, validate
from pojax.train.run import run_train
from tests.train.helpers import quick_config, read_jsonl, warmup_cosine

# 16 gym pairs of 2·8 + 6 + 6 = 28 tokens: rows of 56 tokens hold 2 pairs (4 segments), so 8 rows
# hold the whole dataset, as does one unpacked batch of 16 pairs.
BASE = {"train.sft_steps": 0, "train.max_steps": 3, "data.gym.num_train": 16, "eval.num_examples": 0,
        "optimizer.warmup_steps": 0, "optimizer.learning_rate": 1e-2, "logging.plots": False,
        "train.export_final": False, "data.gym.num_eval": 8, "eval.num_samples": 1}


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_packed_run_equals_unpacked_run_on_the_same_pairs(tmp_path, loss):
    unpacked = quick_config(**BASE, **{"train.batch_size": 16, "loss.name": loss})
    packed = quick_config(**BASE, **{"train.batch_size": 8, "loss.name": loss, "data.packing": True,
                                     "data.packed_length": 56, "data.max_segments": 4})
    validate(packed)
    run_train(unpacked, str(tmp_path / "unpacked"))
    results = run_train(packed, str(tmp_path / "packed"))
    assert results["packing_efficiency"] == pytest.approx(1.0)
    a, b = read_jsonl(tmp_path / "unpacked" / "metrics.jsonl"), read_jsonl(tmp_path / "packed" / "metrics.jsonl")
    if loss == "sigmoid":
        assert a[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    for key in ("loss", "rewards/margins", "grad_norm"):
        np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=2e-4, atol=1e-6, err_msg=key)
    # one batch is the whole dataset, packed (8 rows of 2 pairs) or not: each step is one epoch
    assert [r["epoch"] for r in b] == [r["epoch"] for r in a] == [1.0, 2.0, 3.0]
    want = [pytest.approx(warmup_cosine(i, 1e-2, 0, 3), rel=1e-6) for i in range(3)]
    assert [r["learning_rate"] for r in b] == [r["learning_rate"] for r in a] == want
    # at step 1 every margin is 0 up to rounding, so accuracy is compared once they have moved
    np.testing.assert_allclose([r["rewards/accuracies"] for r in b[1:]], [r["rewards/accuracies"] for r in a[1:]])


def test_packing_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="data.packing"):
        validate(quick_config(**{"data.packing": True, "loss.name": "kto"}))
    with pytest.raises(ConfigError, match="data.packing"):
        validate(quick_config(**{"data.packing": True, "loss.name": "orpo", "reference.mode": "none"}))
    with pytest.raises(ConfigError, match="data.max_segments"):
        validate(quick_config(**{"data.packing": True, "data.max_segments": 3}))
    config = quick_config(**BASE, **{"train.batch_size": 8, "data.packing": True, "data.packed_length": 20})
    with pytest.raises(ConfigError, match="data.packed_length"):
        run_train(config, "/tmp/pojax_unused_packing_workdir")
