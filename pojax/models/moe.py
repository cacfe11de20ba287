"""The mixture-of-experts MLP of Mixtral and Qwen3-MoE, and its load-balancing loss.

A linear router scores the E experts of each token; the token goes to its k best, and its output
is the routing-weighted sum of those experts' SwiGLU outputs (Shazeer et al., arXiv 1701.06538;
Mixtral, arXiv 2401.04088):

    p = softmax(x W_r)            (float32, as transformers)
    (w, i) = top-k(p)             w renormalized to sum 1 when norm_topk_prob (Mixtral: always;
                                  the same as top-k of the logits, then softmax over those k)
    y = Σ_j w_j · down_{i_j}(act(gate_{i_j}(x)) · up_{i_j}(x))

Dispatch is dropless: the N·k (token, expert) assignments are sorted by expert and each
projection runs as one grouped matmul over the sorted rows (``grouped_matmul``, group sizes =
tokens per expert), so no token is dropped and activation memory is N·k·F whatever E is (a
one-hot einsum over all experts would be N·E·F). On TPU and GPU the grouped matmul is
``jax.lax.ragged_dot`` (XLA's ragged-dot instruction, Pallas/Triton on GPU); XLA:CPU has no such
instruction and JAX's fallback expands the rows to a dense [E, N·k, D] operand, so on CPU pojax
runs its own tiled grouped matmul (``tiled_grouped_matmul``), whose memory does not grow with E.

Expert weights are [E, D, F] / [E, F, D] with logical axes ("expert", "embed", "mlp"), so the
``expert`` mesh axis (pojax.sharding) splits the experts across devices.

The auxiliary loss is the Switch Transformer load-balancing loss (Fedus et al., arXiv
2101.03961, Eq. 4-6) as transformers' ``load_balancing_loss_func`` computes it over all layers:

    aux = E · Σ_e f_e · P_e,   f_e = (#assignments to e) / (L·N),   P_e = Σ p_e / (L·N)

over the N non-padding tokens of a forward and its L layers. Each forward of a model records its
per-layer sums (``RouterStats``); ``router_aux_loss`` pops them and returns aux.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pojax import sharding
from pojax.models.config import ModelConfig
from pojax.models.layers import ACTIVATION_FNS, dtype_of, param


class RouterStats(nnx.Variable):
    """What a MoE model's forwards leave for the load-balancing loss: (assignments [E], router
    probabilities [E], tokens []) float32, each summed over the layers and the non-padding tokens
    of every forward since ``router_aux_loss`` last reset it. Not a parameter; zeros at rest."""


def empty_stats(num_experts: int) -> RouterStats:
    return RouterStats((jnp.zeros((num_experts,), jnp.float32), jnp.zeros((num_experts,), jnp.float32),
                        jnp.zeros((), jnp.float32)))


def route(x_ND, router_DE, k: int, norm_topk_prob: bool):
    """(probabilities [N, E] float32, top-k weights [N, k] float32, top-k experts [N, k] int32)."""
    logits = jnp.matmul(x_ND, router_DE.astype(x_ND.dtype))
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, experts = jax.lax.top_k(probs, k)
    if norm_topk_prob:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return probs, weights, experts.astype(jnp.int32)


def dispatch(x_ND, experts_NK, num_experts: int):
    """Assignments sorted by expert: (rows [N·k, D] of x, their order in the flattened [N·k]
    assignments, tokens per expert [E] int32)."""
    k = experts_NK.shape[1]
    flat = experts_NK.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
    return x_ND[order // k], order, sizes


CPU_TILE = 16  # rows per tile of the CPU grouped matmul


def tiled_grouped_matmul(x_MK, w_EKN, sizes_E, tile: int = CPU_TILE):
    """Grouped matmul: rows [start_e, end_e) of x (sorted by group, ``sizes_E`` rows each,
    Σ sizes = M) times w[e]. [M, K] × [E, K, N] → [M, N].

    Each group is padded to whole tiles of ``tile`` rows (at most M/tile + E tiles, a static
    bound), so every tile belongs to one group; a sequential map multiplies each tile by its
    group's [K, N] slice, rematerialized in the backward pass (jax.checkpoint), so neither pass
    holds more than the padded rows (M + E·tile)·K and one slice of w beyond w's own gradient."""
    m, k = x_MK.shape
    e, _, n = w_EKN.shape
    ends = jnp.cumsum(sizes_E)
    starts = ends - sizes_E
    padded = -(-sizes_E // tile) * tile
    pends = jnp.cumsum(padded)
    pstarts = pends - padded
    n_tiles = -(-m // tile) + e
    row = jnp.arange(m, dtype=sizes_E.dtype)
    group = jnp.minimum(jnp.searchsorted(ends, row, side="right"), e - 1)
    dest = row - starts[group] + pstarts[group]
    xp = jnp.zeros((n_tiles * tile, k), x_MK.dtype).at[dest].set(x_MK)
    tile_group = jnp.minimum(jnp.searchsorted(pends, jnp.arange(n_tiles, dtype=sizes_E.dtype) * tile, side="right"),
                             e - 1)

    @jax.checkpoint
    def one(args):
        xt, g = args
        return jnp.matmul(xt, jax.lax.dynamic_index_in_dim(w_EKN, g, keepdims=False))

    yp = jax.lax.map(one, (xp.reshape(n_tiles, tile, k), tile_group))
    return yp.reshape(n_tiles * tile, n)[dest]


def grouped_matmul(x_MK, w_EKN, sizes_E):
    """[M, K] rows sorted by group × [E, K, N] → [M, N]: ``jax.lax.ragged_dot`` on TPU / GPU,
    ``tiled_grouped_matmul`` on CPU (chosen when the program is lowered for its platform)."""
    return jax.lax.platform_dependent(x_MK, w_EKN, sizes_E, cpu=tiled_grouped_matmul, default=jax.lax.ragged_dot)


class MoE(nnx.Module):
    """Top-k routed SwiGLU experts, called like pojax.models.layers.SwiGLU on [B, T, D] with the
    tokens' weights in the router statistics (1 real, 0 padding); returns (y [B, T, D],
    (assignments [E], probability sums [E], tokens)) for ``RouterStats``."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        e, d, f = c.num_experts, c.hidden_size, c.moe_intermediate_size
        pd = dtype_of(c.param_dtype)
        self.router = param(rngs, (d, e), ("embed", None), pd)
        self.gate_proj = param(rngs, (e, d, f), ("expert", "embed", "mlp"), pd)
        self.up_proj = param(rngs, (e, d, f), ("expert", "embed", "mlp"), pd)
        self.down_proj = param(rngs, (e, f, d), ("expert", "mlp", "embed"), pd)
        self.k = c.num_experts_per_tok
        self.norm_topk_prob = c.norm_topk_prob
        self.dtype = dtype_of(c.dtype)
        self.activation = c.hidden_act

    def __call__(self, x_BTD, token_weights_BT=None):
        with jax.named_scope("moe"):
            b, t, d = x_BTD.shape
            e = self.router.shape[1]
            x_ND = x_BTD.reshape(b * t, d).astype(self.dtype)
            probs_NE, weights_NK, experts_NK = route(x_ND, self.router[...], self.k, self.norm_topk_prob)
            rows_MD, order_M, sizes_E = dispatch(x_ND, experts_NK, e)
            w = lambda p: p[...].astype(self.dtype)
            gate = grouped_matmul(rows_MD, w(self.gate_proj), sizes_E)
            up = grouped_matmul(rows_MD, w(self.up_proj), sizes_E)
            h_MF = ACTIVATION_FNS[self.activation](gate) * up
            y_MD = grouped_matmul(h_MF, w(self.down_proj), sizes_E)
            y_MD = y_MD * weights_NK.reshape(-1)[order_M][:, None].astype(y_MD.dtype)
            unsorted = jnp.zeros_like(y_MD).at[order_M].set(y_MD)  # back to token-major [N·k, D]
            y_BTD = unsorted.reshape(b * t, self.k, d).sum(axis=1).reshape(b, t, d)
            tw_N = jnp.ones((b * t,), jnp.float32) if token_weights_BT is None else \
                token_weights_BT.reshape(-1).astype(jnp.float32)
            counts_E = jnp.zeros((e,), jnp.float32).at[experts_NK.reshape(-1)].add(jnp.repeat(tw_N, self.k))
            stats = (counts_E, jnp.sum(probs_NE * tw_N[:, None], axis=0), jnp.sum(tw_N))
            return sharding.constrain(y_BTD, ("batch", "length", "embed")), stats


def record(model: nnx.Module, per_layer_stats) -> None:
    """Adds one forward's router statistics (a tuple of [L, ...] arrays, summed over the layers
    here) to ``model.router_stats``."""
    new = tuple(jnp.sum(s, axis=0) for s in per_layer_stats)
    # a new Variable, not set_value: the model may be merged inside a transform (jax.grad of the
    # train step) from variables of an outer trace, which cannot be mutated from inside it
    model.router_stats = RouterStats(tuple(a + b for a, b in zip(model.router_stats.get_value(), new)))


def router_aux_loss(model: nnx.Module):
    """The load-balancing loss of every forward of ``model`` since the last call, pooled as one
    concatenated forward (a scalar float32), or None for a dense model; resets the statistics."""
    stats = getattr(model, "router_stats", None)
    if stats is None:
        return None
    counts, probs, rows = stats.get_value()
    model.router_stats = RouterStats(tuple(jnp.zeros_like(x) for x in (counts, probs, rows)))
    rows = jnp.maximum(rows, 1.0)  # L·N: each token counted once per layer
    return counts.shape[0] * jnp.sum((counts / rows) * (probs / rows))
