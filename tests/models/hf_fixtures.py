"""Tiny random transformers checkpoints in the upstream layout, made by the tests themselves."""
import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from experiments.parity import common as parity_common

VOCAB = 97

VARIANTS = {
    "llama-gqa": ("llama", dict(num_attention_heads=4, num_key_value_heads=2)),
    "llama-mha-tied": ("llama", dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)),
    "llama31-rope": ("llama", dict(num_attention_heads=4, num_key_value_heads=1, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "llama-linear-rope-bias": ("llama", dict(attention_bias=True, mlp_bias=True, rope_parameters={
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})),
    "mistral-window": ("mistral", dict(num_attention_heads=4, num_key_value_heads=2, sliding_window=3)),
    "qwen2-tied": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen2-window": ("qwen2", dict(use_sliding_window=True, sliding_window=4, max_window_layers=1,
                                   layer_types=["full_attention", "sliding_attention"])),
    "qwen3-qknorm": ("qwen3", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16)),
    # caps small enough to bite on random weights; layer 0 slides over 4 tokens, layer 1 is global
    "gemma2-capped": ("gemma2", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
                                     sliding_window=4, attn_logit_softcapping=3.0, final_logit_softcapping=5.0)),
    # Gemma 3's text decoder: q/k norms, local / global RoPE bases (linear scaling on the global one)
    "gemma3-text": ("gemma3_text", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
                                        sliding_window=4, layer_types=["sliding_attention", "full_attention"],
                                        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0,
                                                                            "rope_theta": 1_000_000.0},
                                                         "sliding_attention": {"rope_type": "default",
                                                                               "rope_theta": 100.0}})),
    "olmo2-bias": ("olmo2", dict(num_attention_heads=4, num_key_value_heads=2, attention_bias=True)),
    # fused qkv / gate_up in the checkpoint; half of each head rotates; every layer slides over 4 tokens
    "phi3-partial-window": ("phi3", dict(num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, sliding_window=4,
                                         partial_rotary_factor=0.5)),
    # LongRoPE with a short original length (8): the tests' 11-token rows take the long table
    "phi3-longrope": ("phi3", dict(num_attention_heads=4, num_key_value_heads=2, pad_token_id=0,
                                   original_max_position_embeddings=8, rope_parameters={
                                       "rope_type": "longrope", "rope_theta": 10000.0,
                                       "short_factor": [1.0, 1.3, 1.7, 2.1], "long_factor": [1.5, 2.5, 4.0, 8.0]})),
    # mixtures of experts: 4 experts, top-2 (Mixtral renormalizes; this Qwen3-MoE does not)
    "mixtral-window": ("mixtral", dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=4)),
    "qwen3moe-unnormed": ("qwen3_moe", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
                                            head_dim=16, norm_topk_prob=False)),
}


def make_checkpoint(variant: str, path, seed: int = 0, num_layers: int = 2):
    """Saves a random-init transformers model of ``variant`` to ``path``; returns the model.

    Norm weights and biases are randomized too (their init is ones / zeros, which would hide
    a missing or misplaced parameter).
    """
    model_type, kw = VARIANTS[variant]
    kw = dict(kw)
    kw.setdefault("num_attention_heads", 4)
    kw.setdefault("num_key_value_heads", 2)
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                                  num_hidden_layers=num_layers, max_position_embeddings=64, **kw)
    torch.manual_seed(seed)
    model = randomize_(AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval())
    model.save_pretrained(path)
    return model


def randomize_(model):
    """Every parameter of a torch model redrawn in place (norms around 1, biases and weights
    around 0): the ones / zeros init of norms and biases would hide a misplaced parameter."""
    # Gemma's (1 + w) norms store w around 0; they get 1 + w around 1 too
    return parity_common.randomize_(model, 0.0 if model.config.model_type.startswith("gemma") else 1.0)


def torch_logits(model, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        kw = {} if attention_mask is None else {"attention_mask": torch.as_tensor(attention_mask)}
        return model(torch.as_tensor(input_ids), **kw).logits.float().numpy()


def tiny_judge(path, words) -> str:
    """A tiny random Llama judge (seed 1) with a word-level tokenizer of ``words``, saved to
    ``path`` as transformers does."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.data.tokenizer_fixture import word_tokenizer

    word_tokenizer(words).save_pretrained(path)
    torch.manual_seed(1)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(path)
    return str(path)
