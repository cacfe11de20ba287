"""DiffPO training trajectories on the gold-reward gym (pojax.data.gym).

DiffPO (arXiv 2503.04240) trains its aligner on trajectories y(0) … y(T) of one prompt, ordered
by increasing quality, whose best member y(T) is the target of every state. On the gym they come
from several base policies of different quality: each writes one response per prompt, the
responses are sorted by gold reward (ties keep the policies' listed order), and the top one is
the target. ``order="shuffled"`` keeps the responses but in random order (the control that
should remove most of the gain: the "target" is then no better than the states on average).

Base policies are named here so a recipe can pick training and held-out ones by name:
  ``skill_<p>``   the gym's base sampler at skill p (the rule's token with probability p, else
                  a uniformly random symbol), e.g. ``skill_0.3``;
  ``shift_<p>``   a systematically wrong policy: the rule shifted by one more symbol
                  (y_i = x_i + 2) with probability p, else the rule's token;
  ``copy``        echoes the prompt symbols (gold reward ≈ 0).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from pojax.data.gym import N_SPECIAL, Gym

RULES = ("successor", "chain")


@dataclasses.dataclass(frozen=True)
class ChainGym(Gym):
    """The gym with a rule in which each response token depends on the previous one.

    Ideal response: y_0 = x_0 + 1, y_j = y_{j-1} + 1 (mod S): a count up from the first prompt
    symbol. The gold reward is still the fraction of positions equal to the ideal. The base
    policy writes its response left to right like an autoregressive model: the rule's next token
    (from its *own* previous token) with probability ``skill``, else a random symbol, so one
    mistake shifts the rest of the count. Unlike the successor gym, a model of these responses
    reads the previous response token, so a Jacobi step moves each slot from its left neighbour
    and the step budget k matters; a consistency-trained aligner can learn to ignore a wrong
    neighbour (predicting y(T)_j from a noisy y(t)_{<j}), which is what ω buys at small k.
    """

    def ideal(self, prompts: np.ndarray) -> np.ndarray:
        first = prompts[:, :1] - N_SPECIAL + 1
        return N_SPECIAL + (first + np.arange(self.response_len)[None, :]) % self.num_symbols

    def base_responses(self, rng: np.random.Generator, prompts: np.ndarray, skill: float | None = None) -> np.ndarray:
        skill = self.base_skill if skill is None else skill
        n, s = prompts.shape[0], self.num_symbols
        out = np.zeros((n, self.response_len), np.int64)
        prev = prompts[:, 0] - N_SPECIAL  # so that the rule's first token is x_0 + 1
        for j in range(self.response_len):
            follow = rng.random(n) < skill
            sym = np.where(follow, (prev + 1) % s, rng.integers(0, s, n))
            out[:, j] = N_SPECIAL + sym
            prev = sym
        return out


def make_gym(gym: Gym, rule: str) -> Gym:
    """The gym of ``rule``: "successor" (pojax.data.gym as is) or "chain" (``ChainGym``)."""
    if rule not in RULES:
        raise ValueError(f"diffpo: unknown gym rule {rule!r}; use {' or '.join(RULES)}")
    return gym if rule == "successor" else ChainGym(**dataclasses.asdict(gym))


def check_policy_name(name: str) -> None:
    """ValueError unless ``name`` is a known base policy (see the module docstring)."""
    for prefix in ("skill_", "shift_"):
        if name.startswith(prefix):
            try:
                p = float(name[len(prefix):])
            except ValueError:
                break
            if 0.0 <= p <= 1.0:
                return
            break
    else:
        if name == "copy":
            return
    raise ValueError(f"diffpo: unknown base policy {name!r}; use skill_<p>, shift_<p> (0 <= p <= 1) or copy")


def policy_responses(gym: Gym, name: str, rng: np.random.Generator, prompts: np.ndarray) -> np.ndarray:
    """[n, response_len] responses of the named base policy (see the module docstring)."""
    check_policy_name(name)
    if name == "copy":
        return prompts[:, :gym.response_len].copy()
    p = float(name.split("_", 1)[1])
    if name.startswith("skill_"):
        return gym.base_responses(rng, prompts, skill=p)
    ideal = gym.ideal(prompts)
    shifted = N_SPECIAL + (ideal - N_SPECIAL + 1) % gym.num_symbols
    return np.where(rng.random(ideal.shape) < p, shifted, ideal)


def gym_trajectories(gym: Gym, seed: int, n: int, policies: tuple, *, order: str = "reward") -> dict:
    """One trajectory per prompt from ``policies`` (one response each), ordered by gold reward.

    Args:
      gym: the task.
      seed: numpy seed of prompts and responses.
      n: number of prompts.
      policies: K ≥ 2 base policy names; trajectory length T + 1 = K.
      order: "reward" (ascending gold reward, y(T) the best) or "shuffled" (random order: the
        control).

    Returns:
      {"prompts": [n, P] int, "responses": [n, K, N] int (y(0) … y(T)),
       "rewards": [n, K] float gold rewards in the same order}.
    """
    if len(policies) < 2:
        raise ValueError(f"diffpo: a trajectory needs at least 2 base policies, got {list(policies)}")
    if order not in ("reward", "shuffled"):
        raise ValueError(f"diffpo: unknown trajectory order {order!r}; use 'reward' or 'shuffled'")
    rng = np.random.default_rng(seed)
    prompts = gym.prompts(rng, n)
    ys = np.stack([policy_responses(gym, p, rng, prompts) for p in policies], axis=1)  # [n, K, N]
    rewards = np.stack([gym.gold_reward(prompts, ys[:, k]) for k in range(len(policies))], axis=1)
    if order == "reward":
        perm = np.argsort(rewards, axis=1, kind="stable")
    else:
        perm = np.argsort(rng.random(rewards.shape), axis=1)
    ys = np.take_along_axis(ys, perm[:, :, None], axis=1)
    rewards = np.take_along_axis(rewards, perm, axis=1)
    return {"prompts": prompts, "responses": ys, "rewards": rewards}


def training_rows(gym: Gym, traj: dict) -> dict:
    """Batch-ready arrays of the trajectories for ``pojax.train.diffpo``'s objective.

    Returns:
      {"target_ids": [n, L] int32 (BOS, prompt, SEP, y(T)),
       "state_ids": [n, T, L] int32 the rows of y(0) … y(T-1),
       "response_mask": [n, L] bool, True on response tokens}.
    """
    prompts, ys = traj["prompts"], traj["responses"]
    target_ids, mask = gym.sequence(prompts, ys[:, -1])
    states = np.stack([gym.sequence(prompts, ys[:, k])[0] for k in range(ys.shape[1] - 1)], axis=1)
    return {"target_ids": target_ids, "state_ids": states, "response_mask": mask}
