"""Batched autoregressive sampling with the model's KV cache (fixed shapes, jit-compiled).

Prompts of different lengths are left-padded to one width P: their pad slots get position -1,
which the cache never attends to, and each row's own positions run 0..len-1, so a padded row
decodes exactly as it would alone. Sampling: greedy (temperature 0), or temperature with top-k
and / or top-p (nucleus) filtering. A row that emits a stop token is finished: every later
token is ``pad_id``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def filter_logits(logits_BV, *, top_k: int = 0, top_p: float = 1.0):
    """Logits with everything outside the top-k and outside the smallest set of tokens whose
    probability reaches top_p set to -inf (the most likely token always stays). float32."""
    logits = logits_BV.astype(jnp.float32)
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # probability mass ranked above each token
        drop_sorted = before >= top_p
        drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
        logits = jnp.where(drop, -jnp.inf, logits)
    return logits


def _sample(logits_BV, key, temperature: float, top_k: int, top_p: float):
    if temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits_BV.astype(jnp.float32) / temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def left_pad(prompts: list, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(token ids [B, P] left-padded with ``pad_id``, lengths [B]) of prompts of any lengths."""
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    if not len(prompts) or lengths.min() < 1:
        raise ValueError("left_pad: every prompt needs at least one token")
    out = np.full((len(prompts), int(lengths.max())), pad_id, np.int32)
    for i, p in enumerate(prompts):
        out[i, out.shape[1] - len(p):] = p
    return out, lengths


@functools.partial(nnx.jit, static_argnames=("max_new_tokens", "temperature", "top_k", "top_p", "stop_tokens",
                                             "pad_id"))
def generate(model, prompts_BP, key, *, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, prompt_lengths=None, stop_tokens: tuple = (), pad_id: int = 0):
    """Continues prompts [B, P] by ``max_new_tokens`` tokens: [B, max_new_tokens] int32.

    Args:
      prompts_BP: [B, P] int32, left-padded when ``prompt_lengths`` [B] is given (see
        ``left_pad``); without it every row is P tokens long.
      temperature: 0 is greedy; top_k (0 = off) and top_p (1 = off) filter sampled tokens.
      stop_tokens: ids that end a row (kept in the output); later tokens are ``pad_id``.
    Prefills the prompts in one call, then decodes one token at a time in a ``lax.fori_loop``
    over the KV cache.
    """
    b, p = prompts_BP.shape
    lengths = jnp.full((b,), p, jnp.int32) if prompt_lengths is None else jnp.asarray(prompt_lengths, jnp.int32)
    offset = p - lengths  # left padding of each row
    cols = jnp.arange(p, dtype=jnp.int32)[None, :]
    pos = jnp.where(cols >= offset[:, None], cols - offset[:, None], -1)
    cache = model.init_cache(b, p + max_new_tokens)
    logits, cache = model.decode(prompts_BP, pos, cache)
    keys = jax.random.split(key, max_new_tokens)
    stops = jnp.asarray(stop_tokens if stop_tokens else (-1,), jnp.int32)
    first = _sample(logits[:, -1], keys[0], temperature, top_k, top_p)
    out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    done = jnp.isin(first, stops)

    def body(i, carry):
        out, cache, done = carry
        tok = jax.lax.dynamic_slice_in_dim(out, i - 1, 1, axis=1)
        logits, cache = model.decode(tok, (lengths + i - 1)[:, None], cache)
        nxt = _sample(logits[:, -1], keys[i], temperature, top_k, top_p)
        nxt = jnp.where(done, pad_id, nxt)
        return out.at[:, i].set(nxt), cache, done | jnp.isin(nxt, stops)

    out, _, _ = jax.lax.fori_loop(1, max_new_tokens, body, (out, cache, done))
    return out


def completion_lengths(tokens_BN, stop_tokens: tuple = ()) -> np.ndarray:
    """Tokens of each generated row up to and including its first stop token (all N without
    one): [B] int."""
    tokens = np.asarray(tokens_BN)
    is_stop = np.isin(tokens, np.asarray(stop_tokens, tokens.dtype)) if stop_tokens else np.zeros(tokens.shape, bool)
    first = np.where(is_stop.any(1), np.argmax(is_stop, 1) + 1, tokens.shape[1])
    return first.astype(np.int64)
