"""Text in, text out: prompts (strings or message lists) → completions, with the tokenizer's chat
template and the KV-cache sampler, in fixed-shape batches so that few programs compile."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pojax.data import tokenize
from pojax.sampling.autoregressive import completion_lengths, generate, left_pad


def bucket(n: int, minimum: int = 8) -> int:
    """The next power of two ≥ n (prompt widths are padded to it: one compile per bucket)."""
    return max(minimum, 1 << (int(n) - 1).bit_length())


def prompt_token_ids(tokenizer, prompts: list, *, chat_template: str = "auto") -> list[list[int]]:
    """Token ids of each prompt: a string (one user turn) or a list of {role, content} messages,
    through the chat template when the tokenizer has one (tokenize.use_chat_template)."""
    chat = tokenize.use_chat_template(tokenizer, chat_template)
    rows = []
    for p in prompts:
        row = {"prompt": [{"role": "user", "content": p}], "prompt_text": p} if isinstance(p, str) else {"prompt": p}
        rows.append(tokenize.prompt_ids(tokenizer, row, chat))
    return rows


def generate_ids(model, prompt_ids: list[list[int]], *, max_new_tokens: int, batch_size: int = 16,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, stop_tokens: tuple = (),
                 pad_id: int = 0, seed: int = 0, max_prompt_length: int | None = None) -> list[list[int]]:
    """Completions (token ids up to and including the first stop token) of every prompt."""
    out = []
    for start in range(0, len(prompt_ids), batch_size):
        chunk = [p[-max_prompt_length:] if max_prompt_length else p for p in prompt_ids[start:start + batch_size]]
        n = len(chunk)
        chunk = chunk + [chunk[-1]] * (batch_size - n)  # a static batch shape
        ids, lengths = left_pad(chunk, pad_id)
        width = bucket(ids.shape[1])
        ids = np.concatenate([np.full((batch_size, width - ids.shape[1]), pad_id, np.int32), ids], axis=1)
        tokens = np.asarray(generate(model, jnp.asarray(ids), jax.random.key(seed + start), max_new_tokens=max_new_tokens,
                                     temperature=temperature, top_k=top_k, top_p=top_p, prompt_lengths=lengths,
                                     stop_tokens=tuple(stop_tokens), pad_id=pad_id))[:n]
        for row, length in zip(tokens, completion_lengths(tokens, tuple(stop_tokens))):
            out.append(row[:length].tolist())
    return out


def generate_texts(model, tokenizer, prompts: list, *, max_new_tokens: int, chat_template: str = "auto",
                   **kw) -> tuple[list[str], list[int]]:
    """(completion texts without the stop token, their lengths in tokens)."""
    stops = (tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids = generate_ids(model, prompt_token_ids(tokenizer, prompts, chat_template=chat_template),
                       max_new_tokens=max_new_tokens, stop_tokens=stops, pad_id=pad, **kw)
    texts = [tokenizer.decode([t for t in row if t not in stops], skip_special_tokens=True) for row in ids]
    return texts, [len(row) for row in ids]


def next_token_logits(model, tokenizer, texts: list[str], *, batch_size: int = 8) -> np.ndarray:
    """Logits [N, V] float32 of the token after each text (right-padded batches; causal
    attention never looks at the padding)."""
    out = []
    pad = tokenizer.pad_token_id or 0
    for start in range(0, len(texts), batch_size):
        ids = [tokenizer(t)["input_ids"] for t in texts[start:start + batch_size]]
        batch = np.full((len(ids), bucket(max(map(len, ids)))), pad, np.int32)
        for i, row in enumerate(ids):
            batch[i, :len(row)] = row
        logits = np.asarray(model(jnp.asarray(batch)), np.float32)
        out.extend(logits[i, len(row) - 1] for i, row in enumerate(ids))
    return np.stack(out)
