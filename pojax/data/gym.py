"""The gold-reward gym: a synthetic preference task with a known reward, no download needed.

A prompt is ``PROMPT_LEN`` random symbols x_1..x_n; a response is ``RESPONSE_LEN`` symbols. The
hidden rule: the ideal response is the successor of each prompt symbol, y_i = (x_i + 1) mod S.
The gold reward of a response is the fraction of positions that follow the rule, in [0, 1].

A "base policy" writes the rule's token with probability ``base_skill`` and a uniformly random
symbol otherwise. From it the gym builds an SFT set (base-policy responses: a tiny model that
imitates them reaches roughly the base policy's gold reward), and preference sets ranked by the
gold reward: paired (chosen = the better of two base responses), unpaired (desirable = above the
base policy's mean), ranked (K responses with their rewards), each with a label-noise rate.
Preference optimization must then raise the gold reward above the SFT policy's; a wrong loss sign
lowers it, and a broken reference shows as a loss that does not start at the expected value.

Token ids: 0 = PAD, 1 = BOS, 2 = SEP (between prompt and response), then the S symbols.
"""
from __future__ import annotations

import dataclasses

import numpy as np

PAD, BOS, SEP = 0, 1, 2
N_SPECIAL = 3


@dataclasses.dataclass(frozen=True)
class Gym:
    """Sizes of the task; ``vocab_size`` is what a model needs."""

    num_symbols: int = 16
    prompt_len: int = 6
    response_len: int = 6
    base_skill: float = 0.35

    @property
    def vocab_size(self) -> int:
        return N_SPECIAL + self.num_symbols

    @property
    def seq_len(self) -> int:
        """BOS + prompt + SEP + response."""
        return 2 + self.prompt_len + self.response_len

    def prompts(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """[n, prompt_len] symbol ids (offset by the special tokens)."""
        return N_SPECIAL + rng.integers(0, self.num_symbols, (n, self.prompt_len))

    def ideal(self, prompts: np.ndarray) -> np.ndarray:
        """[n, response_len] the response the hidden rule wants."""
        sym = prompts[:, : self.response_len] - N_SPECIAL
        return N_SPECIAL + (sym + 1) % self.num_symbols

    def gold_reward(self, prompts: np.ndarray, responses: np.ndarray) -> np.ndarray:
        """[n] fraction of response positions that follow the rule."""
        return np.mean(np.asarray(responses) == self.ideal(prompts), axis=-1)

    def base_responses(self, rng: np.random.Generator, prompts: np.ndarray, skill: float | None = None) -> np.ndarray:
        """[n, response_len] responses of the base policy."""
        skill = self.base_skill if skill is None else skill
        n = prompts.shape[0]
        random = N_SPECIAL + rng.integers(0, self.num_symbols, (n, self.response_len))
        return np.where(rng.random((n, self.response_len)) < skill, self.ideal(prompts), random)

    def sequence(self, prompts: np.ndarray, responses: np.ndarray):
        """Token rows [n, seq_len] and their completion masks [n, seq_len] (True on responses)."""
        n = prompts.shape[0]
        ids = np.concatenate([np.full((n, 1), BOS), prompts, np.full((n, 1), SEP), responses], axis=1)
        mask = np.zeros_like(ids, dtype=bool)
        mask[:, 2 + self.prompt_len:] = True
        return ids.astype(np.int32), mask

    # ------------------------------------------------------------------ data sets

    def sft_set(self, seed: int, n: int) -> dict:
        rng = np.random.default_rng(seed)
        p = self.prompts(rng, n)
        ids, mask = self.sequence(p, self.base_responses(rng, p))
        return {"input_ids": ids, "completion_mask": mask, "prompts": p}

    def paired_set(self, seed: int, n: int, noise: float = 0.0) -> dict:
        """Pairs of base responses, chosen = higher gold reward (ties broken at random); a
        fraction ``noise`` of the labels is flipped."""
        rng = np.random.default_rng(seed)
        p = self.prompts(rng, n)
        a, b = self.base_responses(rng, p), self.base_responses(rng, p)
        ra, rb = self.gold_reward(p, a), self.gold_reward(p, b)
        a_wins = (ra > rb) | ((ra == rb) & (rng.random(n) < 0.5))
        a_wins ^= rng.random(n) < noise
        chosen = np.where(a_wins[:, None], a, b)
        rejected = np.where(a_wins[:, None], b, a)
        c_ids, mask = self.sequence(p, chosen)
        r_ids, _ = self.sequence(p, rejected)
        return {"chosen_ids": c_ids, "rejected_ids": r_ids, "completion_mask": mask, "prompts": p,
                "chosen_reward": self.gold_reward(p, chosen), "rejected_reward": self.gold_reward(p, rejected)}

    def unpaired_set(self, seed: int, n: int, noise: float = 0.0) -> dict:
        """The paired set unpaired as TRL's ``unpair_preference_dataset`` does (and as kto-mix
        is built): each chosen response a desirable row, each rejected one undesirable; 2n rows,
        half of each label."""
        d = self.paired_set(seed, n, noise)
        ids = np.concatenate([d["chosen_ids"], d["rejected_ids"]])
        label = np.concatenate([np.ones(n, bool), np.zeros(n, bool)])
        reward = np.concatenate([d["chosen_reward"], d["rejected_reward"]])
        mask = np.concatenate([d["completion_mask"], d["completion_mask"]])
        return {"input_ids": ids, "completion_mask": mask, "label": label,
                "prompts": np.concatenate([d["prompts"], d["prompts"]]), "reward": reward}

    def ranked_set(self, seed: int, n: int, k: int = 4) -> dict:
        """K base responses per prompt with their gold rewards as scores."""
        rng = np.random.default_rng(seed)
        p = self.prompts(rng, n)
        ys = np.stack([self.base_responses(rng, p) for _ in range(k)], axis=1)  # [n, K, R]
        scores = np.stack([self.gold_reward(p, ys[:, j]) for j in range(k)], axis=1)
        ids = np.stack([self.sequence(p, ys[:, j])[0] for j in range(k)], axis=1)
        return {"input_ids": ids, "completion_mask": self.sequence(p, ys[:, 0])[1], "scores": scores, "prompts": p}


def from_config(config) -> Gym:
    g = config.data.gym
    return Gym(num_symbols=g.num_symbols, prompt_len=g.prompt_len, response_len=g.response_len, base_skill=g.base_skill)


def training_rows(gym: Gym, kind: str, seed: int, n: int, noise: float = 0.0, *, scores: bool = False) -> dict:
    """The gym's training set as batch-ready arrays: kind is "sft", "paired", "unpaired" or
    "ranked" (4 responses per prompt scored by the gold reward). ``scores`` adds the gold
    rewards of paired rows as score_chosen / score_rejected [n] float32 (the columns of
    UltraFeedback-style files; madpo's margins and curry_dpo's order read them)."""
    if kind == "sft":
        d = gym.sft_set(seed, n)
        return {"input_ids": d["input_ids"], "completion_mask": d["completion_mask"]}
    if kind == "paired":
        d = gym.paired_set(seed, n, noise)
        rows = {"chosen_ids": d["chosen_ids"], "rejected_ids": d["rejected_ids"],
                "chosen_mask": d["completion_mask"], "rejected_mask": d["completion_mask"]}
        if scores:
            rows["score_chosen"] = d["chosen_reward"].astype(np.float32)
            rows["score_rejected"] = d["rejected_reward"].astype(np.float32)
        return rows
    if kind == "ranked":
        d = gym.ranked_set(seed, n)
        k = d["input_ids"].shape[1]
        mask = np.repeat(d["completion_mask"][:, None], k, axis=1)
        return {"input_ids": d["input_ids"], "completion_mask": mask, "scores": d["scores"].astype(np.float32)}
    d = gym.unpaired_set(seed, n, noise)
    return {"input_ids": d["input_ids"], "completion_mask": d["completion_mask"], "label": d["label"]}
