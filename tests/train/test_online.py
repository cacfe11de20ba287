"""The online loop (pojax.train.online): pairs are labelled by the reward's ordering, a tiny run
raises a stub reward and writes its metrics and checkpoints, a finished run resumes without
training again, and configs the loop cannot serve fail with the key named."""
import json
import os

import numpy as np
import pytest

from pojax.config import ConfigError, validate
from pojax.data import gym as gym_lib
from pojax.train import online
from tests.train.helpers import quick_config, read_jsonl

GYM = gym_lib.Gym()
TARGET = gym_lib.N_SPECIAL + 5  # the stub reward's favourite symbol


def stub_reward(prompts, completions):
    """Fraction of completion tokens equal to TARGET: unrelated to the gold rule."""
    return np.mean(np.asarray(completions) == TARGET, axis=-1)


def test_labels_follow_the_reward_and_ties_weigh_zero():
    rng = np.random.default_rng(0)
    prompts = GYM.prompts(rng, 64)
    a = np.where(rng.random((64, 6)) < 0.3, TARGET, GYM.prompts(rng, 64))
    b = np.where(rng.random((64, 6)) < 0.3, TARGET, GYM.prompts(rng, 64))
    pairs = online.label_pairs(GYM, prompts, a, b, stub_reward)
    completion = slice(2 + GYM.prompt_len, None)
    r_chosen = stub_reward(prompts, pairs["chosen_ids"][:, completion])
    r_rejected = stub_reward(prompts, pairs["rejected_ids"][:, completion])
    ties = stub_reward(prompts, a) == stub_reward(prompts, b)
    assert 0 < ties.sum() < 64  # the draw has both kinds
    assert np.all(r_chosen[~ties] > r_rejected[~ties])
    np.testing.assert_array_equal(pairs["weight"], (~ties).astype(np.float32))
    # the label does not depend on which completion came first
    swapped = online.label_pairs(GYM, prompts, b, a, stub_reward)
    np.testing.assert_array_equal(swapped["chosen_ids"][~ties], pairs["chosen_ids"][~ties])
    np.testing.assert_array_equal(pairs["chosen_ids"][:, :completion.start], gym_lib.Gym.sequence(GYM, prompts, a)[0][:, :completion.start])
    assert pairs["chosen_mask"][:, completion].all() and not pairs["chosen_mask"][:, :completion.start].any()


def _config(loss="online_dpo", **overrides):
    return quick_config(**{"loss.name": loss, "train.sft_steps": 0, "train.max_steps": 12, "train.batch_size": 32,
                           "optimizer.learning_rate": 1e-2, "optimizer.warmup_steps": 0,
                           "optimizer.schedule": "constant", "loss.beta": 0.5, "checkpoint.every_steps": 6,
                           "data.gym.num_eval": 16, "eval.num_samples": 1, "logging.plots": False,
                           "train.export_final": False, **overrides})


@pytest.mark.parametrize("loss", ["online_dpo", "xpo"])
def test_online_run_raises_the_labelling_reward(tmp_path, loss):
    config = _config(loss)
    validate(config)
    results = online.run_online(config, str(tmp_path), reward_fn=stub_reward)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert rows[-1]["labels"] == 12 * 32 and results["labels"] == 12 * 32
    for key in ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "objective/scores", "labels/ties",
                "step_time_s", "tokens_per_s", "grad_norm"):
        assert key in rows[-1], key
    assert abs(rows[0]["loss"] - (np.log(2) + (rows[0]["loss/xpo"] if loss == "xpo" else 0.0))) < 1e-4  # policy = reference
    # the random start writes TARGET about 1/19 of the time; the labels push it up
    first = np.mean([r["objective/scores"] for r in rows[:3]])
    last = np.mean([r["objective/scores"] for r in rows[-3:]])
    assert last > first + 0.4, (first, last)  # measured: 0.10 → 0.97 (online_dpo), 0.05 → 0.76 (xpo)
    assert sorted(os.listdir(tmp_path / "checkpoints" / "train")) == ["12", "6"]
    assert json.loads((tmp_path / "results.json").read_text())["loss"] == loss
    if loss == "online_dpo":  # a finished run restarted on its workdir resumes: nothing is trained again
        again = online.run_online(config, str(tmp_path), reward_fn=stub_reward)
        assert again["gold_reward_after"] == results["gold_reward_after"]
        assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 12


@pytest.mark.parametrize("overrides, key", [
    ({"task": "eval"}, "loss.name"),
    ({"data.format": "paired"}, "data.format"),
    ({"likelihood.kind": "diffusion"}, "likelihood.kind"),
    ({"model.family": "llada"}, "likelihood.kind"),
    ({"reference.mode": "precomputed"}, "reference.mode"),
    ({"data.packing": True}, "data.packing"),
    ({"train.grad_accum_steps": 2}, "train.grad_accum_steps"),
    ({"online.temperature": 0.0}, "online.temperature"),
    ({"online.reward": "judge"}, "online.reward"),
])
def test_online_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        validate(_config(**overrides))
    assert e.value.key == key
    assert str(e.value).startswith(f"config key {key}:")


def test_xpo_alpha_is_a_loss_key():
    config = _config("xpo", **{"loss.alpha": 0.1})
    validate(config)
    with pytest.raises(ConfigError, match="loss.alpha"):
        validate(_config("online_dpo", **{"loss.alpha": 0.1}))


def test_train_task_routes_online_losses(monkeypatch, tmp_path, capsys):
    from pojax import main
    from pojax.train import run

    calls = []
    monkeypatch.setattr(online, "run_online", lambda config, workdir: calls.append(("online", workdir)) or {"ran": 1})
    monkeypatch.setattr(run, "run_train", lambda config, workdir: calls.append(("offline", workdir)) or {"ran": 1})
    main.TASK_RUNNERS["train"](_config("xpo"), str(tmp_path))
    main.TASK_RUNNERS["train"](_config("sigmoid"), str(tmp_path))
    assert calls == [("online", str(tmp_path)), ("offline", str(tmp_path))]
