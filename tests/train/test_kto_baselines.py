"""KTO's running reference points in training (loss.kto_reference_point = running_global /
running_class_conditional): the EMAs live in the train state, so a run resumed from a
checkpoint follows the uninterrupted run step for step, and evaluation reads them without
moving them (a run evaluated after every step trains exactly like one evaluated at the end)."""
import shutil

import numpy as np

from pojax.train.run import run_train
from tests.train.helpers import quick_config, read_jsonl

TINY = {"loss.name": "kto", "loss.kto_reference_point": "running_class_conditional", "loss.kto_baseline_ema_decay": 0.5,
        "train.sft_steps": 0, "train.max_steps": 4, "checkpoint.every_steps": 2, "checkpoint.keep": 3,
        "train.batch_size": 8, "data.gym.num_train": 64, "data.gym.num_eval": 8, "eval.num_samples": 0,
        "eval.num_examples": 8, "optimizer.learning_rate": 1e-2, "optimizer.warmup_steps": 0,
        "model.num_layers": 1, "train.export_final": False}
KEYS = ("loss", "baseline/ema_D", "baseline/ema_U", "kl", "rewards/chosen")


def _train_rows(workdir):
    return [{k: r[k] for k in KEYS} for r in read_jsonl(workdir / "metrics.jsonl")]


def test_running_baselines_resume_exactly_and_evaluation_leaves_them(tmp_path):
    run_train(quick_config(**TINY, **{"eval.every_steps": 100}), str(tmp_path / "clean"))
    evaluated = quick_config(**TINY, **{"eval.every_steps": 1})
    run_train(evaluated, str(tmp_path / "evaluated"))
    shutil.copytree(tmp_path / "evaluated", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "train" / "4")
    run_train(evaluated, str(tmp_path / "resumed"))  # restores step 2, with its EMAs, and trains 3 and 4

    clean = _train_rows(tmp_path / "clean")
    assert "eval_loss" in read_jsonl(tmp_path / "evaluated" / "metrics.jsonl")[0]  # evaluated at step 1
    for name in ("evaluated", "resumed"):
        rows = _train_rows(tmp_path / name)
        assert len(rows) == 4
        for got, want in zip(rows, clean):
            for k in KEYS:
                np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-9, err_msg=f"{name} {k}")
    emas = [(r["baseline/ema_D"], r["baseline/ema_U"]) for r in clean]
    assert emas[0] == (0.0, 0.0)  # step 1: policy = reference, r = 0, so the EMAs stay at 0
    assert len(set(emas[1:])) == 3 and all(d != u for d, u in emas[1:])  # then they move, apart
    # each step is centered on the EMAs left by the step before (the row mean of its z0 is logged as kl)
    assert clean[1]["kl"] == 0.0 and clean[2]["kl"] != 0.0
