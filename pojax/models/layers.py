"""Building blocks shared by pojax's transformers: parameters with logical axes, RMSNorm,
dense projections, RoPE, SwiGLU and the attention core.

Every parameter is an ``nnx.Param`` whose ``logical_axes`` metadata names each dimension
("embed", "heads", "kv_heads", "head_dim", "mlp", "vocab"); pojax.sharding maps those names to
mesh axes. Norms, softmax and RoPE angles are float32 whatever the compute dtype.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from pojax import sharding

_NEG_INF = -1e30  # masked logits; finite so a fully masked (padding) row gives no NaN


def dtype_of(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def param(rngs: nnx.Rngs | None, shape, logical_axes, dtype, init: str = "normal") -> nnx.Param:
    """A parameter with logical axis names; ``init`` is "normal" (σ = 0.02), "zeros" or "ones"."""
    if init == "normal":
        value = 0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)
    elif init == "zeros":
        value = jnp.zeros(shape, jnp.float32)
    else:
        value = jnp.ones(shape, jnp.float32)
    return nnx.Param(value.astype(dtype), logical_axes=tuple(logical_axes))


class RMSNorm(nnx.Module):
    """y = w · x / sqrt(mean(x²) + ε), computed in float32 and cast back (as transformers).

    With ``offset`` (Gemma: 1) the scale is (offset + w), the product taken in float32 before
    the cast (Gemma2RMSNorm's order), and w starts at 0. A tuple ``dim`` with as many logical
    axes normalizes over that many trailing dims together (OLMo 2's q/k norm over all heads)."""

    def __init__(self, dim, eps: float, logical_axis, param_dtype, *, rngs: nnx.Rngs, offset: float = 0.0):
        shape = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
        axes = tuple(logical_axis) if isinstance(logical_axis, (tuple, list)) else (logical_axis,)
        self.weight = param(rngs, shape, axes, param_dtype, init="zeros" if offset else "ones")
        self.eps = eps
        self.offset = offset
        self.n_axes = len(shape)

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        axes = tuple(range(-self.n_axes, 0))
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=axes, keepdims=True) + self.eps)
        if self.offset:
            return (x32 * (self.offset + self.weight[...].astype(jnp.float32))).astype(x.dtype)
        return self.weight[...] * x32.astype(x.dtype)


class Dense(nnx.Module):
    """y = einsum(x, W) + b for a kernel W whose leading dims contract with x's trailing ones.

    ``in_axes``/``out_axes`` are the logical names of the kernel's input and output dims, so
    a q projection is [D, H, Dh] ("embed", "heads", "head_dim") and o is [H, Dh, D].
    """

    def __init__(self, in_shape, out_shape, in_axes, out_axes, *, bias: bool, param_dtype, dtype, rngs: nnx.Rngs):
        in_shape, out_shape = tuple(in_shape), tuple(out_shape)
        self.kernel = param(rngs, in_shape + out_shape, tuple(in_axes) + tuple(out_axes), param_dtype)
        self.bias = param(rngs, out_shape, out_axes, param_dtype, init="zeros") if bias else None
        self.n_in = len(in_shape)
        self.dtype = dtype
        self.lora_a = nnx.data(None)  # set by pojax.models.lora.apply_lora
        self.lora_b = nnx.data(None)
        self.lora_scale = 0.0

    def __call__(self, x):
        x = x.astype(self.dtype)
        y = _contract(x, self.kernel[...].astype(self.dtype), self.n_in)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if self.lora_a is not None:  # y += (α/r) · (x A) B
            h = _contract(x, self.lora_a[...].astype(self.dtype), self.n_in)
            y = y + self.lora_scale * _contract(h, self.lora_b[...].astype(self.dtype), 1)
        return y


def _contract(x, w, n: int):
    """Contracts the last n dims of x with the first n dims of w, as one 2-D matmul
    [tokens, K] × [K, N]. Same values as the N-D dot_general; written 2-D because XLA:CPU then
    runs the weight gradients with its fast library dot instead of transposing the activations
    into a generic one (tiny benchmark step: −10% on one core; experiments/bench)."""
    lead, out = x.shape[:x.ndim - n], w.shape[n:]
    k = math.prod(x.shape[x.ndim - n:])
    return jnp.matmul(x.reshape(-1, k), w.reshape(k, -1)).reshape(*lead, *out)


