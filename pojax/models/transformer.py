"""The causal decoder of Llama 2/3/3.1, Mistral, Qwen2/2.5, Qwen3, Gemma 2, Gemma 3 (text) and
OLMo 2 in Flax NNX.

Read top to bottom: attention → block → model (embedding, layers as a list or an nnx.scan
stack, final norm, LM head), the full-logits forward, hidden states for the chunked log-prob
path, and KV-cache decoding. Every switch between families is a ModelConfig field.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx

from pojax import sharding
from pojax.models import moe, remat
from pojax.models.config import ModelConfig
from pojax.models.layers import (
    Dense, RMSNorm, SwiGLU, apply_rope, attention, attention_mask, dtype_of, param, part_masks, rope_inv_freq,
)

SANDWICH_NORM_TYPES = ("gemma2", "gemma3_text")  # norms before and after attention and MLP
POST_NORM_TYPES = ("olmo2",)  # norms after attention and MLP only


def norm_placement(config: ModelConfig) -> str:
    """"pre" (Llama), "sandwich" (Gemma 2 / 3) or "post" (OLMo 2)."""
    if config.model_type in SANDWICH_NORM_TYPES:
        return "sandwich"
    return "post" if config.model_type in POST_NORM_TYPES else "pre"


class Attention(nnx.Module):
    """GQA self-attention with RoPE, optional q/k/v bias (qwen2), q/k RMSNorm (qwen3), and
    Gemma 2's query_pre_attn_scalar scale and attention-logit soft cap."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        d, h, k, dh = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
        kw = dict(param_dtype=dtype_of(c.param_dtype), dtype=dtype_of(c.dtype), rngs=rngs)
        self.q_proj = Dense((d,), (h, dh), ("embed",), ("heads", "head_dim"), bias=c.attention_bias, **kw)
        self.k_proj = Dense((d,), (k, dh), ("embed",), ("kv_heads", "head_dim"), bias=c.attention_bias, **kw)
        self.v_proj = Dense((d,), (k, dh), ("embed",), ("kv_heads", "head_dim"), bias=c.attention_bias, **kw)
        self.o_proj = Dense((h, dh), (d,), ("heads", "head_dim"), ("embed",), bias=c.o_proj_bias, **kw)
        if c.qk_norm:
            if c.qk_norm_heads:  # OLMo 2: over all heads of q (of k) together
                q_shape, q_axes, k_shape, k_axes = (h, dh), ("heads", "head_dim"), (k, dh), ("kv_heads", "head_dim")
            else:  # Qwen3, Gemma 3: over each head
                q_shape = k_shape = dh
                q_axes = k_axes = "head_dim"
            kw = dict(rngs=rngs, offset=c.norm_offset)
            self.q_norm = RMSNorm(q_shape, c.rms_norm_eps, q_axes, dtype_of(c.param_dtype), **kw)
            self.k_norm = RMSNorm(k_shape, c.rms_norm_eps, k_axes, dtype_of(c.param_dtype), **kw)
        else:
            self.q_norm = self.k_norm = None
        self.scale = (c.query_pre_attn_scalar or dh) ** -0.5
        self.impl = c.attention_impl
        self.softcap = c.attn_logit_softcapping
        self.rope_scale = c.rope_scale

    def project(self, x, positions, inv_freq):
        """q [B, T, H, Dh], k and v [B, T, K, Dh], RoPE applied."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = sharding.constrain(apply_rope(q, positions, inv_freq, self.rope_scale), ("batch", "length", "heads", "head_dim"))
        k = sharding.constrain(apply_rope(k, positions, inv_freq, self.rope_scale), ("batch", "length", "kv_heads", "head_dim"))
        return q, k, sharding.constrain(v, ("batch", "length", "kv_heads", "head_dim"))

    def __call__(self, x, positions, mask, inv_freq):
        with jax.named_scope("attention"):
            q, k, v = self.project(x, positions, inv_freq)
            return self.o_proj(attention(q, k, v, mask, self.scale, self.impl, self.softcap))

    def decode(self, x, positions, cache_k, cache_v, index, mask, inv_freq):
        """Attention of new tokens over a KV cache; writes their k/v at slots [index, index+T)."""
        with jax.named_scope("attention"):
            q, k, v = self.project(x, positions, inv_freq)
            cache_k = jax.lax.dynamic_update_slice_in_dim(cache_k, k.astype(cache_k.dtype), index, axis=1)
            cache_v = jax.lax.dynamic_update_slice_in_dim(cache_v, v.astype(cache_v.dtype), index, axis=1)
            out = attention(q, cache_k.astype(q.dtype), cache_v.astype(q.dtype), mask, self.scale, self.impl,
                            self.softcap)
            return self.o_proj(out), cache_k, cache_v


class Block(nnx.Module):
    """Decoder layer, norms placed as the family places them (``norm_placement``), under its
    checkpoint's names:

      pre       x + attn(input_layernorm(x)), then + mlp(post_attention_layernorm(x)) (Llama:
                its post_attention_layernorm is the norm before the MLP)
      sandwich  x + post_attention_layernorm(attn(input_layernorm(x))), then
                + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x))) (Gemma 2 / 3)
      post      x + post_attention_layernorm(attn(x)), then + post_feedforward_layernorm(mlp(x))
                (OLMo 2)"""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        pd = dtype_of(c.param_dtype)
        norm = lambda: RMSNorm(c.hidden_size, c.rms_norm_eps, "embed", pd, rngs=rngs, offset=c.norm_offset)
        self.placement = norm_placement(c)
        if self.placement != "post":
            self.input_layernorm = norm()
        self.self_attn = Attention(c, rngs=rngs)
        self.post_attention_layernorm = norm()
        if self.placement == "sandwich":
            self.pre_feedforward_layernorm = norm()
        if self.placement != "pre":
            self.post_feedforward_layernorm = norm()
        if c.num_experts:  # Mixtral, Qwen3-MoE
            self.mlp = moe.MoE(c, rngs=rngs)
        else:
            self.mlp = SwiGLU(c.hidden_size, c.intermediate_size, bias=c.mlp_bias, param_dtype=pd,
                              dtype=dtype_of(c.dtype), rngs=rngs, activation=c.hidden_act)
        self.sparse = bool(c.num_experts)

    def _attn_in(self, x):
        return x if self.placement == "post" else self.input_layernorm(x)

    def _residual(self, x, a):
        return x + (a if self.placement == "pre" else self.post_attention_layernorm(a))

    def _ffn(self, x, token_weights):
        """(MLP output, router statistics or None)."""
        if self.sparse:
            return self.mlp(x, token_weights)
        return self.mlp(x), None

    def _mlp(self, x, token_weights=None):
        if self.placement == "pre":
            h, stats = self._ffn(self.post_attention_layernorm(x), token_weights)
            return x + h, stats
        h, stats = self._ffn(self.pre_feedforward_layernorm(x) if self.placement == "sandwich" else x, token_weights)
        return x + self.post_feedforward_layernorm(h), stats

    def __call__(self, x, positions, mask, inv_freq, token_weights=None):
        """(x [B, T, D], router statistics of a MoE layer (pojax.models.moe) or None); the
        router statistics count each token by ``token_weights`` [B, T] (None: 1 each)."""
        x = self._residual(x, self.self_attn(self._attn_in(x), positions, mask, inv_freq))
        x, stats = self._mlp(x, token_weights)
        return sharding.constrain(x, ("batch", "length", "embed")), stats

    def decode(self, x, positions, cache_k, cache_v, index, mask, inv_freq):
        a, cache_k, cache_v = self.self_attn.decode(self._attn_in(x), positions, cache_k, cache_v, index, mask, inv_freq)
        return self._mlp(self._residual(x, a))[0], cache_k, cache_v


def _run_block(block: Block, x, positions, masks, sliding, inv_freqs, token_weights):
    """One layer; a sliding layer takes the windowed mask and the local RoPE (inv_freqs[1])."""
    mask = jax.tree.map(lambda w, f: jnp.where(sliding, w, f), masks[1], masks[0])
    return block(x, positions, mask, jnp.where(sliding, inv_freqs[1], inv_freqs[0]), token_weights)


class DecoderStack(nnx.Module):
    """What the causal decoder and the LLaDA mask predictor share: token embedding, the stack of
    pre-norm blocks (a list, or stacked for nnx.scan), the final norm, the LM head and the RoPE
    table. Subclasses define ``hidden_states`` (their attention mask is the difference)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        pd = dtype_of(c.param_dtype)
        self.embed_tokens = param(rngs, (c.vocab_size, c.hidden_size), ("vocab", "embed"), pd)
        if c.scan_layers:
            self.layers = _stacked_blocks(c, rngs)
        else:
            self.layers = nnx.List([Block(c, rngs=rngs) for _ in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, "embed", pd, rngs=rngs, offset=c.norm_offset)
        self.lm_head = None if c.tie_word_embeddings else param(rngs, (c.hidden_size, c.vocab_size), ("embed", "vocab"), pd)
        self.inv_freq = nnx.Variable(rope_inv_freq(c.rotary_dim, c.rope_theta, c.rope))  # static, not trained
        if c.sliding_rope_theta is not None:  # Gemma 3: sliding layers rotate with their own base
            self.inv_freq_local = nnx.Variable(rope_inv_freq(c.rotary_dim, c.sliding_rope_theta, c.sliding_rope))
        if c.num_experts:  # router statistics of the forwards, for the load-balancing loss
            self.router_stats = moe.empty_stats(c.num_experts)
        if c.rope.get("rope_type") == "longrope":  # LongRoPE's table for inputs past the original length
            self.inv_freq_long = nnx.Variable(rope_inv_freq(c.rotary_dim, c.rope_theta, c.rope, long=True))

    def inv_freqs(self, positions=None):
        """[2, R/2] RoPE inverse frequencies of full-attention layers, then of sliding layers.

        LongRoPE takes its long table when the largest position + 1 exceeds
        original_max_position_embeddings (transformers' rule, decided per call from ``positions``)."""
        glob = self.inv_freq[...]
        if getattr(self, "inv_freq_long", None) is not None and positions is not None:
            longer = jnp.max(positions) + 1 > self.config.rope["original_max_position_embeddings"]
            glob = jnp.where(longer, self.inv_freq_long[...], glob)
        local = getattr(self, "inv_freq_local", None)
        return jnp.stack([glob, glob if local is None else local[...]])

    def lm_head_weight(self):
        """The LM head as [D, V] (the transposed embedding when tied)."""
        return self.embed_tokens[...].T if self.lm_head is None else self.lm_head[...]

    def embed(self, input_ids):
        """Token embeddings [B, T, D] in the compute dtype (Gemma: times sqrt(D) rounded to it)."""
        dtype = dtype_of(self.config.dtype)
        x = jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(dtype)
        if self.config.embed_scale:
            x = x * jnp.asarray(self.config.hidden_size ** 0.5, dtype)
        return sharding.constrain(x, ("batch", "length", "embed"))

    @property
    def logit_soft_cap(self) -> float | None:
        """Gemma 2's final-logit soft cap (None: logits as they are), for the log-prob paths."""
        return self.config.final_logit_softcapping

    def __call__(self, input_ids, *, positions=None, segment_ids=None):
        """Logits [B, T, V] float32 (the full-logits path; training uses hidden_states)."""
        h = self.hidden_states(input_ids, positions=positions, segment_ids=segment_ids)
        return self.logits(h)

    def logits(self, h):
        w = self.lm_head_weight().astype(h.dtype)
        z = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)
        cap = self.config.final_logit_softcapping
        return z if cap is None else cap * jnp.tanh(z / cap)


