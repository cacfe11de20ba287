"""Every reference mode starts at the same loss (log 2 for DPO) with the same gradients, and
swapping the loss or the reference mode still raises the gym's gold reward."""
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pojax.data import gym as gym_lib
from pojax.models.lora import apply_lora, without_adapters
from pojax.objectives import pair_logps, preference_loss
from pojax.train.run import build_model, run_train
from tests.train.helpers import quick_config, read_jsonl


def test_reference_modes_agree_on_loss_and_gradients():
    config = quick_config()
    gym = gym_lib.from_config(config)
    rows = gym_lib.training_rows(gym, "paired", 0, 16)
    batch = {k: jnp.asarray(v) for k, v in rows.items()}
    model = build_model(config, gym.vocab_size)
    hp = {"beta": 0.1}

    def grads(policy_fn):
        graphdef, params, rest = nnx.split(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)), ...)

        def f(p):
            m = nnx.merge(graphdef, p, rest)
            policy, ref, b = policy_fn(m)
            return preference_loss(policy, ref, b, loss_name="sigmoid", hparams=hp)[0]

        return jax.value_and_grad(f)(params)

    reference = nnx.merge(*nnx.split(model))  # frozen copy (same values)
    copy_loss, copy_grads = grads(lambda m: (m, reference, batch))
    ref_lp = pair_logps(reference, None, batch)
    pre = dict(batch, ref_chosen=ref_lp.chosen, ref_rejected=ref_lp.rejected)
    pre_loss, pre_grads = grads(lambda m: (m, None, pre))
    apply_lora(model, rank=4, rngs=nnx.Rngs(1))  # B = 0: policy = base
    lora_loss, lora_grads = grads(lambda m: (m, without_adapters(m), batch))
    for loss in (copy_loss, pre_loss, lora_loss):
        np.testing.assert_allclose(loss, math.log(2), atol=1e-6)
    for g in (pre_grads, lora_grads):
        for a, b in zip(jax.tree.leaves(copy_grads), jax.tree.leaves(g)):
            np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.fixture(scope="module")
def sft_workdir(tmp_path_factory):
    """One SFT stage shared by the runs below (each copies its checkpoint and resumes past it)."""
    path = tmp_path_factory.mktemp("sft")
    config = quick_config(**{"train.max_steps": 1, "eval.num_samples": 1, "data.gym.num_eval": 8})
    run_train(config, str(path))
    return path


@pytest.mark.parametrize(("overrides", "first_loss"), [
    ({"loss.name": "kto"}, 0.5),
    ({"loss.name": "ipo", "loss.beta": 0.5}, 1.0),
    ({"loss.name": "simpo", "reference.mode": "none", "loss.beta": 2.0}, None),
    ({"reference.mode": "precomputed"}, math.log(2)),
    ({"loss.name": "beta_dpo"}, math.log(2)),  # running margin statistics threaded through the train state
    # left out for CI time (40 min on 2 cores): plackett_luce (a listwise run: tests/train/test_file_recipes.py::
    # test_ranked_rows_train_a_listwise_loss; the gym sweep) and reference.mode=lora_base (its loss and gradients equal the frozen copy's:
    # test_reference_modes_agree_on_loss_and_gradients)
])
def test_gold_reward_improves(sft_workdir, tmp_path, overrides, first_loss):
    # 60 steps: measured gold gains 0.13 to 0.25 and win rates 0.88 to 0.98 (120 steps until the CI budget)
    shutil.copytree(sft_workdir / "checkpoints" / "sft", tmp_path / "checkpoints" / "sft")
    shutil.copy(sft_workdir / "metrics_sft.jsonl", tmp_path / "metrics_sft.jsonl")
    config = quick_config(**{"train.max_steps": 60, "eval.num_samples": 2, "logging.plots": False,
                             "train.export_final": False, **overrides})
    results = run_train(config, str(tmp_path))
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows[0]["step"] == 1 and len(rows) == config.train.max_steps  # the SFT stage was restored, not rerun
    if first_loss is not None:
        np.testing.assert_allclose(rows[0]["loss"], first_loss, atol=1e-5)
    assert results["gold_reward_after"] > results["gold_reward_before"] + 0.05, results
    assert results["gold_win_rate"] > 0.6, results


def test_gradient_accumulation_equals_the_full_batch(tmp_path):
    # 2 micro-batches of 16 (consecutive slices of the same permutation) average to the
    # gradient of the batch of 32, so the optimizer steps and the logged losses agree.
    base = {"train.sft_steps": 0, "train.max_steps": 5, "eval.num_samples": 1, "data.gym.num_eval": 4,
            "logging.plots": False, "train.export_final": False}
    run_train(quick_config(**base), str(tmp_path / "full"))
    run_train(quick_config(**base, **{"train.grad_accum_steps": 2}), str(tmp_path / "accum"))
    full, accum = read_jsonl(tmp_path / "full" / "metrics.jsonl"), read_jsonl(tmp_path / "accum" / "metrics.jsonl")
    assert [r["step"] for r in accum] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([r["loss"] for r in accum], [r["loss"] for r in full], atol=2e-6)


def test_bf16_training_keeps_float32_master_parameters():
    import jax.numpy as jnp

    config = quick_config(**{"model.dtype": "bfloat16"})
    model = build_model(config, 19)
    assert model.config.dtype == "bfloat16" and model.config.param_dtype == "float32"
    assert model.layers[0].mlp.up_proj.kernel[...].dtype == jnp.float32
    # a 5e-7 step survives in float32 (it would vanish at bfloat16's ~1e-4 resolution near 0.02)
    w = model.layers[0].mlp.up_proj.kernel[...]
    assert bool(jnp.all((w + 5e-7) != w))
