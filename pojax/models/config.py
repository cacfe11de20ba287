"""ModelConfig: one frozen dataclass for every supported decoder, built from a transformers
config (or its config.json) and exported back to one.

Families (``model_type``): llama (2, 3, 3.1 rope scaling), mistral (sliding window),
qwen2 / qwen2.5 (q/k/v bias, optional per-layer sliding window), qwen3 (q/k RMSNorm), gemma2
(GeGLU, (1 + w) RMSNorms before and after attention and MLP, scaled embeddings, attention- and
final-logit soft caps, alternating sliding / global layers), gemma3_text (Gemma 3's text decoder:
gemma2's blocks with (1 + w) q/k RMSNorms, 5 sliding layers per global one, and a RoPE base of
their own for the sliding layers), olmo2 (norms after attention and MLP only, q/k RMSNorm over
all heads together), phi3 (Phi-3 / Phi-4: fused qkv and gate_up projections in the checkpoint,
partial rotary embeddings, an optional sliding window on every layer), the mixtures of experts
mixtral (Mistral's attention, every MLP a top-2 of 8 SwiGLU experts, renormalized) and qwen3_moe
(Qwen3's attention, top-k of many experts, renormalized when norm_topk_prob), and the
masked-diffusion LMs llada (LLaDA's own config.json keys, read and written by ``_llada_fields`` and
``_llada_hf_dict``; its network is pojax.models.llada.LLaDA) and dream (Dream-v0: Qwen2's keys
plus mask_token_id under config.json model_type "Dream"; pojax.models.dream.Dream).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "olmo2", "phi3", "mixtral",
                         "qwen3_moe", "llada", "dream")
DIFFUSION_MODEL_TYPES = ("llada", "dream")  # masked-diffusion mask predictors (bidirectional, a [MASK] token)
# config.json model_type spellings that differ from pojax's (Dream's code registers "Dream")
HF_MODEL_TYPES = {"Dream": "dream"}
MOE_MODEL_TYPES = ("mixtral", "qwen3_moe")
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")  # gate activations of the gated MLP (SwiGLU, GeGLU)
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "longrope")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")
ATTENTION_IMPLS = ("xla", "jax")
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def read_token_ids(d: dict) -> dict[str, Any]:
    """The special-token ids a config.json / generation_config.json dict sets (None and absent
    keys left out); a list of EOS ids (Llama 3.1: [128001, 128008, 128009]) becomes a tuple, so
    the config stays hashable."""
    out = {}
    for key in TOKEN_ID_KEYS:
        value = d.get(key)
        if isinstance(value, list):
            value = tuple(value)
        if value is not None:
            out[key] = value
    return out


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
      qk_norm: RMSNorm over head_dim on q and k before RoPE (qwen3, gemma3_text).
      qk_norm_heads: that RMSNorm spans all heads of q (of k) together (olmo2).
      sliding_window: window in tokens, or None; layer_types: per layer "full_attention" |
        "sliding_attention" (mistral: every layer slides when sliding_window is set).
      dtype: compute dtype, param_dtype: parameter dtype ("float32" | "bfloat16"); norms,
        softmax and log-probs are float32 regardless.
      scan_layers: stack the layers and run them with nnx.scan (compile time independent of
        depth), else a Python list of layers.
      remat: per-layer rematerialization policy, one of REMAT_POLICIES.
      attention_impl: "xla" (pojax's explicit-mask attention, float32 softmax) or "jax"
        (jax.nn.dot_product_attention, which may dispatch to cuDNN on GPU).
      mask_token_id: the [MASK] token of a masked-diffusion LM (llada: required; 126336 for
        LLaDA-8B).
      bos_token_id, eos_token_id (an id, or a tuple of ids that each end generation), pad_token_id:
        the checkpoint's special tokens, carried from config.json to the exported config.json
        (transformers and vLLM read them to start, stop and pad generation); None = not set.
      generation_config: the checkpoint's generation_config.json as JSON text (a string keeps the
        config hashable), written back verbatim on export; None = it had none.
      hidden_act: the MLP's gate activation, one of ACTIVATIONS (gemma2: gelu_pytorch_tanh).
      norm_offset: RMSNorms scale by (norm_offset + w) (gemma2: 1, its weights stored as offsets).
      embed_scale: embeddings are multiplied by sqrt(hidden_size) (gemma2).
      query_pre_attn_scalar: attention scale query_pre_attn_scalar^-1/2 instead of head_dim^-1/2.
      attn_logit_softcapping: attention scores become cap · tanh(scores / cap) (gemma2: 50).
      final_logit_softcapping: LM logits become cap · tanh(logits / cap) (gemma2: 30), in the
        full logits and in the vocabulary-tiled log-probs alike.
      partial_rotary_factor: the fraction of each head's dims that RoPE rotates (Phi-4-mini:
        0.75); the rest pass through.
      sliding_rope_theta, sliding_rope_scaling: RoPE of the sliding-window layers when it differs
        from the full-attention layers' (gemma3_text: base 10k, while global layers use 1M with
        linear scaling); None = the same RoPE everywhere.
      num_experts (E): experts of every layer's MLP (mixture of experts, pojax.models.moe);
        0 = a dense MLP. num_experts_per_tok (k): experts each token is routed to;
        moe_intermediate_size: each expert's hidden width; norm_topk_prob: the k routing weights
        are renormalized to sum to 1 (mixtral always); router_aux_loss_coef: the checkpoint's
        weight of the load-balancing loss (the training default of model.router_aux_loss_coef).
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
    qk_norm_heads: bool = False
    sliding_window: int | None = None
    layer_types: tuple | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat: str = "none"
    attention_impl: str = "xla"
    mask_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple | None = None
    pad_token_id: int | None = None
    generation_config: str | None = None
    hidden_act: str = "silu"
    norm_offset: float = 0.0
    embed_scale: bool = False
    query_pre_attn_scalar: float | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    sliding_rope_theta: float | None = None
    sliding_rope_scaling: tuple | None = None
    partial_rotary_factor: float = 1.0
    num_experts: int = 0
    num_experts_per_tok: int = 2
    moe_intermediate_size: int | None = None
    norm_topk_prob: bool = True
    router_aux_loss_coef: float = 0.0

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {self.model_type!r}; pojax supports {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.layer_types is None:
            slides = self.model_type in ("mistral", "phi3", "mixtral") and self.sliding_window
            kind = "sliding_attention" if slides else "full_attention"
            object.__setattr__(self, "layer_types", (kind,) * self.num_hidden_layers)
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of num_key_value_heads={self.num_key_value_heads}")
        for scaling in (self.rope_scaling, self.sliding_rope_scaling):
            rope_type = dict(scaling or {}).get("rope_type", "default")
            if rope_type not in SUPPORTED_ROPE_TYPES:
                raise ValueError(f"unsupported rope_type {rope_type!r}; pojax supports {', '.join(SUPPORTED_ROPE_TYPES)}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"unknown attention_impl {self.attention_impl!r}; known: {', '.join(ATTENTION_IMPLS)}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"unknown remat policy {self.remat!r}; known: {', '.join(REMAT_POLICIES)}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; pojax supports {', '.join(ACTIVATIONS)}")
        if self.attn_logit_softcapping is not None and self.attention_impl != "xla":
            raise ValueError("attn_logit_softcapping needs attention_impl='xla' (jax.nn.dot_product_attention has "
                             "no soft cap)")
        if self.model_type == "llada":
            self._check_llada()
        if self.model_type == "dream" and self.mask_token_id is None:
            raise ValueError("dream needs mask_token_id (the [MASK] token id; 151666 for Dream-v0)")
        if self.num_experts:
            if self.moe_intermediate_size is None:
                object.__setattr__(self, "moe_intermediate_size", self.intermediate_size)
            if not 1 <= self.num_experts_per_tok <= self.num_experts:
                raise ValueError(f"num_experts_per_tok={self.num_experts_per_tok} must be in [1, num_experts="
                                 f"{self.num_experts}]")
        elif self.model_type in MOE_MODEL_TYPES:
            raise ValueError(f"{self.model_type} needs num_experts > 0")

    def _check_llada(self):
        """LLaDA's blocks: d_model split into heads, no sliding window, q/k norm or rope scaling."""
        if self.mask_token_id is None:
            raise ValueError("llada needs mask_token_id (the [MASK] token id; 126336 for LLaDA-8B)")
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(f"mask_token_id={self.mask_token_id} is outside the vocabulary [0, {self.vocab_size})")
        if self.head_dim * self.num_attention_heads != self.hidden_size:
            raise ValueError(f"llada splits d_model={self.hidden_size} into {self.num_attention_heads} heads; "
                             f"head_dim={self.head_dim} does not fit")
        if self.sliding_window is not None or self.qk_norm or self.rope_scaling is not None or self.o_proj_bias or self.mlp_bias:
            raise ValueError("llada has no sliding window, q/k norm, rope scaling, o_proj or mlp bias")

    @property
    def rope(self) -> dict:
        """rope_parameters as a dict (rope_type, factor, ...), without rope_theta."""
        return dict(self.rope_scaling or {"rope_type": "default"})

    @property
    def rope_scale(self) -> float:
        """LongRoPE's attention factor on cos and sin (1 for every other RoPE)."""
        if self.rope.get("rope_type") != "longrope":
            return 1.0
        from pojax.models.layers import longrope_attention_factor

        return longrope_attention_factor(self.rope, self.max_position_embeddings)

    @property
    def rotary_dim(self) -> int:
        """Dims of each head that RoPE rotates (transformers: int(head_dim · partial_rotary_factor))."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def sliding_rope(self) -> dict:
        """The sliding layers' rope_parameters (without rope_theta)."""
        return dict(self.sliding_rope_scaling or {"rope_type": "default"})

    def window(self, layer: int) -> int | None:
        """The sliding window of a layer, or None for full causal attention."""
        return self.sliding_window if self.layer_types[layer] == "sliding_attention" else None

    def token_ids(self) -> dict[str, Any]:
        """The special-token ids that are set: {bos_token_id, eos_token_id, pad_token_id} subset."""
        return {k: getattr(self, k) for k in TOKEN_ID_KEYS if getattr(self, k) is not None}

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_config(cls, hf, **overrides) -> "ModelConfig":
        """From a transformers PretrainedConfig (or its dict). ``overrides`` set pojax-only
        fields (dtype, param_dtype, scan_layers, remat)."""
        d = hf if isinstance(hf, dict) else hf.to_dict()
        model_type = HF_MODEL_TYPES.get(d.get("model_type"), d.get("model_type"))
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {model_type!r}; pojax supports "
                f"{', '.join({v: k for k, v in HF_MODEL_TYPES.items()}.get(t, t) for t in SUPPORTED_MODEL_TYPES)}"
            )
        if model_type == "llada":
            return cls(**{**_llada_fields(d), **overrides})
        per_type = {}
        if model_type == "gemma3_text":  # rope_parameters per layer type
            per_type = _gemma3_rope(d)
            d = {**d, "rope_parameters": per_type["full_attention"]}
        rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", d.get("rope_theta", 10000.0))
        partial = float(rope.pop("partial_rotary_factor", d.get("partial_rotary_factor", 1.0)))
        if rope.get("rope_type") == "longrope":  # its factor lists as tuples (the config stays hashable)
            rope.setdefault("original_max_position_embeddings", d.get("original_max_position_embeddings"))
            rope = {k: tuple(v) if isinstance(v, list) else v for k, v in rope.items() if v is not None}
        rope.setdefault("rope_type", rope.pop("type", "default"))
        sliding = d.get("sliding_window")
        layer_types = d.get("layer_types")
        if model_type == "dream" and d.get("use_sliding_window"):
            raise ValueError("Dream config key 'use_sliding_window' = True is not supported (bidirectional attention "
                             "over the whole sequence)")
        if model_type in ("qwen2", "qwen3", "qwen3_moe"):
            if not d.get("use_sliding_window", False):
                sliding = None
            if layer_types is None:
                n_full = d.get("max_window_layers", d["num_hidden_layers"])
                layer_types = ["full_attention" if (i < n_full or sliding is None) else "sliding_attention"
                               for i in range(d["num_hidden_layers"])]
            if sliding is None:
                layer_types = ["full_attention"] * d["num_hidden_layers"]
        elif model_type in ("mistral", "phi3", "mixtral"):
            layer_types = None  # derived from sliding_window in __post_init__
        elif model_type in ("gemma2", "gemma3_text"):
            if d.get("use_bidirectional_attention"):
                raise ValueError(f"{model_type} config key 'use_bidirectional_attention' = True is not supported "
                                 "(causal only)")
            if layer_types is None:  # transformers' default: every 2nd (gemma2) / 6th (gemma3) layer is global
                every = 2 if model_type == "gemma2" else d.get("sliding_window_pattern", 6)
                layer_types = ["sliding_attention" if (i + 1) % every else "full_attention"
                               for i in range(d["num_hidden_layers"])]
            if sliding is None:
                layer_types = ["full_attention"] * d["num_hidden_layers"]
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
            rope_scaling=_scaling(rope),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=True if model_type in ("qwen2", "dream") else bool(d.get("attention_bias", False)),
            o_proj_bias=False if model_type in ("qwen2", "dream") else bool(d.get("attention_bias", False)),  # olmo2's o
            mlp_bias=bool(d.get("mlp_bias", False)),
            qk_norm=model_type in ("qwen3", "olmo2", "qwen3_moe"),
            qk_norm_heads=model_type == "olmo2",
            sliding_window=sliding,
            layer_types=None if layer_types is None else tuple(layer_types),
            partial_rotary_factor=partial,
            **read_token_ids(d),
        )
        if model_type in ("gemma2", "gemma3_text"):
            fields.update(_gemma2_fields(d))
        if model_type in MOE_MODEL_TYPES:
            fields.update(_moe_fields(d))
        if model_type == "dream":
            fields.update(mask_token_id=d.get("mask_token_id"))
        if model_type == "gemma3_text":
            local = dict(per_type["sliding_attention"])
            fields.update(qk_norm=True, attn_logit_softcapping=d.get("attn_logit_softcapping"),
                          final_logit_softcapping=d.get("final_logit_softcapping"),
                          sliding_rope_theta=float(local.pop("rope_theta")),
                          sliding_rope_scaling=_scaling(local))
        elif d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {d.get('hidden_act')!r}; pojax's {model_type} uses silu (SwiGLU)")
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
        if self.model_type == "llada":
            return _llada_hf_dict(self)
        rope = {"rope_theta": self.rope_theta, **{k: list(v) if isinstance(v, tuple) else v for k, v in self.rope.items()}}
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
            hidden_act=self.hidden_act,
            torch_dtype=self.param_dtype,
        )
        if self.model_type == "gemma3_text":
            d["rope_parameters"] = {"full_attention": d["rope_parameters"],
                                    "sliding_attention": {"rope_theta": self.sliding_rope_theta, **self.sliding_rope}}
        if self.model_type in ("gemma2", "gemma3_text"):
            d.pop("hidden_act")
            d.update(hidden_activation=self.hidden_act, attention_bias=self.attention_bias,
                     query_pre_attn_scalar=self.query_pre_attn_scalar, sliding_window=self.sliding_window,
                     layer_types=list(self.layer_types), attn_logit_softcapping=self.attn_logit_softcapping,
                     final_logit_softcapping=self.final_logit_softcapping)
        if self.model_type == "llama":
            d.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
        elif self.model_type in ("qwen3", "olmo2", "qwen3_moe"):
            d.update(attention_bias=self.attention_bias)
        if self.model_type == "mixtral":
            d.update(num_local_experts=self.num_experts, num_experts_per_tok=self.num_experts_per_tok,
                     router_aux_loss_coef=self.router_aux_loss_coef, router_jitter_noise=0.0,
                     intermediate_size=self.moe_intermediate_size)
        elif self.model_type == "qwen3_moe":
            d.update(num_experts=self.num_experts, num_experts_per_tok=self.num_experts_per_tok,
                     moe_intermediate_size=self.moe_intermediate_size, norm_topk_prob=self.norm_topk_prob,
                     router_aux_loss_coef=self.router_aux_loss_coef, decoder_sparse_step=1, mlp_only_layers=[])
        if self.model_type in ("mistral", "phi3", "mixtral"):
            d.update(sliding_window=self.sliding_window)
        if self.rope.get("rope_type") == "longrope":
            d["original_max_position_embeddings"] = self.rope["original_max_position_embeddings"]
        if self.partial_rotary_factor != 1.0:
            d["rope_parameters"]["partial_rotary_factor"] = self.partial_rotary_factor
        if self.model_type == "dream":
            return _dream_hf_dict(self, d)
        if self.model_type in ("qwen2", "qwen3", "qwen3_moe"):
            sliding = "sliding_attention" in self.layer_types
            d.update(use_sliding_window=sliding, sliding_window=self.sliding_window, layer_types=list(self.layer_types),
                     max_window_layers=self.layer_types.index("sliding_attention") if sliding else self.num_hidden_layers)
        d.update({k: list(v) if isinstance(v, tuple) else v for k, v in self.token_ids().items()})
        d["architectures"] = [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                               "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                               "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM",
                               "olmo2": "Olmo2ForCausalLM", "phi3": "Phi3ForCausalLM",
                               "mixtral": "MixtralForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}[self.model_type]]
        return d

    def to_hf_config(self):
        """A transformers config object (AutoConfig.for_model) for this architecture."""
        from transformers import AutoConfig

        if self.model_type in DIFFUSION_MODEL_TYPES:
            raise ValueError(f"{self.model_type} has no transformers config class (its code ships with the "
                             "checkpoint); use to_hf_dict()")
        d = self.to_hf_dict()
        return AutoConfig.for_model(d.pop("model_type"), **d)


def _scaling(rope: dict) -> tuple | None:
    """ModelConfig's hashable form of rope_parameters without rope_theta: None for plain RoPE,
    else its sorted (key, value) pairs."""
    return None if rope == {"rope_type": "default"} else tuple(sorted(rope.items()))


def _gemma3_rope(d: dict) -> dict:
    """{"full_attention": {...}, "sliding_attention": {...}} rope_parameters of a Gemma3TextConfig
    dict (each with rope_theta and rope_type; transformers' defaults 1M / 10k where absent)."""
    params = d.get("rope_parameters") or {}
    if params and not set(params) <= {"full_attention", "sliding_attention"}:  # the older flat layout
        params = {"full_attention": params}
    out = {}
    for kind, theta in (("full_attention", d.get("rope_theta", 1_000_000.0)),
                        ("sliding_attention", d.get("rope_local_base_freq", 10_000.0))):
        p = dict(params.get(kind) or {})
        p.setdefault("rope_theta", theta)
        p.setdefault("rope_type", p.pop("type", "default"))
        out[kind] = p
    return out


def _gemma2_fields(d: dict) -> dict:
    """The Gemma 2 switches of a transformers Gemma2Config / Gemma3TextConfig dict (their
    defaults where absent)."""
    act = d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ValueError(f"gemma2 config key 'hidden_activation' = {act!r} is not supported (gelu_pytorch_tanh)")
    return dict(hidden_act="gelu_pytorch_tanh", norm_offset=1.0, embed_scale=True,
                query_pre_attn_scalar=d.get("query_pre_attn_scalar", 256),  # transformers' type: int
                attn_logit_softcapping=d.get("attn_logit_softcapping", 50.0),
                final_logit_softcapping=d.get("final_logit_softcapping", 30.0),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
                o_proj_bias=bool(d.get("attention_bias", False)))


def _moe_fields(d: dict) -> dict:
    """The mixture-of-experts fields of a MixtralConfig / Qwen3MoeConfig dict. Mixtral always
    renormalizes its top-k weights; Qwen3-MoE when norm_topk_prob (transformers' default False).
    Keys pojax does not implement are refused by name: router jitter (training-time noise on the
    router input), and Qwen3-MoE's dense layers among the sparse ones (mlp_only_layers,
    decoder_sparse_step)."""
    if d["model_type"] == "mixtral":
        n, width, norm = d.get("num_local_experts", 8), d["intermediate_size"], True
    else:
        n = d.get("num_experts") or d.get("num_local_experts") or 128
        width, norm = d.get("moe_intermediate_size", 768), bool(d.get("norm_topk_prob", False))
        if d.get("mlp_only_layers"):
            raise ValueError(f"qwen3_moe config key 'mlp_only_layers' = {d['mlp_only_layers']} is not supported "
                             "(every layer must be sparse)")
        if d.get("decoder_sparse_step", 1) != 1:
            raise ValueError(f"qwen3_moe config key 'decoder_sparse_step' = {d['decoder_sparse_step']} is not supported "
                             "(1: every layer sparse)")
    if d.get("router_jitter_noise"):
        raise ValueError(f"{d['model_type']} config key 'router_jitter_noise' = {d['router_jitter_noise']} is not "
                         "supported (pojax routes without noise; set it to 0.0)")
    return dict(num_experts=int(n), num_experts_per_tok=int(d.get("num_experts_per_tok", 2)),
                moe_intermediate_size=int(width), norm_topk_prob=norm,
                router_aux_loss_coef=float(d.get("router_aux_loss_coef", 0.001)))


def _dream_hf_dict(c: ModelConfig, d: dict) -> dict[str, Any]:
    """Dream-v0's config.json (the keys its configuration_dream.py reads) from the common ``d``."""
    rope = dict(d.pop("rope_parameters"))
    d.update(model_type="Dream", architectures=["DreamModel"],
             auto_map={"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
             rope_theta=rope.pop("rope_theta"), rope_scaling=None if rope == {"rope_type": "default"} else rope,
             use_sliding_window=False, sliding_window=None, max_window_layers=c.num_hidden_layers,
             attention_dropout=0.0, use_cache=False, mask_token_id=c.mask_token_id)
    d.update({k: list(v) if isinstance(v, tuple) else v for k, v in c.token_ids().items()})
    return d


# ---------------------------------------------------------------------------------------- llada
# LLaDA's config.json (GSAI-ML/LLaDA-8B-*: configuration_llada.py, an OLMo-style config). Keys
# absent from a config.json take the reference code's own defaults (its ModelConfig dataclass),
# so pojax builds what the reference code would build from the same file. Ignored keys:
# rope_full_precision (pojax's RoPE is float32 always), the dropouts (LLaDA-8B's are 0), init_*,
# flash_attention, precision.
_LLADA_DEFAULTS = {
    "d_model": 768, "n_heads": 12, "n_kv_heads": None, "n_layers": 12, "mlp_ratio": 4, "mlp_hidden_size": None,
    "multi_query_attention": None, "vocab_size": 50257, "embedding_size": 50304, "weight_tying": True,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_sequence_length": 1024, "include_qkv_bias": False,
    "eos_token_id": 50256, "pad_token_id": 50256,
}
# Switches of the reference code that pojax's LLaDA does not implement, with the only value (or
# values) accepted; "default" is the reference's value when the key is absent.
_LLADA_FIXED = {
    "block_type": (("llama",), "sequential"),  # separate q/k/v and ff_proj/up_proj (SwiGLU)
    "activation_type": (("silu",), "swiglu"),  # silu(ff_proj(x)) * up_proj(x)
    "layer_norm_type": (("rms",), "default"),
    "layer_norm_with_affine": ((True,), True),
    "rope": ((True,), False),
    "alibi": ((False,), False),
    "include_bias": ((False,), False),
    "bias_for_layer_norm": ((False, None), None),
    "attention_layer_norm": ((False,), False),
    "input_emb_norm": ((False,), False),
    "scale_logits": ((False,), False),
    "block_group_size": ((1,), 1),  # >1 renames the parameters (transformer.block_groups.*)
    "yarn": ((False,), False),  # a RoPE extension of some fine-tunes, not of LLaDA-8B
}


def _llada_fields(d: dict) -> dict:
    """ModelConfig fields of a LLaDA config.json dict (ValueError naming the key otherwise)."""
    def g(key):
        return d[key] if key in d else _LLADA_DEFAULTS[key]

    for key, (allowed, default) in _LLADA_FIXED.items():
        value = d.get(key, default)
        if value not in allowed:
            raise ValueError(f"llada config key {key!r} = {value!r} is not supported; pojax's LLaDA needs "
                             f"{' or '.join(repr(a) for a in allowed)}")
    if d.get("mask_token_id") is None:
        raise ValueError("llada config key 'mask_token_id' is missing (the [MASK] token id; 126336 for LLaDA-8B)")
    n_heads = g("n_heads")
    n_kv = g("n_kv_heads")
    if n_kv is None:
        n_kv = 1 if g("multi_query_attention") else n_heads
    mlp = g("mlp_hidden_size") or g("mlp_ratio") * g("d_model")
    return dict(
        model_type="llada",
        vocab_size=g("embedding_size") or g("vocab_size"),  # rows of wte / ff_out = logits width
        hidden_size=g("d_model"),
        intermediate_size=mlp,
        num_hidden_layers=g("n_layers"),
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        head_dim=g("d_model") // n_heads,
        rms_norm_eps=float(g("rms_norm_eps")),
        rope_theta=float(g("rope_theta")),
        max_position_embeddings=g("max_sequence_length"),
        tie_word_embeddings=bool(g("weight_tying")),
        attention_bias=bool(g("include_qkv_bias")),
        mask_token_id=int(d["mask_token_id"]),
        eos_token_id=g("eos_token_id"),
        pad_token_id=g("pad_token_id"),
    )


def _llada_hf_dict(c: ModelConfig) -> dict[str, Any]:
    """A complete LLaDA config.json (every architecture key explicit: the reference code's
    defaults for absent keys describe a different network)."""
    d = dict(
        model_type="llada",
        architectures=["LLaDAModelLM"],
        auto_map={"AutoConfig": "configuration_llada.LLaDAConfig",
                  "AutoModel": "modeling_llada.LLaDAModelLM",
                  "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        d_model=c.hidden_size,
        n_heads=c.num_attention_heads,
        n_kv_heads=c.num_key_value_heads,
        n_layers=c.num_hidden_layers,
        mlp_hidden_size=c.intermediate_size,
        mlp_ratio=max(1, c.intermediate_size // c.hidden_size),
        multi_query_attention=None,
        vocab_size=c.vocab_size,
        embedding_size=c.vocab_size,
        weight_tying=c.tie_word_embeddings,
        rms_norm_eps=c.rms_norm_eps,
        rope_theta=c.rope_theta,
        rope_full_precision=True,
        max_sequence_length=c.max_position_embeddings,
        include_qkv_bias=c.attention_bias,
        mask_token_id=c.mask_token_id,
        eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id,
        flash_attention=False,
        attention_dropout=0.0,
        residual_dropout=0.0,
        embedding_dropout=0.0,
        alibi_bias_max=8.0,
        attention_layer_norm_with_affine=True,
        init_device="meta",
        init_fn="mitchell",
        init_std=0.02,
        init_cutoff_factor=None,
        use_cache=False,
        torch_dtype=c.param_dtype,
    )
    d.update({key: allowed[0] for key, (allowed, _) in _LLADA_FIXED.items() if key != "yarn"})
    return d
