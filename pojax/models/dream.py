"""Dream: the masked-diffusion LM of Ye et al., "Dream 7B: Diffusion Large Language Models"
(arXiv 2508.15487; Dream-org/Dream-v0-Base-7B, -Instruct-7B), in Flax NNX.

Dream is Qwen2.5-7B's network (q/k/v bias, untied head, RoPE θ 1e6) initialised from that
autoregressive model and trained as a mask predictor, with two changes from a causal decoder:

  - attention is bidirectional (every token sees every token of its document), as LLaDA's;
  - the logits stay where the autoregressive model put them: position i - 1's output predicts
    token i ("shifted" logits; Dream's generation code rolls them right by one, position 0
    keeping its own).

So pojax's Dream is LLaDA's network with Qwen2's checkpoint names (hf_io's causal map) and
hidden states rolled right by one inside each document (``shift_right``): everything downstream
(ELBOs, the diffusion sampler, lm-eval) reads position i as the prediction of token i, for LLaDA
and Dream alike. config.json is Dream's own (model_type "Dream", its code shipped with the
checkpoint; pojax never runs it).
"""
from __future__ import annotations

import jax.numpy as jnp

from pojax.models.llada import LLaDA

MASK_TOKEN_ID = 151666  # <|mask|> of Dream-v0's tokenizer
PAD_TOKEN_ID = 151643  # <|endoftext|>


def shift_right(h_BTD, segment_ids_BT=None):
    """h'[i] = h[i - 1], except at position 0 and at the first token of each packed document
    (segment id changes), which keep their own h[i]. [B, T, D] → [B, T, D]."""
    prev = jnp.concatenate([h_BTD[:, :1], h_BTD[:, :-1]], axis=1)
    if segment_ids_BT is None:
        return prev
    same = jnp.concatenate([jnp.zeros_like(segment_ids_BT[:, :1], bool),
                            segment_ids_BT[:, 1:] == segment_ids_BT[:, :-1]], axis=1)
    return jnp.where(same[..., None], prev, h_BTD)


class Dream(LLaDA):
    """Dream's mask predictor: ``hidden_states`` [B, T, D] at position i predict token i (the
    network's output at i - 1, see the module docstring); ``model(input_ids)`` the logits of
    those. Blocks: Qwen2's (q/k/v bias) under a bidirectional mask."""

    MODEL_TYPE = "dream"

    def hidden_states(self, input_ids, *, positions=None, segment_ids=None):
        return shift_right(super().hidden_states(input_ids, positions=positions, segment_ids=segment_ids), segment_ids)