ACTIVATION_FNS = {"silu": jax.nn.silu, "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True)}


class SwiGLU(nnx.Module):
    """down(act(gate(x)) · up(x)): SwiGLU (act = silu) of Llama / Mistral / Qwen, GeGLU (act =
    tanh-approximated gelu) of Gemma."""

    def __init__(self, dim: int, hidden: int, *, bias: bool, param_dtype, dtype, rngs: nnx.Rngs,
                 activation: str = "silu"):
        kw = dict(bias=bias, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.gate_proj = Dense((dim,), (hidden,), ("embed",), ("mlp",), **kw)
        self.up_proj = Dense((dim,), (hidden,), ("embed",), ("mlp",), **kw)
        self.down_proj = Dense((hidden,), (dim,), ("mlp",), ("embed",), **kw)
        self.activation = activation

    def __call__(self, x):
        with jax.named_scope("mlp"):
            h = ACTIVATION_FNS[self.activation](self.gate_proj(x)) * self.up_proj(x)
            h = sharding.constrain(h, ("batch", "length", "mlp"))
            return self.down_proj(h)


def rope_inv_freq(head_dim: int, theta: float, rope: dict, *, long: bool = False) -> np.ndarray:
    """RoPE inverse frequencies [Dh/2] float32, with transformers' "linear", "llama3" and
    "longrope" scaling.

    longrope (Phi-3-*-128k, Phi-4-mini; LongRoPE, Ding et al., arXiv 2402.13753): each frequency
    divided by its ``short_factor`` — or, with ``long``, its ``long_factor``, the table for inputs
    longer than original_max_position_embeddings.

    llama3 (Llama 3.1): wavelengths longer than L/low_freq_factor are divided by ``factor``,
    shorter than L/high_freq_factor kept, and the band between interpolated smoothly, with
    L = original_max_position_embeddings.
    """
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    kind = rope.get("rope_type", "default")
    if kind == "linear":
        inv = inv / rope["factor"]
    elif kind == "llama3":
        factor, lo, hi = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old = rope["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        inv = np.where(medium, smoothed, scaled)
    elif kind == "longrope":
        factors = np.asarray(rope["long_factor" if long else "short_factor"], np.float64)
        if factors.shape != inv.shape:
            raise ValueError(f"longrope {'long' if long else 'short'}_factor has {factors.size} entries; the rotary "
                             f"dims need {inv.size}")
        inv = inv / factors
    return inv.astype(np.float32)


def longrope_attention_factor(rope: dict, max_position_embeddings: int) -> float:
    """LongRoPE's scale of cos and sin (transformers' default: sqrt(1 + ln s / ln L0) with
    s = max_position_embeddings / L0, L0 = original_max_position_embeddings; 1 when s ≤ 1)."""
    if rope.get("attention_factor") is not None:
        return float(rope["attention_factor"])
    original = rope["original_max_position_embeddings"]
    factor = rope.get("factor") or max_position_embeddings / original
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


def apply_rope(x, positions, inv_freq, scale: float = 1.0):
    """Rotate-half RoPE. x: [B, T, N, Dh]; positions: [B, T] int; inv_freq: [R/2] with R ≤ Dh:
    the first R dims of each head rotate, the rest pass through (partial rotary, Phi-4-mini);
    ``scale`` multiplies cos and sin (LongRoPE's attention factor)."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, R/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, -1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, -1)[:, :, None, :]
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    x32 = x.astype(jnp.float32)
    r = 2 * angles.shape[-1]
    rot, rest = x32[..., :r], x32[..., r:]
    half = r // 2
    rotated = jnp.concatenate([-rot[..., half:], rot[..., :half]], -1)
    return jnp.concatenate([rot * cos + rotated * sin, rest], -1).astype(x.dtype)


def attention_mask(q_pos, kv_pos, q_seg=None, kv_seg=None, window: int | None = None, causal: bool = True,
                   q_branch=None, kv_branch=None):
    """Which keys each query may see. [B, T, S] bool.

    q_pos [B, T], kv_pos [B, S]: positions (kv_pos < 0 marks empty cache slots); causal keeps
    kv_pos ≤ q_pos; ``window`` keeps q_pos - kv_pos < window (transformers' sliding window);
    segment ids [B, T] / [B, S] keep keys of the same packed document (0 = padding); branch ids
    [B, T] / [B, S] (shared-prompt rows, pojax.likelihood.shared_prompt) keep keys on the shared
    trunk (branch 0, the prompt) or on the query's own branch (its completion).
    """
    mask = kv_pos[:, None, :] >= 0
    if causal:
        mask &= kv_pos[:, None, :] <= q_pos[:, :, None]
    if window is not None:
        mask &= (q_pos[:, :, None] - kv_pos[:, None, :]) < window
    if q_seg is not None:
        mask &= (q_seg[:, :, None] == kv_seg[:, None, :]) & (kv_seg[:, None, :] != 0)
    if q_branch is not None:
        mask &= (kv_branch[:, None, :] == 0) | (kv_branch[:, None, :] == q_branch[:, :, None])
    return mask


@struct.dataclass
class PartMasks:
    """An attention mask in parts: query rows [qs, qe) of part i see only the key ranges
    ``parts[i][2]`` (static), under ``masks[i]`` [B, qe - qs, Σ key range lengths] bool.

    Keys outside a part's ranges must be masked for its queries anyway (the caller's layout
    guarantees it, e.g. causality in index order); skipping them is then exact and saves their
    scores, softmax and gradients. Parts cover the queries in order."""

    masks: tuple
    parts: tuple = struct.field(pytree_node=False)  # ((q_start, q_stop, ((k_start, k_stop), ...)), ...)


def part_masks(parts, q_pos, kv_pos, q_seg=None, kv_seg=None, window=None, q_branch=None, kv_branch=None) -> PartMasks:
    """``attention_mask`` restricted to each part of ``parts`` (see PartMasks)."""
    def keys(x, ranges):
        return None if x is None else jnp.concatenate([x[:, a:b] for a, b in ranges], axis=1)

    masks = tuple(attention_mask(q_pos[:, qs:qe], keys(kv_pos, kr), None if q_seg is None else q_seg[:, qs:qe],
                                 keys(kv_seg, kr), window, q_branch=None if q_branch is None else q_branch[:, qs:qe],
                                 kv_branch=keys(kv_branch, kr))
                  for qs, qe, kr in parts)
    return PartMasks(masks, tuple(parts))


def attention(q, k, v, mask, scale: float, impl: str = "xla", softcap: float | None = None):
    """Dispatches to pojax's explicit-mask XLA attention ("xla") or to
    ``jax.nn.dot_product_attention`` ("jax"; JAX picks its backend, cuDNN on GPU where the
    mask allows; no soft cap). Same shapes as ``dot_product_attention``; a PartMasks ``mask``
    runs each part over its own key ranges and concatenates the outputs."""
    if isinstance(mask, PartMasks):
        outs = []
        for (qs, qe, ranges), m in zip(mask.parts, mask.masks, strict=True):
            kk = jnp.concatenate([k[:, a:b] for a, b in ranges], axis=1)
            vv = jnp.concatenate([v[:, a:b] for a, b in ranges], axis=1)
            outs.append(attention(q[:, qs:qe], kk, vv, m, scale, impl, softcap))
        return jnp.concatenate(outs, axis=1)
    if impl == "jax":
        if softcap is not None:
            raise ValueError("attention_impl='jax' has no attention-logit soft cap; use 'xla'")
        return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=scale)
    return dot_product_attention(q, k, v, mask, scale, softcap)


def dot_product_attention(q, k, v, mask, scale: float, softcap: float | None = None):
    """Grouped-query attention with an explicit mask, softmax in float32 (the XLA path).

    q: [B, T, H, Dh]; k, v: [B, S, K, Dh] with H a multiple of K; mask: [B, T, S] bool.
    ``softcap`` (Gemma 2): scores become softcap · tanh(scores / softcap) before the mask.
    Returns [B, T, H, Dh] in q's dtype.
    """
    b, t, h, dh = q.shape
    kh = k.shape[2]
    q = q.reshape(b, t, kh, h // kh, dh)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    if softcap is not None:
        logits = softcap * jnp.tanh(logits / softcap)
    logits = jnp.where(mask[:, None, None, :, :], logits, _NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(b, t, h, dh).astype(q.dtype)
