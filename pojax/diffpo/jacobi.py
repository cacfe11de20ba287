r"""Jacobi refinement: DiffPO's sentence-level inference step (arXiv 2503.04240).

A row is ``[fixed tokens | response slots | padding]``: the fixed tokens are the prompt (and an
optional reserved prefix of the base answer), the slots hold the current guess of the response
(initially the base model's response). One Jacobi step runs the aligner once over the whole row
and sets every slot j to the aligner's greedy token at position j − 1, all slots in parallel:

.. math:: y^{(k+1)}_j = \arg\max_v q_\theta(v \mid x, y^{(k)}_{<j})

Sampled updates (``temperature`` τ > 0, a ``key``) draw each slot from softmax(logits / τ) by the
Gumbel-max trick, argmax_v(z_v / τ + g_v), with the noise g fixed per position for the whole
iteration: the update is still a deterministic function of the tokens before the slot, so the
iteration converges like the greedy one, to the aligner's autoregressive *sample* under that noise;
τ → 0 gives the greedy update back. Slots after the first EOS become ``pad_id``. Iteration stops
for a row at a fixed point (y^{(k+1)} = y^{(k)}), and for the batch when every row is fixed or
after ``max_steps`` steps.

With ``prefix_cache`` the fixed tokens (but the last) are run once into a KV cache and each step
runs only [last fixed token | slots]: the same update at a fraction of the cost when the prompt is
long (``jacobi_step_cached``).

For a causal aligner the fixed point is unique: it is the aligner's own greedy decode of the
prompt (after k steps the first k slots already equal it, so N slots converge in at most N steps
plus one step that confirms the fixed point). The initial guess (the base response) therefore
only matters when ``max_steps`` is small; DiffPO's point is that a good aligner moves a base
response close to its aligned answer in a few parallel steps.

Everything is one ``jax.lax.while_loop`` over fixed shapes: one compilation per (B, T).
Slots must be one contiguous block per row, after that row's fixed tokens; padding after the
slots is never attended to by a slot (causal attention), so it may hold anything.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from pojax.likelihood.autoregressive import chunked_map, head_logits, soft_cap_of


@struct.dataclass
class JacobiResult:
    """Output of ``jacobi_refine``.

    Attributes:
      ids: [B, T] int32 rows with the refined slots (fixed tokens and padding unchanged).
      updates: [B] int32 Jacobi steps that changed the row.
      converged: [B] bool, the row reached a fixed point within the step budget.
      forward_passes: [B] int32 aligner forward passes the row needs on its own: its updates plus
        one pass that confirms the fixed point (``updates`` when it ran out of steps).
      iterations: [] int32 steps the batch ran (the slowest row's forward passes).
    """

    ids: jax.Array
    updates: jax.Array
    converged: jax.Array
    forward_passes: jax.Array
    iterations: jax.Array


def _noise(key, rows_BC, pos_BC, v: int):
    """Gumbel noise [B, C, V] float32 at (row, position): a function of (key, row, position) only,
    so every Jacobi step, chunking and the prefix-cache path see the same noise at a position."""
    draw = lambda r, t: jax.random.gumbel(jax.random.fold_in(jax.random.fold_in(key, r), t), (v,), jnp.float32)
    return jax.vmap(jax.vmap(draw))(rows_BC, pos_BC)


def _pick(logits_BCV, pos_BC, key, inv_temperature):
    """argmax over the vocabulary, [B, C] int32; with a key, of logits / τ + Gumbel noise
    (Gumbel-max: a draw from softmax(logits / τ))."""
    if key is not None:
        b, c, v = logits_BCV.shape
        rows_BC = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None], (b, c))
        logits_BCV = logits_BCV * inv_temperature + _noise(key, rows_BC, pos_BC, v)
    return jnp.argmax(logits_BCV, axis=-1).astype(jnp.int32)


def position_noise(key, b: int, t: int, v: int):
    """The [B, T, V] float32 Gumbel noise the sampled update adds at each (row, position) (for
    references and tests; the sampler itself never builds it whole)."""
    rows = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None], (b, t))
    return _noise(key, rows, jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)), v)


def next_tokens(model, ids_BT, *, key=None, temperature=1.0, chunk_size: int = 1024):
    """The aligner's next token at every position, [B, T] int32: argmax_v q(v | ids_{≤t}) when
    ``key`` is None, else a draw from softmax(logits / temperature) by the Gumbel-max trick with
    noise fixed per (key, row, position) (``position_noise``). Logits are built one sequence chunk
    at a time from the hidden states and the head (never [B, T, V] at once).

    Args:
      model: the aligner (``hidden_states``, ``lm_head_weight``).
      ids_BT: [B, T] int32 rows.
      key: PRNG key of the sampled update, or None (greedy).
      temperature: τ > 0 of the sampled update (may be traced).
      chunk_size: C sequence positions per chunk.
    """
    h_BTD = model.hidden_states(ids_BT)
    w_DV = model.lm_head_weight().astype(h_BTD.dtype)
    b, t, _ = h_BTD.shape
    pos_BT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    inv_t = None if key is None else 1.0 / jnp.asarray(temperature, jnp.float32)
    cap = soft_cap_of(model)  # Gemma 2's final-logit cap (it changes sampled updates)

    def chunk(h_BCD, pos_BC):
        return _pick(head_logits(h_BCD, w_DV, cap), pos_BC, key, inv_t)

    return chunked_map(chunk, (h_BTD, pos_BT), chunk_size)


def greedy_next(model, ids_BT, *, chunk_size: int = 1024):
    """argmax_v q(v | ids_{≤t}) at every position: [B, T] int32 (``next_tokens`` without a key)."""
    return next_tokens(model, ids_BT, chunk_size=chunk_size)


def _accept(ids_BT, proposal_BT, slot_mask_BT, eos_id, pad_id):
    """The slots take their proposals; slots after the first EOS become ``pad_id``."""
    new_BT = jnp.where(slot_mask_BT, proposal_BT, ids_BT)
    if eos_id is not None:
        is_eos = slot_mask_BT & (new_BT == eos_id)
        after_eos = (jnp.cumsum(is_eos, axis=1) - is_eos) > 0
        new_BT = jnp.where(slot_mask_BT & after_eos, pad_id, new_BT)
    return new_BT


def jacobi_step(model, ids_BT, slot_mask_BT, *, eos_id: int | None = None, pad_id: int = 0,
                chunk_size: int = 1024, key=None, temperature=1.0):
    """One parallel update: every slot j takes the aligner's token at j − 1 (greedy, or sampled
    with ``key`` / ``temperature``, see ``next_tokens``); slots after the first EOS become
    ``pad_id``. Returns the new [B, T] int32 rows."""
    next_BT = next_tokens(model, ids_BT, key=key, temperature=temperature, chunk_size=chunk_size)
    proposal_BT = jnp.concatenate([ids_BT[:, :1], next_BT[:, :-1]], axis=1)
    return _accept(ids_BT, proposal_BT, slot_mask_BT, eos_id, pad_id)


def _block_layout(slot_mask_BT, n: int):
    """(first slot s [B], block positions [B, N + 1], valid [B, N + 1]): the block is the last
    fixed token then the N slots, at row positions s − 1 … s + N − 1."""
    start_B = jnp.argmax(slot_mask_BT, axis=1).astype(jnp.int32)
    count_B = jnp.sum(slot_mask_BT, axis=1).astype(jnp.int32)
    j = jnp.arange(n + 1, dtype=jnp.int32)
    return start_B, start_B[:, None] - 1 + j[None, :], j[None, :] <= count_B[:, None]


def prefill_prefix(model, ids_BT, slot_mask_BT, n: int):
    """A KV cache of every row's fixed tokens but the last (row positions < first slot − 1), with
    room for a block of N + 1 tokens after them; the cache of the prefix-cached update."""
    b, t = ids_BT.shape
    start_B, _, _ = _block_layout(slot_mask_BT, n)
    pos_BT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    pos_BT = jnp.where(pos_BT < start_B[:, None] - 1, pos_BT, -1)  # -1: never attended to
    cache = model.init_cache(b, t + n + 1)
    _, cache = model.decode(ids_BT, pos_BT, cache)  # its logits are unused (XLA drops them)
    return cache


def jacobi_step_cached(model, cache, ids_BT, slot_mask_BT, n: int, *, eos_id: int | None = None,
                       pad_id: int = 0, key=None, temperature=1.0):
    """``jacobi_step`` with the fixed tokens in a KV cache (``prefill_prefix``): the aligner runs
    only the block [last fixed token | N slots] of each row. The same update: slot j takes the
    token the aligner gives after row position j − 1 (its logits [B, N + 1, V] float32 are built
    whole, unchunked). Returns the new [B, T] int32 rows."""
    b, t = ids_BT.shape
    _, pos_BJ, valid_BJ = _block_layout(slot_mask_BT, n)
    block_BJ = jnp.take_along_axis(ids_BT, jnp.clip(pos_BJ, 0, t - 1), axis=1)
    logits_BJV, _ = model.decode(block_BJ, jnp.where(valid_BJ, pos_BJ, -1), cache)
    inv_t = None if key is None else 1.0 / jnp.asarray(temperature, jnp.float32)
    pick_BJ = _pick(logits_BJV, pos_BJ, key, inv_t)  # token for row position pos + 1
    target_BJ = jnp.where(valid_BJ, pos_BJ + 1, t)  # t: dropped by the scatter
    rows_BJ = jnp.broadcast_to(jnp.arange(b)[:, None], target_BJ.shape)
    proposal_BT = ids_BT.at[rows_BJ, target_BJ].set(pick_BJ, mode="drop")
    return _accept(ids_BT, proposal_BT, slot_mask_BT, eos_id, pad_id)


def jacobi_refine(model, ids_BT, slot_mask_BT, *, max_steps: int | None = None, eos_id: int | None = None,
                  pad_id: int = 0, chunk_size: int = 1024, temperature: float = 0.0, key=None,
                  prefix_cache: bool = False) -> JacobiResult:
    """Jacobi-iterates the response slots of ``ids_BT`` under a causal aligner.

    Args:
      model: the aligner (``hidden_states`` and ``lm_head_weight``, e.g. pojax CausalLM).
      ids_BT: [B, T] int32 rows: fixed tokens, then the initial guess in the slots, then padding.
      slot_mask_BT: [B, T] bool, True on the slots (one contiguous block per row, after its fixed
        tokens); a row without slots is returned unchanged.
      max_steps: the step budget k (a traced value: changing it does not recompile); None runs to
        convergence (at most T steps, which a causal aligner always reaches).
      eos_id: a slot emitting it ends the response: later slots become ``pad_id``. None: no EOS.
      pad_id: the token of slots after an EOS.
      chunk_size: sequence positions per chunk of the argmax's logits.
      temperature: 0 = greedy updates (the default); τ > 0 = sampled updates, each slot drawn from
        softmax(logits / τ) with Gumbel noise fixed per position for the whole iteration, so the
        fixed point is the aligner's autoregressive sample under that noise (it still converges
        in at most N + 1 passes).
      key: PRNG key of the sampled updates (required when temperature > 0; same key, same rows →
        same output).
      prefix_cache: keep the fixed tokens in a KV cache (the aligner needs ``init_cache`` and
        ``decode``, like pojax CausalLM): each step then runs only the last fixed token and the N
        slots instead of the whole row; same result (tested), logits of the block unchunked.

    Returns:
      JacobiResult (ids, updates, converged, forward_passes, iterations).
    """
    t = ids_BT.shape[1]
    cap = t if max_steps is None else int(max_steps)
    if cap < 0:
        raise ValueError(f"diffpo: max_steps must be >= 0 or None, got {max_steps}")
    if not temperature >= 0:
        raise ValueError(f"diffpo: temperature must be >= 0, got {temperature}")
    if temperature > 0 and key is None:
        raise ValueError("diffpo: sampled Jacobi updates (temperature > 0) need a PRNG key")
    # the block width of the cached path: static, from the concrete slot mask
    block = int(np.asarray(slot_mask_BT).sum(axis=1).max(initial=0)) if prefix_cache else None
    return _jacobi_loop(model, jnp.asarray(ids_BT, jnp.int32), jnp.asarray(slot_mask_BT, bool),
                        jnp.asarray(cap, jnp.int32), None if temperature == 0 else key,
                        jnp.asarray(temperature if temperature > 0 else 1.0, jnp.float32),
                        eos_id=eos_id, pad_id=pad_id, chunk_size=chunk_size, block=block)


@functools.partial(nnx.jit, static_argnames=("eos_id", "pad_id", "chunk_size", "block"))
def _jacobi_loop(model, ids_BT, slot_mask_BT, cap, key, temperature, *, eos_id, pad_id,
                 chunk_size, block) -> JacobiResult:
    b = ids_BT.shape[0]
    graphdef, state = nnx.split(model)
    cache = None if block is None else prefill_prefix(model, ids_BT, slot_mask_BT, block)

    def cond(carry):
        _, _, converged, it, _ = carry
        return (it < cap) & ~jnp.all(converged)

    def body(carry):
        ids, updates, converged, it, params = carry
        # the aligner's variables travel in the carry, so they belong to this trace level (nnx.scan
        # of scan_layers refuses variables of the enclosing jit's trace)
        aligner = nnx.merge(graphdef, params)
        if block is None:
            new = jacobi_step(aligner, ids, slot_mask_BT, eos_id=eos_id, pad_id=pad_id, chunk_size=chunk_size,
                              key=key, temperature=temperature)
        else:
            new = jacobi_step_cached(aligner, cache, ids, slot_mask_BT, block, eos_id=eos_id, pad_id=pad_id, key=key,
                                     temperature=temperature)
        changed = jnp.any(new != ids, axis=1)
        # A fixed row stays fixed (its inputs no longer change), so rows never un-converge.
        return new, updates + changed.astype(jnp.int32), converged | ~changed, it + 1, params

    init = (ids_BT, jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool), jnp.zeros((), jnp.int32), state)
    ids, updates, converged, it, _ = jax.lax.while_loop(cond, body, init)
    return JacobiResult(ids=ids, updates=updates, converged=converged,
                        forward_passes=updates + converged.astype(jnp.int32), iterations=it)
