"""LLaDA: the bidirectional masked-diffusion LM of Nie et al., "Large Language Diffusion Models"
(arXiv 2502.09992), in Flax NNX.

The network is the Llama decoder of pojax.models.transformer with one change, the attention
mask: every token sees every other token of its document (no causal mask). There is no
timestep input; noised positions hold ``config.mask_token_id``. So LLaDA reuses transformer's
Block (RMSNorm → GQA attention with rotate-half RoPE → RMSNorm → SwiGLU) unchanged, and differs
from CausalLM only in its mask and in having no KV cache.

Checkpoint names differ from Llama's; pojax.models.hf_io maps them (as data):

  pojax                         LLaDA (model.transformer.*)
  embed_tokens                  wte.weight
  layers.i.input_layernorm      blocks.i.attn_norm
  layers.i.self_attn.{q,k,v}    blocks.i.{q,k,v}_proj
  layers.i.self_attn.o_proj     blocks.i.attn_out
  layers.i.post_attention_...   blocks.i.ff_norm
  layers.i.mlp.gate_proj        blocks.i.ff_proj   (the SiLU branch)
  layers.i.mlp.up_proj          blocks.i.up_proj   (the linear branch)
  layers.i.mlp.down_proj        blocks.i.ff_out
  norm                          ln_f.weight
  lm_head                       ff_out.weight      (untied unless weight_tying)
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from pojax.models import remat
from pojax.models.config import ModelConfig
from pojax.models.layers import attention_mask
from pojax.models.transformer import Block, DecoderStack

# Special tokens of the LLaDA-8B tokenizer (GSAI-ML/LLaDA-8B-Base and -Instruct).
MASK_TOKEN_ID = 126336  # <|mdm_mask|>: the absorbing state of the forward process
EOS_TOKEN_ID = 126081  # <|endoftext|>, also the padding token
EOT_TOKEN_ID = 126348  # <|eot_id|>: ends a chat turn (the Instruct model's end of answer)


def llada_8b(**overrides) -> ModelConfig:
    """GSAI-ML/LLaDA-8B-Base / -Instruct: 32 layers, d 4096, 32 heads (MHA), F 12288, V 126464,
    RoPE θ = 5e5, untied head. ``overrides`` set any ModelConfig field (dtype, scan_layers, ...)."""
    fields = dict(model_type="llada", vocab_size=126464, hidden_size=4096, intermediate_size=12288,
                  num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, head_dim=128,
                  rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=4096,
                  tie_word_embeddings=False, mask_token_id=MASK_TOKEN_ID, eos_token_id=EOS_TOKEN_ID,
                  pad_token_id=EOS_TOKEN_ID)
    return ModelConfig(**{**fields, **overrides})


def _run_block(block: Block, x, positions, mask, inv_freq):
    return block(x, positions, mask, inv_freq)[0]


class LLaDA(DecoderStack):
    """Mask predictor. ``model(input_ids) -> logits [B, T, V]``: at every position, the
    distribution of the clean token given the partly masked sequence; ``hidden_states`` and
    ``lm_head_weight`` feed the chunked log-prob path (pojax.likelihood) as for CausalLM. The
    same blocks as the causal decoder (DecoderStack); only the attention mask differs."""

    MODEL_TYPE = "llada"

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if config.model_type != self.MODEL_TYPE:
            raise ValueError(f"{type(self).__name__} needs a model_type {self.MODEL_TYPE!r} config, got "
                             f"{config.model_type!r}")
        super().__init__(config, rngs=rngs)

    def hidden_states(self, input_ids, *, positions=None, segment_ids=None):
        """Final-norm hidden states [B, T, D] of input_ids [B, T] int32.

        positions [B, T] default to 0..T-1 (as the reference code, padding included); segment_ids
        [B, T] (1.. per packed document, 0 = padding) keep attention inside each document, in
        both directions.
        """
        c = self.config
        b, t = input_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        mask = attention_mask(positions, positions, segment_ids, segment_ids, causal=False)
        x = self.embed(input_ids)
        inv_freq = self.inv_freq[...]
        run = _run_block
        if c.remat != "none":
            run = remat.remat(_run_block, c.remat, sequential=not c.scan_layers)
        if c.scan_layers:
            @nnx.scan(in_axes=(0, nnx.Carry, None, None, None), out_axes=nnx.Carry)
            def scan_fn(block, x, positions, mask, inv_freq):
                return run(block, x, positions, mask, inv_freq)

            x = scan_fn(self.layers, x, positions, mask, inv_freq)
        else:
            for block in self.layers:
                x = run(block, x, positions, mask, inv_freq)
        return self.norm(x)
