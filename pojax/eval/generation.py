"""Text in, text out: prompts (strings or message lists) → completions, with the tokenizer's chat
template, in fixed-shape batches so that few programs compile.

The sampler follows the model: a causal LM decodes with the KV-cache sampler
(pojax.sampling.autoregressive); a masked-diffusion LM (LLaDA, Dream: ``config.model_type`` "llada" / "dream")
runs LLaDA's reverse process (pojax.sampling.diffusion) over ``max_new_tokens`` mask tokens with
the ``DiffusionSampling`` settings (steps, semi-autoregressive block length, classifier-free
guidance, remasking). Both see left-padded prompts, padding hidden from attention; the diffusion
model's positions run 0..T-1 over the padding, as LLaDA's generate.py (so a row's tokens may
depend on how wide its batch was padded, unlike the causal sampler's).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pojax.data import tokenize
from pojax.models.config import DIFFUSION_MODEL_TYPES
from pojax.sampling import diffusion
from pojax.sampling.autoregressive import completion_lengths, generate, left_pad

# End-of-turn tokens of chat templates: generation stops at the first of these or at EOS.
END_OF_TURN_TOKENS = ("<|eot_id|>",)  # LLaDA-8B-Instruct, Llama 3


@dataclasses.dataclass(frozen=True)
class DiffusionSampling:
    """Reverse-process settings of a masked-diffusion LM (pojax.sampling.diffusion.generate).

    Attributes:
      steps: denoising steps over the whole generation; 0 = one per generated token.
      block_length: tokens per semi-autoregressive block; 0 = the whole generation (one block).
      cfg_scale: classifier-free guidance weight w ≥ 0 (0 = off).
      remasking: "low_confidence" | "random".
    """

    steps: int = 0
    block_length: int = 0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"

    def resolved(self, gen_length: int) -> tuple[int, int]:
        """(steps, block_length) for ``gen_length`` tokens, 0s replaced (the sampler checks that
        they divide)."""
        return self.steps or gen_length, self.block_length or gen_length


def diffusion_mask_id(model) -> int | None:
    """The [MASK] id of a masked-diffusion LM (LLaDA, Dream), None for a causal LM."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in DIFFUSION_MODEL_TYPES:
        return None
    return int(config.mask_token_id)


def stop_token_ids(tokenizer) -> tuple[int, ...]:
    """EOS and the chat template's end-of-turn token (END_OF_TURN_TOKENS) when the vocabulary
    has one."""
    stops = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    vocab = tokenizer.get_vocab()
    stops += [int(vocab[t]) for t in END_OF_TURN_TOKENS if t in vocab and vocab[t] not in stops]
    return tuple(stops)


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


def padded_batch(prompt_ids: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids [B, W] left-padded with ``pad_id`` to the bucket width W, lengths [B])."""
    ids, lengths = left_pad(prompt_ids, pad_id)
    width = bucket(ids.shape[1])
    ids = np.concatenate([np.full((len(ids), width - ids.shape[1]), pad_id, np.int32), ids], axis=1)
    return ids, lengths


def generate_ids(model, prompt_ids: list[list[int]], *, max_new_tokens: int, batch_size: int = 16,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, stop_tokens: tuple = (),
                 pad_id: int = 0, seed: int = 0, max_prompt_length: int | None = None,
                 diffusion_sampling: DiffusionSampling | None = None) -> list[list[int]]:
    """Completions (token ids up to and including the first stop token) of every prompt, by the
    KV-cache sampler or, for a masked-diffusion LM, by LLaDA's reverse process generating
    ``max_new_tokens`` tokens with ``diffusion_sampling`` (default: one step per token, one
    block). Batches of ``batch_size`` rows (the last one filled with copies), prompts
    left-padded to a power-of-two width."""
    mask_id = diffusion_mask_id(model)
    if mask_id is not None:
        sampling = diffusion_sampling or DiffusionSampling()
        steps, block = sampling.resolved(max_new_tokens)
        if top_k or top_p < 1.0:
            raise ValueError("top_k / top_p: the diffusion sampler has no truncated sampling (set top_k=0, top_p=1)")
        if pad_id == mask_id:
            raise ValueError(f"pad_id must differ from the [MASK] id {mask_id}: padding would be generated over")
    out = []
    for start in range(0, len(prompt_ids), batch_size):
        chunk = [p[-max_prompt_length:] if max_prompt_length else p for p in prompt_ids[start:start + batch_size]]
        n = len(chunk)
        chunk = chunk + [chunk[-1]] * (batch_size - n)  # a static batch shape
        ids, lengths = padded_batch(chunk, pad_id)
        key = jax.random.key(seed + start)
        if mask_id is None:
            tokens = generate(model, jnp.asarray(ids), key, max_new_tokens=max_new_tokens, temperature=temperature,
                              top_k=top_k, top_p=top_p, prompt_lengths=lengths, stop_tokens=tuple(stop_tokens),
                              pad_id=pad_id)
        else:
            # the mask from the lengths, not from pad_id: a prompt may begin with the pad token
            attention = np.arange(ids.shape[1])[None, :] >= (ids.shape[1] - lengths)[:, None]
            tokens = diffusion.generate(model, jnp.asarray(ids), key, gen_length=max_new_tokens, steps=steps,
                                        block_length=block, temperature=temperature, cfg_scale=sampling.cfg_scale,
                                        remasking=sampling.remasking, mask_id=mask_id,
                                        attention_mask=jnp.asarray(attention))
        tokens = np.asarray(tokens)[:n]
        for row, length in zip(tokens, completion_lengths(tokens, tuple(stop_tokens))):
            out.append(row[:length].tolist())
    return out


def generate_texts(model, tokenizer, prompts: list, *, max_new_tokens: int, chat_template: str = "auto",
                   **kw) -> tuple[list[str], list[int]]:
    """(completion texts without the stop token, their lengths in tokens). ``kw`` go to
    generate_ids (batch_size, temperature, seed, diffusion_sampling, ...)."""
    return decode_completions(tokenizer, generate_ids(
        model, prompt_token_ids(tokenizer, prompts, chat_template=chat_template), max_new_tokens=max_new_tokens,
        stop_tokens=stop_token_ids(tokenizer), pad_id=pad_token_id(tokenizer, model), **kw))


def pad_token_id(tokenizer, model=None) -> int:
    """The tokenizer's pad token (else EOS, else 0); never a diffusion model's [MASK] id."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    if model is not None and pad == diffusion_mask_id(model):
        pad = tokenizer.eos_token_id or 0
    return int(pad)


def decode_completions(tokenizer, ids: list[list[int]]) -> tuple[list[str], list[int]]:
    """(texts without stop tokens and special tokens, lengths in tokens) of generate_ids' rows."""
    stops = stop_token_ids(tokenizer)
    texts = [tokenizer.decode([t for t in row if t not in stops], skip_special_tokens=True) for row in ids]
    return texts, [len(row) for row in ids]


def next_token_logits(model, tokenizer, texts: list[str], *, batch_size: int = 8) -> np.ndarray:
    """Logits [N, V] float32 of the token after each text (right-padded batches; causal
    attention never looks at the padding). Causal LMs only: a masked-diffusion LM's logits are
    not a next-token distribution (ValueError)."""
    if diffusion_mask_id(model) is not None:
        raise ValueError("next-token logits: a masked-diffusion LM (llada) has no next-token distribution; "
                         "score it by generation (pojax.eval.generation.generate_ids)")
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
