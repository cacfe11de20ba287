"""TRL's learning_rate and epoch on every metrics line of pojax.train.loop.run_stage, with
gradient accumulation and across a resume, on a one-layer model (no gym, no tokenizer)."""
import logging
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pojax.data.pipeline import ArraySource, make_dataset
from pojax.train.loop import batches_per_epoch, run_stage
from pojax.train.optim import make_optimizer
from pojax.train.run import mesh_and_rules
from tests.train.helpers import quick_config, read_jsonl, warmup_cosine

STEPS, WARMUP, PEAK, BATCH, ACCUM, ROWS = 8, 3, 0.1, 4, 2, 12


def _config():
    return quick_config(**{"train.max_steps": STEPS, "train.batch_size": BATCH, "train.grad_accum_steps": ACCUM,
                           "optimizer.learning_rate": PEAK, "optimizer.warmup_steps": WARMUP,
                           "optimizer.schedule": "cosine", "checkpoint.every_steps": 4, "checkpoint.keep": 2,
                           "logging.every_steps": 1})


def _objective(model, reference, batch, loss_state):
    loss = jnp.mean((model(batch["x"])[:, 0] - batch["y"]) ** 2)
    return loss, {}, loss_state


def _stage(workdir):
    config = _config()
    mesh, rules = mesh_and_rules(config)
    rng = np.random.default_rng(0)
    rows = {"x": rng.normal(size=(ROWS, 2)).astype(np.float32), "y": rng.normal(size=ROWS).astype(np.float32)}
    dataset = make_dataset(ArraySource(rows), batch_size=BATCH // ACCUM, seed=1)
    run_stage("train", nnx.Linear(2, 1, rngs=nnx.Rngs(0)), objective=_objective, dataset=dataset, steps=STEPS,
              tx=make_optimizer(config, STEPS), workdir=str(workdir), config=config, mesh=mesh, rules=rules)
    return read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def test_learning_rate_and_epoch_on_every_line_and_after_a_resume(tmp_path, caplog):
    lines = _stage(tmp_path / "full")
    assert [r["step"] for r in lines] == list(range(1, STEPS + 1))
    for r in lines:
        assert r["learning_rate"] == pytest.approx(warmup_cosine(r["step"] - 1, PEAK, WARMUP, STEPS), rel=1e-6, abs=1e-6 * PEAK), r["step"]
        assert r["epoch"] == pytest.approx(r["step"] * BATCH / ROWS, rel=1e-12), r["step"]
    assert lines[0]["learning_rate"] == 0.0  # optax: the first warm-up update has step size 0
    # resume from the step-4 checkpoint: the run rewrites lines 5..8 with the same values
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "train" / str(STEPS))
    caplog.set_level(logging.INFO)
    resumed = _stage(tmp_path / "resumed")
    assert "train: resumed from step 4" in caplog.text
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(resumed, lines):
        assert (a["learning_rate"], a["epoch"]) == (b["learning_rate"], b["epoch"]), a["step"]


def test_batches_per_epoch_counts_source_items():
    rows = {"x": np.zeros((12, 3), np.float32), "w": np.zeros(12, np.float32)}
    assert batches_per_epoch(make_dataset(ArraySource(rows), batch_size=4, seed=0)) == 3.0
    # packed batches: each source item is a whole micro-batch, so an epoch is one pass over them
    packed = {"input_ids": np.zeros((5, 4, 8), np.int32)}
    one = make_dataset(ArraySource(packed), batch_size=1, seed=0).map(lambda b: {k: v[0] for k, v in b.items()})
    assert batches_per_epoch(one) == 5.0
    # a transform that reshapes the items: no plain count, so no epoch
    odd = make_dataset(ArraySource(rows), batch_size=4, seed=0, transform=lambda r: {"x": np.zeros(5), "w": r["w"]})
    assert batches_per_epoch(odd) is None