class CausalLM(DecoderStack):
    """Decoder-only LM. ``model(input_ids) -> logits [B, T, V]``; ``hidden_states`` for the
    chunked log-prob path (pojax.likelihood.autoregressive), ``decode`` with a KV cache."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        self.sliding = nnx.Variable(jnp.array([t == "sliding_attention" for t in config.layer_types]))

    def hidden_states(self, input_ids, *, positions=None, segment_ids=None, branch_ids=None, attention_parts=None):
        """Final-norm hidden states [B, T, D] of input_ids [B, T] int32.

        positions [B, T] default to 0..T-1; segment_ids [B, T] (1.. per packed document,
        0 = padding) keep attention inside each document; branch_ids [B, T] (0 = shared prompt,
        k > 0 = the k-th completion) let several completions of a row share one prompt;
        attention_parts (static, see layers.PartMasks) skips key ranges the mask hides anyway.
        A mixture-of-experts model records the forward's router statistics over its non-padding
        tokens (segment id ≠ 0) for pojax.models.moe.router_aux_loss.
        """
        c = self.config
        b, t = input_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        rows = lambda x: None if x is None else sharding.constrain(x, ("batch", "length"))
        positions, segment_ids, branch_ids = rows(positions), rows(segment_ids), rows(branch_ids)
        branch = dict(q_branch=branch_ids, kv_branch=branch_ids)
        if attention_parts is not None:
            make = lambda window: part_masks(attention_parts, positions, positions, segment_ids, segment_ids, window,
                                             **branch)
        else:
            make = lambda window: attention_mask(positions, positions, segment_ids, segment_ids, window, **branch)
        # masks batch-sharded like the rows (else the partitioner may reshard them with all-to-alls)
        whole = lambda m: jax.tree.map(lambda x: sharding.constrain(x, ("batch", "length", "kv_length")), m)
        full = whole(make(None))
        windowed = full if c.sliding_window is None else whole(make(c.sliding_window))
        masks = (full, windowed)
        x = self.embed(input_ids)
        inv_freq = self.inv_freqs(positions)
        run = _run_block
        if c.remat != "none":
            run = remat.remat(_run_block, c.remat, sequential=not c.scan_layers)
        weights = None if segment_ids is None else (segment_ids != 0).astype(jnp.float32)
        if c.scan_layers:
            @nnx.scan(in_axes=(0, nnx.Carry, None, None, 0, None, None), out_axes=(nnx.Carry, 0))
            def scan_fn(block, x, positions, masks, sliding, inv_freq, weights):
                return run(block, x, positions, masks, sliding, inv_freq, weights)

            x, stats = scan_fn(self.layers, x, positions, masks, self.sliding[...], inv_freq, weights)
        else:
            stats = []
            for i, block in enumerate(self.layers):
                x, s = run(block, x, positions, masks, self.sliding[...][i], inv_freq, weights)
                stats.append(s)
            stats = None if stats[0] is None else tuple(jnp.stack(s) for s in zip(*stats))
        if stats is not None:
            moe.record(self, stats)
        return self.norm(x)

    # ------------------------------------------------------------------ KV cache decoding

    def init_cache(self, batch_size: int, max_length: int, dtype=None) -> dict:
        """An empty KV cache: k, v [L, B, S, K, Dh]; pos [B, S] (-1 = empty); index (next slot)."""
        c = self.config
        dtype = dtype or dtype_of(c.dtype)
        shape = (c.num_hidden_layers, batch_size, max_length, c.num_key_value_heads, c.head_dim)
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
                "pos": jnp.full((batch_size, max_length), -1, jnp.int32), "index": jnp.zeros((), jnp.int32)}

    def decode(self, input_ids, positions, cache: dict):
        """Runs T new tokens [B, T] at ``positions`` [B, T] (-1 for padding tokens, which are
        never attended to) against the cache; returns (logits [B, T, V] float32, new cache).
        The same weights and math as ``__call__``: prefill a prompt, then feed one token at a time.
        """
        c = self.config
        index = cache["index"]
        kv_pos = jax.lax.dynamic_update_slice_in_dim(cache["pos"], positions.astype(jnp.int32), index, axis=1)
        q_pos = jnp.maximum(positions, 0)
        full = attention_mask(q_pos, kv_pos)
        windowed = full if c.sliding_window is None else attention_mask(q_pos, kv_pos, window=c.sliding_window)
        x = self.embed(input_ids)
        inv_freqs = self.inv_freqs(q_pos)  # LongRoPE: the new tokens' positions pick the table
        ks, vs = [], []
        blocks = _unstack(self.layers) if c.scan_layers else self.layers
        for i, block in enumerate(blocks):
            mask = jnp.where(self.sliding[...][i], windowed, full)
            inv_freq = jnp.where(self.sliding[...][i], inv_freqs[1], inv_freqs[0])
            x, k, v = block.decode(x, q_pos, cache["k"][i], cache["v"][i], index, mask, inv_freq)
            ks.append(k)
            vs.append(v)
        logits = self.logits(self.norm(x))
        new_cache = {"k": jnp.stack(ks), "v": jnp.stack(vs), "pos": kv_pos, "index": index + input_ids.shape[1]}
        return logits, new_cache


def _stacked_blocks(config: ModelConfig, rngs: nnx.Rngs):
    """L blocks whose parameters are stacked on a leading "layers" axis (for nnx.scan)."""

    @nnx.split_rngs(splits=config.num_hidden_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
    def create(rngs):
        return Block(config, rngs=rngs)

    blocks = create(rngs)
    for _, var in nnx.iter_graph(blocks):
        if isinstance(var, nnx.Param):
            var.set_metadata("logical_axes", ("layers",) + tuple(var.get_metadata("logical_axes")))
    return blocks


def _unstack(stacked: Block) -> list[Block]:
    """Per-layer views of a stacked block (for the cache path, which loops over layers)."""
    graphdef, state = nnx.split(stacked)
    n = jax.tree.leaves(state)[0].shape[0]
    return [nnx.merge(graphdef, jax.tree.map(lambda x: x[i], state)) for i in range(n)]
