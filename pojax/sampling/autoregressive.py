"""Batched autoregressive sampling with the model's KV cache (fixed shapes, jit-compiled)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def _sample(logits_BV, key, temperature: float):
    if temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits_BV / temperature, axis=-1).astype(jnp.int32)


@functools.partial(nnx.jit, static_argnames=("max_new_tokens", "temperature"))
def generate(model, prompts_BP, key, *, max_new_tokens: int, temperature: float = 1.0):
    """Continues equal-length prompts [B, P] by ``max_new_tokens`` tokens: [B, max_new_tokens].

    temperature 0 is greedy. Prefills the prompt in one call, then decodes one token at a
    time in a ``lax.fori_loop`` over the KV cache.
    """
    b, p = prompts_BP.shape
    cache = model.init_cache(b, p + max_new_tokens)
    pos = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    logits, cache = model.decode(prompts_BP, pos, cache)
    keys = jax.random.split(key, max_new_tokens)
    first = _sample(logits[:, -1], keys[0], temperature)
    out = jnp.zeros((b, max_new_tokens), jnp.int32).at[:, 0].set(first)

    def body(i, carry):
        out, cache = carry
        tok = jax.lax.dynamic_slice_in_dim(out, i - 1, 1, axis=1)
        logits, cache = model.decode(tok, jnp.full((b, 1), p + i - 1, jnp.int32), cache)
        nxt = _sample(logits[:, -1], keys[i], temperature)
        return out.at[:, i].set(nxt), cache

    out, _ = jax.lax.fori_loop(1, max_new_tokens, body, (out, cache))
    return out
