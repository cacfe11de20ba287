"""Per-layer rematerialization that recomputes one layer at a time.

``jax.checkpoint`` (``nnx.remat``) saves a layer's inputs and recomputes its forward in the
backward pass. When that happens is up to XLA's scheduler, and with unrolled layers (no
``nnx.scan``) XLA:CPU ran every layer's recomputed forward early and deferred every layer's
weight-gradient matmuls to the end of the backward pass, so all layers' recomputed activations
were alive together: the memory remat was asked to save (``lax.optimization_barrier``, JAX's own
ordering device, is dropped by XLA:CPU before scheduling). Measured on the small bench workload's
DPO step (8 layers): temporaries 1603 MiB with ``nnx.remat`` on unrolled layers, 499 MiB under
``nnx.scan``.

``remat`` below orders the backward pass by data dependences, which no scheduler can reorder:
a custom VJP whose backward adds ``0 · max(cotangent)`` to the saved residuals before
recomputing, and ``0 · Σ max(weight gradient)`` to the input gradient it passes down. So layer i
is recomputed after layer i + 1's backward is complete, and releases its activations (its weight
gradients done) before layer i − 1 starts: the order a scan imposes, without the scan. Small
workload: 495 MiB. The values are those of ``nnx.remat`` (tests/models/test_remat.py).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _floating(x) -> bool:
    return jnp.issubdtype(x.dtype, jnp.inexact)


def _after(values, dependencies):
    """values (a pytree) with 0 · max(d) added to each floating leaf, for every floating leaf d of
    dependencies: the same numbers (unless a d is non-finite), computed only once all of
    dependencies exist. A full reduction, since XLA sinks a slice through the producer."""
    deps = [d for d in jax.tree.leaves(dependencies) if _floating(d)]
    if not deps:
        return values
    zero = sum(jnp.max(d).astype(jnp.float32) for d in deps) * 0
    return jax.tree.map(lambda x: x + zero.astype(x.dtype) if _floating(x) else x, values)


def _tie_to_cotangent(f: Callable, policy) -> Callable:
    """f(*args) with a VJP that runs only once the cotangent of f's output is complete, and
    whose input gradients exist only once its weight gradients do.

    The forward runs ``jax.vjp`` of ``jax.checkpoint(f, policy)``: its residuals are what the
    policy saves (the inputs only, for policy None). The backward makes the residuals depend on
    all of the cotangent (``_after``; one element of it would not do: XLA computes a slice of the
    cotangent early by slicing through the layer above), applies the VJP, and makes the gradients
    of ``args`` (the layer input) depend on those of ``state`` (the weights). ``x · 0`` is not
    folded for floats (it is NaN for x = inf), so a non-finite cotangent or weight gradient makes
    every gradient of the layer non-finite, which the trainer's non-finite guard skips anyway.
    """
    checkpointed = jax.checkpoint(f, policy=policy)

    @jax.custom_vjp
    def tied(*args):
        return f(*args)

    def fwd(*args):
        out, vjp_fn = jax.vjp(checkpointed, *args)
        return out, vjp_fn  # a jax.tree_util.Partial: its leaves are the residuals

    def bwd(vjp_fn, cotangent):
        state_grads, *arg_grads = _after(vjp_fn, cotangent)(cotangent)
        return (state_grads, *_after(arg_grads, state_grads))

    tied.defvjp(fwd, bwd)
    return tied


def remat(fn: Callable, policy: str, *, sequential: bool = True) -> Callable:
    """``fn(module, *args)`` rematerialized under ``policy`` (a key of POLICIES).

    sequential=True (for unrolled layers) recomputes layer by layer (see the module docstring);
    False is plain ``nnx.remat``, which is already sequential inside ``nnx.scan``. The module's
    state is only read (no variable of a block is written in its forward).
    """
    if not sequential:
        return nnx.remat(fn, policy=POLICIES[policy])

    def run(module, *args):
        graphdef, state = nnx.split(module)
        pure = lambda state, *args: fn(nnx.merge(graphdef, state), *args)
        return _tie_to_cotangent(pure, POLICIES[policy])(state, *args)

    return run
