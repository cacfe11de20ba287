r"""Jacobi refinement: DiffPO's sentence-level inference step (arXiv 2503.04240).

A row is ``[fixed tokens | response slots | padding]``: the fixed tokens are the prompt (and an
optional reserved prefix of the base answer), the slots hold the current guess of the response
(initially the base model's response). One Jacobi step runs the aligner once over the whole row
and sets every slot j to the aligner's greedy token at position j − 1, all slots in parallel:

.. math:: y^{(k+1)}_j = \arg\max_v q_\theta(v \mid x, y^{(k)}_{<j})

Slots after the first EOS become ``pad_id``. Iteration stops for a row at a fixed point
(y^{(k+1)} = y^{(k)}), and for the batch when every row is fixed or after ``max_steps`` steps.

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
from flax import nnx, struct


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


def _chunk_argmax(h_BCD, w_DV):
    logits_BCV = jnp.einsum("bcd,dv->bcv", h_BCD, w_DV, preferred_element_type=jnp.float32)
    return jnp.argmax(logits_BCV, axis=-1).astype(jnp.int32)


def greedy_next(model, ids_BT, *, chunk_size: int = 1024):
    """argmax_v q(v | ids_{≤t}) at every position: [B, T] int32, the logits built one sequence
    chunk at a time from the hidden states and the head (never [B, T, V] at once)."""
    h_BTD = model.hidden_states(ids_BT)
    w_DV = model.lm_head_weight().astype(h_BTD.dtype)
    b, t, d = h_BTD.shape
    c = max(1, min(int(chunk_size), t))
    n = -(-t // c)
    if n * c - t:
        h_BTD = jnp.pad(h_BTD, ((0, 0), (0, n * c - t), (0, 0)))
    h_NBCD = jnp.moveaxis(h_BTD.reshape(b, n, c, d), 1, 0)
    out_NBC = jax.lax.map(lambda h: _chunk_argmax(h, w_DV), h_NBCD)
    return jnp.moveaxis(out_NBC, 0, 1).reshape(b, n * c)[:, :t]


def jacobi_step(model, ids_BT, slot_mask_BT, *, eos_id: int | None = None, pad_id: int = 0,
                chunk_size: int = 1024):
    """One parallel update: every slot j takes the aligner's greedy token at j − 1; slots after
    the first EOS become ``pad_id``. Returns the new [B, T] int32 rows."""
    greedy_BT = greedy_next(model, ids_BT, chunk_size=chunk_size)
    proposal_BT = jnp.concatenate([ids_BT[:, :1], greedy_BT[:, :-1]], axis=1)
    new_BT = jnp.where(slot_mask_BT, proposal_BT, ids_BT)
    if eos_id is not None:
        is_eos = slot_mask_BT & (new_BT == eos_id)
        after_eos = (jnp.cumsum(is_eos, axis=1) - is_eos) > 0
        new_BT = jnp.where(slot_mask_BT & after_eos, pad_id, new_BT)
    return new_BT


def jacobi_refine(model, ids_BT, slot_mask_BT, *, max_steps: int | None = None, eos_id: int | None = None,
                  pad_id: int = 0, chunk_size: int = 1024) -> JacobiResult:
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

    Returns:
      JacobiResult (ids, updates, converged, forward_passes, iterations).
    """
    t = ids_BT.shape[1]
    cap = t if max_steps is None else int(max_steps)
    if cap < 0:
        raise ValueError(f"diffpo: max_steps must be >= 0 or None, got {max_steps}")
    return _jacobi_loop(model, jnp.asarray(ids_BT, jnp.int32), jnp.asarray(slot_mask_BT, bool),
                        jnp.asarray(cap, jnp.int32), eos_id=eos_id, pad_id=pad_id, chunk_size=chunk_size)


@functools.partial(nnx.jit, static_argnames=("eos_id", "pad_id", "chunk_size"))
def _jacobi_loop(model, ids_BT, slot_mask_BT, cap, *, eos_id, pad_id, chunk_size) -> JacobiResult:
    b = ids_BT.shape[0]

    def cond(carry):
        _, _, converged, it = carry
        return (it < cap) & ~jnp.all(converged)

    def body(carry):
        ids, updates, converged, it = carry
        new = jacobi_step(model, ids, slot_mask_BT, eos_id=eos_id, pad_id=pad_id, chunk_size=chunk_size)
        changed = jnp.any(new != ids, axis=1)
        # A fixed row stays fixed (its inputs no longer change), so rows never un-converge.
        return new, updates + changed.astype(jnp.int32), converged | ~changed, it + 1

    init = (ids_BT, jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool), jnp.zeros((), jnp.int32))
    ids, updates, converged, it = jax.lax.while_loop(cond, body, init)
    return JacobiResult(ids=ids, updates=updates, converged=converged,
                        forward_passes=updates + converged.astype(jnp.int32), iterations=it)
