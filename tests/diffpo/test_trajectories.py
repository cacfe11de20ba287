"""Gym trajectories: ordered by gold reward, target = best, policies of differing quality."""
import numpy as np
import pytest

from pojax.data.gym import Gym
from pojax.diffpo.trajectories import (
    check_policy_name,
    gym_trajectories,
    policy_responses,
    training_rows,
)

GYM = Gym()
POLICIES = ("skill_0.1", "skill_0.4", "skill_0.7", "shift_0.5")


def test_trajectories_are_sorted_and_the_target_is_the_best():
    traj = gym_trajectories(GYM, 0, 200, POLICIES)
    assert traj["responses"].shape == (200, 4, GYM.response_len)
    r = traj["rewards"]
    assert np.all(np.diff(r, axis=1) >= 0)
    np.testing.assert_allclose(r[:, -1], r.max(1))
    for k in range(4):  # the stored rewards are the responses' gold rewards
        np.testing.assert_allclose(r[:, k], GYM.gold_reward(traj["prompts"], traj["responses"][:, k]))
    rows = training_rows(GYM, traj)
    assert rows["target_ids"].shape == (200, GYM.seq_len)
    assert rows["state_ids"].shape == (200, 3, GYM.seq_len)
    np.testing.assert_array_equal(rows["target_ids"][:, -GYM.response_len:], traj["responses"][:, -1])
    assert rows["response_mask"].sum(1).tolist() == [GYM.response_len] * 200


def test_shuffled_trajectories_keep_the_responses_but_not_the_order():
    a = gym_trajectories(GYM, 0, 200, POLICIES)
    b = gym_trajectories(GYM, 0, 200, POLICIES, order="shuffled")
    np.testing.assert_allclose(np.sort(a["rewards"], 1), np.sort(b["rewards"], 1))
    assert b["rewards"][:, -1].mean() < a["rewards"][:, -1].mean() - 0.1


def test_policies_differ_in_quality():
    rng = np.random.default_rng(0)
    p = GYM.prompts(rng, 2000)
    means = {n: GYM.gold_reward(p, policy_responses(GYM, n, rng, p)).mean()
             for n in ("copy", "skill_0.2", "shift_0.5", "skill_0.8", "skill_1.0")}
    assert means["copy"] < 0.05 and means["skill_1.0"] == 1.0
    assert means["skill_0.2"] < means["shift_0.5"] < means["skill_0.8"]


@pytest.mark.parametrize("bad", ["skill_x", "skill_1.5", "greedy", "shift_"])
def test_unknown_policy_names_raise(bad):
    with pytest.raises(ValueError, match=f"unknown base policy '{bad}'"):
        check_policy_name(bad)
    with pytest.raises(ValueError, match="at least 2 base policies"):
        gym_trajectories(GYM, 0, 4, ("skill_0.5",))


def test_chain_gym_counts_up_and_its_policy_propagates_mistakes():
    from pojax.diffpo.trajectories import ChainGym, make_gym

    gym = make_gym(GYM, "chain")
    assert isinstance(gym, ChainGym) and gym.response_len == GYM.response_len
    rng = np.random.default_rng(0)
    p = gym.prompts(rng, 500)
    ideal = gym.ideal(p)
    np.testing.assert_array_equal(ideal[:, 0], 3 + (p[:, 0] - 3 + 1) % 16)
    np.testing.assert_array_equal((ideal[:, 1:] - ideal[:, :-1]) % 16, 1)
    np.testing.assert_array_equal(gym.base_responses(rng, p, skill=1.0), ideal)
    y = gym.base_responses(rng, p, skill=0.8)
    follows = (y[:, 1:] - y[:, :-1]) % 16 == 1  # the policy's own previous token + 1
    assert 0.75 < follows.mean() < 0.9
    assert gym.gold_reward(p, y).mean() < 0.6  # one mistake shifts the rest of the count
    with pytest.raises(ValueError, match="unknown gym rule 'xor'"):
        make_gym(GYM, "xor")
