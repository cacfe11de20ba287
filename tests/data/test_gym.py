"""The gym's gold reward, base policy and preference sets behave as documented."""
import numpy as np

from pojax.data.gym import BOS, N_SPECIAL, SEP, Gym


def test_ideal_response_scores_one_and_random_about_one_over_s():
    gym = Gym()
    rng = np.random.default_rng(0)
    p = gym.prompts(rng, 2000)
    assert np.all(gym.gold_reward(p, gym.ideal(p)) == 1.0)
    random = N_SPECIAL + rng.integers(0, gym.num_symbols, (2000, gym.response_len))
    assert abs(gym.gold_reward(p, random).mean() - 1 / gym.num_symbols) < 0.01
    base = gym.base_responses(rng, p)
    want = gym.base_skill + (1 - gym.base_skill) / gym.num_symbols
    assert abs(gym.gold_reward(p, base).mean() - want) < 0.01


def test_hand_example():
    gym = Gym(num_symbols=4, prompt_len=3, response_len=3)
    p = np.array([[N_SPECIAL + 0, N_SPECIAL + 3, N_SPECIAL + 1]])
    y = np.array([[N_SPECIAL + 1, N_SPECIAL + 0, N_SPECIAL + 3]])  # 1 ✓, 0 ✓ (3+1 mod 4), 3 ✗ (want 2)
    np.testing.assert_allclose(gym.gold_reward(p, y), [2 / 3])
    ids, mask = gym.sequence(p, y)
    assert ids[0, 0] == BOS and ids[0, 4] == SEP and list(mask[0]) == [False] * 5 + [True] * 3


def test_paired_labels_follow_the_gold_reward_up_to_noise():
    gym = Gym()
    clean = gym.paired_set(0, 4000)
    assert np.all(clean["chosen_reward"] >= clean["rejected_reward"])
    noisy = gym.paired_set(0, 4000, noise=0.2)
    wrong = np.mean(noisy["chosen_reward"] < noisy["rejected_reward"])
    assert 0.1 < wrong < 0.2  # flipped labels show where the rewards differ


def test_unpaired_and_ranked_sets():
    gym = Gym()
    u = gym.unpaired_set(1, 3000)
    assert u["input_ids"].shape[0] == 6000 and u["label"].mean() == 0.5
    assert u["reward"][u["label"]].mean() > u["reward"][~u["label"]].mean()
    r = gym.ranked_set(2, 10, k=3)
    assert r["input_ids"].shape == (10, 3, gym.seq_len) and r["scores"].shape == (10, 3)
    np.testing.assert_allclose(r["scores"][:, 1], gym.gold_reward(r["prompts"], r["input_ids"][:, 1, -gym.response_len:]))
