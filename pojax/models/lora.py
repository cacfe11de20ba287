"""LoRA adapters (Hu et al., arXiv 2106.09685) on the projections of a pojax model.

``apply_lora`` adds y += (α/r)·(x A) B to the chosen Dense modules, with A ~ N(0, 1/in) and
B = 0 (so the adapted model starts equal to the base). A and B are ``nnx.LoRAParam``s, so the
optimizer can train only them (``nnx.LoRAParam`` filter) while the base stays frozen.
``without_adapters`` gives the base model (the reference of reference.mode = "lora_base")
without copying any base weight; ``merge_lora`` folds the adapters into the kernels (export).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pojax.models.layers import Dense

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _targets(model: nnx.Module, target_modules):
    for path, node in nnx.iter_graph(model):
        if isinstance(node, Dense) and path and path[-1] in target_modules:
            yield path, node


def apply_lora(model: nnx.Module, *, rank: int = 8, alpha: float = 16.0, target_modules=DEFAULT_TARGETS,
               rngs: nnx.Rngs) -> nnx.Module:
    """Adds rank-``rank`` adapters to every Dense named in ``target_modules`` (in place)."""
    found = list(_targets(model, target_modules))
    if not found:
        raise ValueError(f"no module named any of {tuple(target_modules)} to put LoRA adapters on")
    for _, dense in found:
        axes = tuple(dense.kernel.get_metadata("logical_axes"))
        lead = 1 if axes[0] == "layers" else 0  # nnx.scan stacks layers on a leading axis
        kshape = dense.kernel.shape
        layers, in_shape, out_shape = kshape[:lead], kshape[lead: lead + dense.n_in], kshape[lead + dense.n_in:]
        a = jax.random.normal(rngs.params(), (*layers, *in_shape, rank), jnp.float32) / math.sqrt(math.prod(in_shape))
        b = jnp.zeros((*layers, rank, *out_shape), jnp.float32)
        dtype = dense.kernel[...].dtype
        dense.lora_a = nnx.LoRAParam(a.astype(dtype), logical_axes=axes[: lead + dense.n_in] + (None,))
        dense.lora_b = nnx.LoRAParam(b.astype(dtype), logical_axes=axes[:lead] + (None,) + axes[lead + dense.n_in:])
        dense.lora_scale = alpha / rank
    return model


def without_adapters(model: nnx.Module) -> nnx.Module:
    """The base model: the same graph with every LoRA B set to zero (a new module sharing
    the base parameters' arrays; only the small adapter arrays are new)."""
    graphdef, lora, rest = nnx.split(model, nnx.LoRAParam, ...)
    zero_b = jax.tree.map(lambda x: x, lora)  # new Variables: the policy keeps its adapters
    for path, var in nnx.to_flat_state(zero_b):
        if path[-1] == "lora_b":
            var.set_value(jnp.zeros_like(var[...]))
    return nnx.merge(graphdef, zero_b, rest)


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Folds each adapter into its kernel, W += (α/r)·A B, and removes the adapters (in place)."""
    for _, dense in list(_targets(model, _all_dense_names(model))):
        if dense.lora_a is None:
            continue
        a = dense.lora_a[...].astype(jnp.float32)
        b = dense.lora_b[...].astype(jnp.float32)
        if dense.kernel.get_metadata("logical_axes")[0] == "layers":
            delta = jax.vmap(lambda a, b: jnp.tensordot(a, b, axes=1))(a, b) * dense.lora_scale
        else:
            delta = jnp.tensordot(a, b, axes=1) * dense.lora_scale
        w = dense.kernel[...]
        dense.kernel.set_value((w.astype(jnp.float32) + delta).astype(w.dtype))
        dense.lora_a, dense.lora_b = nnx.data(None), nnx.data(None)
        dense.lora_scale = 0.0
    return model


def _all_dense_names(model):
    return {path[-1] for path, node in nnx.iter_graph(model) if isinstance(node, Dense) and path}
