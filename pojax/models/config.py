"""ModelConfig: one frozen dataclass for every supported decoder, built from a transformers
config (or its config.json) and exported back to one.

Families (``model_type``): llama (2, 3, 3.1 rope scaling), mistral (sliding window),
qwen2 / qwen2.5 (q/k/v bias, optional per-layer sliding window), qwen3 (q/k RMSNorm).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")
ATTENTION_IMPLS = ("xla", "jax")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture switches of the causal decoder (field names follow transformers').

    Attributes:
      model_type: one of SUPPORTED_MODEL_TYPES.
      vocab_size, hidden_size (D), intermediate_size (F), num_hidden_layers,
      num_attention_heads (H), num_key_value_heads (K), head_dim (Dh): sizes.
      rms_norm_eps: RMSNorm epsilon.
      rope_theta: RoPE base; rope_scaling: transformers' rope_parameters without rope_theta
        (a sorted tuple of (key, value) so the config stays hashable), e.g. llama3's factor.
      max_position_embeddings: positions the checkpoint was configured for.
      tie_word_embeddings: the LM head is the embedding matrix.
      attention_bias: bias on q/k/v (qwen2 always; llama/qwen3 when set); o_proj_bias on o.
      mlp_bias: bias on the SwiGLU projections (llama's mlp_bias).
      qk_norm: RMSNorm over head_dim on q and k before RoPE (qwen3).
      sliding_window: window in tokens, or None; layer_types: per layer "full_attention" |
        "sliding_attention" (mistral: every layer slides when sliding_window is set).
      dtype: compute dtype, param_dtype: parameter dtype ("float32" | "bfloat16"); norms,
        softmax and log-probs are float32 regardless.
      scan_layers: stack the layers and run them with nnx.scan (compile time independent of
        depth), else a Python list of layers.
      remat: per-layer rematerialization policy, one of REMAT_POLICIES.
      attention_impl: "xla" (pojax's explicit-mask attention, float32 softmax) or "jax"
        (jax.nn.dot_product_attention, which may dispatch to cuDNN on GPU).
    """

    model_type: str = "llama"
    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    o_proj_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    layer_types: tuple | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat: str = "none"
    attention_impl: str = "xla"

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {self.model_type!r}; pojax supports {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.layer_types is None:
            kind = "sliding_attention" if (self.model_type == "mistral" and self.sliding_window) else "full_attention"
            object.__setattr__(self, "layer_types", (kind,) * self.num_hidden_layers)
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of num_key_value_heads={self.num_key_value_heads}")
        rope_type = dict(self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(f"unsupported rope_type {rope_type!r}; pojax supports {', '.join(SUPPORTED_ROPE_TYPES)}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"unknown attention_impl {self.attention_impl!r}; known: {', '.join(ATTENTION_IMPLS)}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"unknown remat policy {self.remat!r}; known: {', '.join(REMAT_POLICIES)}")

    @property
    def rope(self) -> dict:
        """rope_parameters as a dict (rope_type, factor, ...), without rope_theta."""
        return dict(self.rope_scaling or {"rope_type": "default"})

    def window(self, layer: int) -> int | None:
        """The sliding window of a layer, or None for full causal attention."""
        return self.sliding_window if self.layer_types[layer] == "sliding_attention" else None

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_config(cls, hf, **overrides) -> "ModelConfig":
        """From a transformers PretrainedConfig (or its dict). ``overrides`` set pojax-only
        fields (dtype, param_dtype, scan_layers, remat)."""
        d = hf if isinstance(hf, dict) else hf.to_dict()
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {model_type!r}; pojax supports {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", d.get("rope_theta", 10000.0))
        rope.setdefault("rope_type", rope.pop("type", "default"))
        sliding = d.get("sliding_window")
        layer_types = d.get("layer_types")
        if model_type in ("qwen2", "qwen3"):
            if not d.get("use_sliding_window", False):
                sliding = None
            if layer_types is None:
                n_full = d.get("max_window_layers", d["num_hidden_layers"])
                layer_types = ["full_attention" if (i < n_full or sliding is None) else "sliding_attention"
                               for i in range(d["num_hidden_layers"])]
            if sliding is None:
                layer_types = ["full_attention"] * d["num_hidden_layers"]
        elif model_type == "mistral":
            layer_types = None  # derived from sliding_window in __post_init__
        else:
            sliding, layer_types = None, None
        fields = dict(
            model_type=model_type,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            head_dim=d.get("head_dim") or d["hidden_size"] // d["num_attention_heads"],
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling=None if rope == {"rope_type": "default"} else tuple(sorted(rope.items())),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=True if model_type == "qwen2" else bool(d.get("attention_bias", False)),
            o_proj_bias=False if model_type == "qwen2" else bool(d.get("attention_bias", False)),
            mlp_bias=bool(d.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            sliding_window=sliding,
            layer_types=None if layer_types is None else tuple(layer_types),
        )
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {d.get('hidden_act')!r}; pojax's decoders use silu (SwiGLU)")
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def from_json(cls, path: str, **overrides) -> "ModelConfig":
        """From a checkpoint directory's config.json (or the file itself)."""
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        with open(path) as f:
            return cls.from_hf_config(json.load(f), **overrides)

    def to_hf_dict(self) -> dict[str, Any]:
        """The transformers config.json content for this architecture."""
        rope = {"rope_theta": self.rope_theta, **self.rope}
        d = dict(
            model_type=self.model_type,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters=rope,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            hidden_act="silu",
            torch_dtype=self.param_dtype,
        )
        if self.model_type == "llama":
            d.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
        elif self.model_type == "qwen3":
            d.update(attention_bias=self.attention_bias)
        if self.model_type == "mistral":
            d.update(sliding_window=self.sliding_window)
        if self.model_type in ("qwen2", "qwen3"):
            sliding = "sliding_attention" in self.layer_types
            d.update(use_sliding_window=sliding, sliding_window=self.sliding_window, layer_types=list(self.layer_types),
                     max_window_layers=self.layer_types.index("sliding_attention") if sliding else self.num_hidden_layers)
        d["architectures"] = [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                               "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[self.model_type]]
        return d

    def to_hf_config(self):
        """A transformers config object (AutoConfig.for_model) for this architecture."""
        from transformers import AutoConfig

        d = self.to_hf_dict()
        return AutoConfig.for_model(d.pop("model_type"), **d)
