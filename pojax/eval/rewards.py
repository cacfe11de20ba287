"""Reward-model win rates: the policy's and the reference's responses to the same prompts scored
by a sequence-classification reward model (pojax.models.reward); the policy wins a prompt when
its response scores higher (ties ½), and pojax.eval.win_rates gives the rate, its bootstrap
interval and the length-controlled rate, reported under ``rm_`` names."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from pojax.data import tokenize
from pojax.eval.generation import bucket
from pojax.eval.win_rates import win_rates
from pojax.models.reward import reward_scores


def conversation_ids(tokenizer, prompt, completion: str, *, chat_template: str = "auto") -> list[int]:
    """Token ids of prompt + completion as the reward model reads them: through its tokenizer's
    chat template (the prompt's turns, then an assistant turn) when it has one, else the plain
    prompt text followed by the completion and EOS (pojax.data.tokenize's plain format)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if tokenize.use_chat_template(tokenizer, chat_template):
        text = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": completion}], tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    row = {"prompt": messages, "prompt_text": prompt if isinstance(prompt, str) else None}
    return tokenize.prompt_ids(tokenizer, row, False) + tokenize.completion_ids(tokenizer, completion)


def score_completions(rm, tokenizer, prompts: list, completions: list[str], *, batch_size: int = 8,
                      chat_template: str = "auto") -> np.ndarray:
    """Reward [N] float32 of each (prompt, completion), in right-padded fixed-size batches
    (sequences longer than the model's max_position_embeddings keep their end)."""
    if len(prompts) != len(completions):
        raise ValueError(f"score_completions: {len(prompts)} prompts but {len(completions)} completions")
    limit = rm.config.max_position_embeddings
    rows = [conversation_ids(tokenizer, p, c, chat_template=chat_template)[-limit:] for p, c in zip(prompts, completions)]
    pad = rm.pad_token_id
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        n = len(chunk)
        chunk = chunk + [chunk[-1]] * (batch_size - n)  # a static batch shape
        lengths = np.asarray([len(r) for r in chunk], np.int32)
        ids = np.full((batch_size, min(bucket(lengths.max()), limit)), 0 if pad is None else pad, np.int32)
        for i, r in enumerate(chunk):
            ids[i, :len(r)] = r
        # with a pad id, transformers' last-non-pad rule (what the model was trained with);
        # without one, each row's own last token
        scores = reward_scores(rm, jnp.asarray(ids), None if pad is not None else jnp.asarray(lengths))
        out.append(np.asarray(scores, np.float32)[:n])
    return np.concatenate(out)


def reward_preferences(scores_a, scores_b) -> np.ndarray:
    """[N]: 1 where a scores higher, 0 where b does, 0.5 on ties."""
    a, b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    return np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5))


def reward_win_rates(rm, tokenizer, prompts: list, policy_outputs: list[str], ref_outputs: list[str], policy_lengths,
                     ref_lengths, *, batch_size: int = 8, seed: int = 0) -> dict:
    """{rm_win_rate, rm_win_rate_ci, rm_lc_win_rate, rm_num_comparisons} of the policy against the
    reference under the reward model, and rm_reward_policy / rm_reward_ref (mean scores)."""
    r_policy = score_completions(rm, tokenizer, prompts, policy_outputs, batch_size=batch_size)
    r_ref = score_completions(rm, tokenizer, prompts, ref_outputs, batch_size=batch_size)
    rates = win_rates(reward_preferences(r_policy, r_ref), policy_lengths, ref_lengths, seed=seed)
    out = {f"rm_{k}": v for k, v in rates.items()}
    out.update(rm_reward_policy=float(r_policy.mean()), rm_reward_ref=float(r_ref.mean()))
    return out
