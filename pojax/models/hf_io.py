"""Hugging Face checkpoints ↔ pojax NNX models.

``from_pretrained(dir)`` reads config.json and the *.safetensors files (a single file or a
sharded set with model.safetensors.index.json) straight into the model's (optionally mesh-
sharded) parameters: each device reads only its own slice of each tensor, so the full model is
never gathered on one host. ``save_pretrained(model, dir)`` writes the same layout back, which
transformers loads unchanged, with the special-token ids and generation_config.json of the
source checkpoint (so an export stops generating where the source model does). LLaDA checkpoints (config.json model_type "llada", tensors
``model.transformer.*``) load as pojax.models.llada.LLaDA and are written back in that layout.

The name map is data: ``_TOP`` and ``_LAYER`` below (``_LLADA_TOP`` and ``_LLADA_LAYER`` for
LLaDA) pair each pojax parameter path with its checkpoint tensor name and how the layout
differs (transformers' Linear stores [out, in]; pojax stores kernels as [in..., out...] with
heads split out). All problems of a checkpoint (missing tensors, missing shard files, shapes
that disagree with config.json) are collected and raised together in one error before any
parameter is replaced.

Only safetensors are read: a directory holding just a PyTorch pickle (pytorch_model.bin) is
refused with the command that converts it, since unpickling runs code from the file.
"""
from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from pojax import sharding
from pojax.models.config import TOKEN_ID_KEYS, ModelConfig
from pojax.models import moe
from pojax.models.dream import Dream
from pojax.models.llada import LLaDA
from pojax.models.transformer import CausalLM

NETWORKS = {"llada": LLaDA, "dream": Dream}  # model_type -> network class; absent: CausalLM


def network_class(config: ModelConfig):
    """The pojax network of a config: LLaDA, Dream, or the causal decoder CausalLM."""
    return NETWORKS.get(config.model_type, CausalLM)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
GENERATION_FILE = "generation_config.json"
# PyTorch pickle checkpoints: refused (never unpickled), with how to convert them to safetensors
PICKLE_SUFFIXES = (".bin", ".bin.index.json", ".pt", ".pth", ".ckpt")

# pojax path (within the model) -> (transformers name, layout); layout "copy" (same shape),
# "reshape" (same data, heads split), or ("linear", n_in): a transformers [out, in] weight
# stored as [in..., out...] whose first n_in dims are the input.
_TOP = {
    ("embed_tokens",): ("model.embed_tokens.weight", "copy"),
    ("norm", "weight"): ("model.norm.weight", "copy"),
    ("lm_head",): ("lm_head.weight", ("linear", 1)),
}
_LAYER = {
    ("input_layernorm", "weight"): "input_layernorm.weight",
    ("post_attention_layernorm", "weight"): "post_attention_layernorm.weight",
    ("pre_feedforward_layernorm", "weight"): "pre_feedforward_layernorm.weight",  # gemma2
    ("post_feedforward_layernorm", "weight"): "post_feedforward_layernorm.weight",  # gemma2
    ("self_attn", "q_proj", "kernel"): "self_attn.q_proj.weight",
    ("self_attn", "k_proj", "kernel"): "self_attn.k_proj.weight",
    ("self_attn", "v_proj", "kernel"): "self_attn.v_proj.weight",
    ("self_attn", "o_proj", "kernel"): "self_attn.o_proj.weight",
    ("self_attn", "q_proj", "bias"): "self_attn.q_proj.bias",
    ("self_attn", "k_proj", "bias"): "self_attn.k_proj.bias",
    ("self_attn", "v_proj", "bias"): "self_attn.v_proj.bias",
    ("self_attn", "o_proj", "bias"): "self_attn.o_proj.bias",
    ("self_attn", "q_norm", "weight"): "self_attn.q_norm.weight",
    ("self_attn", "k_norm", "weight"): "self_attn.k_norm.weight",
    ("mlp", "gate_proj", "kernel"): "mlp.gate_proj.weight",
    ("mlp", "up_proj", "kernel"): "mlp.up_proj.weight",
    ("mlp", "down_proj", "kernel"): "mlp.down_proj.weight",
    ("mlp", "gate_proj", "bias"): "mlp.gate_proj.bias",
    ("mlp", "up_proj", "bias"): "mlp.up_proj.bias",
    ("mlp", "down_proj", "bias"): "mlp.down_proj.bias",
}
_N_IN = {"o_proj": 2}  # kernels whose input is two dims (heads, head_dim); all others one

# LLaDA (GSAI-ML/LLaDA-8B modeling_llada.py, LLaDALlamaBlock): the same parameters under OLMo-style
# names. ff_proj is the SiLU (gate) branch, up_proj the linear one; ff_out inside a block is the
# MLP's down projection, transformer.ff_out the (untied) LM head.
_LLADA_TOP = {
    ("embed_tokens",): ("model.transformer.wte.weight", "copy"),
    ("norm", "weight"): ("model.transformer.ln_f.weight", "copy"),
    ("lm_head",): ("model.transformer.ff_out.weight", ("linear", 1)),
}
_LLADA_LAYER = {
    ("input_layernorm", "weight"): "attn_norm.weight",
    ("post_attention_layernorm", "weight"): "ff_norm.weight",
    ("self_attn", "q_proj", "kernel"): "q_proj.weight",
    ("self_attn", "k_proj", "kernel"): "k_proj.weight",
    ("self_attn", "v_proj", "kernel"): "v_proj.weight",
    ("self_attn", "o_proj", "kernel"): "attn_out.weight",
    ("self_attn", "q_proj", "bias"): "q_proj.bias",
    ("self_attn", "k_proj", "bias"): "k_proj.bias",
    ("self_attn", "v_proj", "bias"): "v_proj.bias",
    ("mlp", "gate_proj", "kernel"): "ff_proj.weight",
    ("mlp", "up_proj", "kernel"): "up_proj.weight",
    ("mlp", "down_proj", "kernel"): "ff_out.weight",
}
# Mixture-of-experts MLPs (pojax.models.moe): the router and each expert's three [out, in]
# Linears; "{e}" is the expert. pojax stacks the experts of a layer as [E, in, out].
_MOE_LAYER = {
    "mixtral": {("mlp", "router"): "block_sparse_moe.gate.weight",
                ("mlp", "gate_proj"): "block_sparse_moe.experts.{e}.w1.weight",
                ("mlp", "down_proj"): "block_sparse_moe.experts.{e}.w2.weight",
                ("mlp", "up_proj"): "block_sparse_moe.experts.{e}.w3.weight"},
    "qwen3_moe": {("mlp", "router"): "mlp.gate.weight",
                  ("mlp", "gate_proj"): "mlp.experts.{e}.gate_proj.weight",
                  ("mlp", "up_proj"): "mlp.experts.{e}.up_proj.weight",
                  ("mlp", "down_proj"): "mlp.experts.{e}.down_proj.weight"},
}
# model_type -> (top-level map, per-layer map, per-layer name prefix); absent: the causal decoders.
_FAMILY_MAPS = {"llada": (_LLADA_TOP, _LLADA_LAYER, "model.transformer.blocks.{}.")}
_CAUSAL_MAPS = (_TOP, _LAYER, "model.layers.{}.")


def _phi3_maps(config: ModelConfig):
    """Phi-3 / Phi-4 (Phi3ForCausalLM) fuse q, k, v into self_attn.qkv_proj [(H + 2K)·Dh, D] and
    gate, up into mlp.gate_up_proj [2F, D]: each pojax kernel is a row range of the fused
    tensor, layout ("fused", n_in, start, stop, total)."""
    q, kv, f = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim, \
        config.intermediate_size
    qkv, gate_up = q + 2 * kv, 2 * f
    fused = {
        ("self_attn", "q_proj", "kernel"): ("self_attn.qkv_proj.weight", ("fused", 1, 0, q, qkv)),
        ("self_attn", "k_proj", "kernel"): ("self_attn.qkv_proj.weight", ("fused", 1, q, q + kv, qkv)),
        ("self_attn", "v_proj", "kernel"): ("self_attn.qkv_proj.weight", ("fused", 1, q + kv, qkv, qkv)),
        ("mlp", "gate_proj", "kernel"): ("mlp.gate_up_proj.weight", ("fused", 1, 0, f, gate_up)),
        ("mlp", "up_proj", "kernel"): ("mlp.gate_up_proj.weight", ("fused", 1, f, gate_up, gate_up)),
    }
    layer = {k: v for k, v in _LAYER.items() if k[-1] != "bias" and k[:2] not in (
        ("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("mlp", "gate_proj"), ("mlp", "up_proj"))}
    return _TOP, {**layer, **fused}, "model.layers.{}."


class CheckpointError(ValueError):
    """A checkpoint that does not match its config or is incomplete (every problem listed)."""


def _layout(suffix: tuple) -> object:
    if suffix[-1] == "kernel" or suffix[0] == "mlp" and suffix[-1] in ("router", "gate_proj", "up_proj", "down_proj"):
        return ("linear", _N_IN.get(suffix[-2], 1))
    if suffix[-1] == "bias" and suffix[-2] in ("q_proj", "k_proj", "v_proj"):
        return "reshape"
    if suffix[-1] == "weight" and suffix[-2] in ("q_norm", "k_norm"):  # OLMo 2's [H·Dh] norms are [H, Dh] here
        return "reshape"
    return "copy"


def _layer_maps(config: ModelConfig):
    """(top-level map, per-layer map, per-layer name prefix) of a family."""
    if config.model_type == "phi3":
        return _phi3_maps(config)
    top, layer, prefix = _FAMILY_MAPS.get(config.model_type, _CAUSAL_MAPS)
    if config.model_type in _MOE_LAYER:
        dense_mlp = {k for k in layer if k[0] == "mlp"}
        layer = {**{k: v for k, v in layer.items() if k not in dense_mlp}, **_MOE_LAYER[config.model_type]}
    return top, layer, prefix


def name_map(model: CausalLM | LLaDA) -> dict[tuple, tuple]:
    """pojax param path -> (transformers names, layout): ``names`` is an object array whose
    shape is the parameter's leading dims that index checkpoint tensors (the layer axis of a
    parameter stacked under nnx.scan, the expert axis of a mixture of experts; 0-d: one tensor),
    each entry the name of the tensor of that slice."""
    out = {}
    c = model.config
    top, layer, prefix = _layer_maps(c)
    state = nnx.state(model, nnx.Param)
    for path, _ in nnx.to_flat_state(state):
        path = tuple(path)
        if path in top:
            name, layout = top[path]
            out[path] = (np.array(name, dtype=object), layout)
        elif path[0] == "layers":
            if c.scan_layers:
                suffix, prefixes = path[1:], [prefix.format(i) for i in range(c.num_hidden_layers)]
            else:
                suffix, prefixes = path[2:], [prefix.format(path[1])]
            if suffix not in layer:
                raise KeyError(f"no {c.model_type} checkpoint name for pojax parameter {path}")
            name, layout = layer[suffix] if isinstance(layer[suffix], tuple) else (layer[suffix], _layout(suffix))
            names = [[p + name.format(e=e) for e in range(c.num_experts)] if "{e}" in name else p + name
                     for p in prefixes]
            names = np.array(names, dtype=object)
            out[path] = (names if c.scan_layers else names[0, ...], layout)
        else:
            raise KeyError(f"no transformers name for pojax parameter {path}")
    return out


def hf_shape(shape: tuple, layout) -> tuple:
    """The transformers shape of a pojax parameter of ``shape`` (one layer's slice)."""
    if layout == "copy":
        return tuple(shape)
    if layout == "reshape":
        return (math.prod(shape),)
    n_in = layout[1]
    if layout[0] == "fused":  # the whole fused tensor
        return (layout[4], math.prod(shape[:n_in]))
    return (math.prod(shape[n_in:]), math.prod(shape[:n_in]))


def to_pojax(w: np.ndarray, shape: tuple, layout) -> np.ndarray:
    """A full transformers tensor in pojax's layout."""
    if layout in ("copy", "reshape"):
        return w.reshape(shape)
    if layout[0] == "fused":
        w = w[layout[2]:layout[3]]
    return w.T.reshape(shape)


def to_hf(w: np.ndarray, layout) -> np.ndarray:
    """A full pojax parameter in transformers' layout (a fused parameter: its own rows only;
    ``save_pretrained`` places them in the fused tensor)."""
    if layout == "copy":
        return w
    if layout == "reshape":
        return w.reshape(-1)
    n_in = layout[1]
    return np.ascontiguousarray(w.reshape(math.prod(w.shape[:n_in]), -1).T)


class _Checkpoint:
    """Lazy access to the tensors of a checkpoint directory, file by file."""

    def __init__(self, path: str):
        self.path = path
        index = os.path.join(path, INDEX_FILE)
        if os.path.exists(index):
            with open(index) as f:
                self.where = json.load(f)["weight_map"]
        elif os.path.exists(os.path.join(path, SINGLE_FILE)):
            with safe_open(os.path.join(path, SINGLE_FILE), framework="numpy") as f:
                self.where = {k: SINGLE_FILE for k in f.keys()}
        else:
            pickled = sorted(f for f in os.listdir(path) if f.endswith(PICKLE_SUFFIXES))
            if pickled:  # torch.load unpickles, and unpickling runs code that came with the file
                raise CheckpointError(
                    f"{path}: only {pickled[0]} (a PyTorch pickle) is here, and pojax loads safetensors only because "
                    "unpickling can run code from the file. Convert it once where you trust the file: "
                    "transformers.AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True) "
                    f"writes {SINGLE_FILE}")
            raise CheckpointError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE}")
        self._open = {}

    def file_of(self, name: str) -> str | None:
        return self.where.get(name)

    def handle(self, name: str):
        fname = self.where[name]
        if fname not in self._open:
            self._open[fname] = safe_open(os.path.join(self.path, fname), framework="numpy")
        return self._open[fname]

    def shape(self, name: str) -> tuple:
        return tuple(self.handle(name).get_slice(name).get_shape())

    def read(self, name: str, rows=None, cols=None) -> np.ndarray:
        """The tensor, or its [rows, cols] block (slices) of a 2-D tensor."""
        s = self.handle(name).get_slice(name)
        if rows is None:
            return s[:]
        return s[rows, cols]


def read_tensor(path: str, name: str) -> tuple[np.ndarray | None, str]:
    """(the tensor ``name`` of the checkpoint dir ``path`` or None when it has none, the file that
    holds it or that lists the tensors: a shard, model.safetensors or the index)."""
    ckpt = _Checkpoint(path)
    fname = ckpt.file_of(name)
    if fname is None:
        return None, os.path.join(path, INDEX_FILE if os.path.exists(os.path.join(path, INDEX_FILE)) else SINGLE_FILE)
    return ckpt.read(name), os.path.join(path, fname)


def _check(ckpt: _Checkpoint, names: dict, abstract: dict) -> None:
    problems = []
    for path, (hf_names, layout) in names.items():
        want = hf_shape(abstract[path].shape[hf_names.ndim:], layout)
        for name in hf_names.flat:
            fname = ckpt.file_of(name)
            if fname is None:
                problems.append(f"tensor {name!r} is missing")
            elif not os.path.exists(os.path.join(ckpt.path, fname)):
                problems.append(f"tensor {name!r}: shard file {fname!r} is missing")
            elif ckpt.shape(name) != want:
                problems.append(f"tensor {name!r} in {fname} has shape {ckpt.shape(name)} but config.json implies {want} "
                                f"(pojax parameter {'.'.join(map(str, path))}); is config.json the checkpoint's own?")
    if problems:
        raise CheckpointError(f"checkpoint {ckpt.path}: " + "; ".join(problems))


def _region(index: tuple, shape: tuple) -> list[np.ndarray]:
    return [np.arange(*sl.indices(n)) for sl, n in zip(index, shape)]


def _read_block(ckpt: _Checkpoint, name: str, shape: tuple, layout, index: tuple) -> np.ndarray:
    """The block ``index`` (slices of pojax's ``shape``) of one layer's parameter, reading only
    the rows/columns of the transformers tensor that the block covers."""
    if layout in ("copy", "reshape") or len(shape) < 2:
        return to_pojax(ckpt.read(name), shape, layout)[index]
    n_in = layout[1]
    region = _region(index, shape)
    in_idx = np.ravel_multi_index(np.meshgrid(*region[:n_in], indexing="ij"), shape[:n_in]).ravel()
    out_idx = np.ravel_multi_index(np.meshgrid(*region[n_in:], indexing="ij"), shape[n_in:]).ravel()
    lo_in, hi_in, lo_out, hi_out = in_idx.min(), in_idx.max() + 1, out_idx.min(), out_idx.max() + 1
    row0 = layout[2] if layout[0] == "fused" else 0  # a fused parameter's rows start at its offset
    w = ckpt.read(name, slice(row0 + lo_out, row0 + hi_out), slice(lo_in, hi_in))  # [out, in] bounding block
    block = w[np.ix_(out_idx - lo_out, in_idx - lo_in)].T
    return block.reshape([len(r) for r in region])


def load_into(model: CausalLM | LLaDA, path: str, *, mesh=None, rules=None) -> CausalLM | LLaDA:
    """Fills an (abstract or concrete) model's parameters from the checkpoint at ``path``."""
    ckpt = _Checkpoint(path)
    names = name_map(model)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    flat = dict((tuple(p), v) for p, v in nnx.to_flat_state(params))
    _check(ckpt, names, flat)
    rules = rules or sharding.DEFAULT_RULES
    new = {}
    for path_, var in flat.items():
        hf_names, layout = names[path_]
        shape, dtype = tuple(var.shape), var.dtype
        logical = var.get_metadata("logical_axes")
        if mesh is not None:
            target = sharding.logical_to_sharding(logical, mesh, rules, shape=shape)
        else:
            target = jax.sharding.SingleDeviceSharding(jax.devices()[0])

        def read(index, hf_names=hf_names, layout=layout, shape=shape, dtype=dtype):
            index = tuple(index) + (slice(None),) * (len(shape) - len(index))
            lead = hf_names.ndim  # leading dims (layers, experts) that pick a tensor
            picked = np.asarray(hf_names[index[:lead]], dtype=object)
            blocks = [_read_block(ckpt, name, shape[lead:], layout, index[lead:]) for name in picked.flat]
            return np.stack(blocks).reshape(picked.shape + blocks[0].shape).astype(dtype)

        new[path_] = var.replace(jax.make_array_from_callback(shape, target, read))
    params = nnx.from_flat_state([(p, v) for p, v in new.items()])
    rest = jax.tree.map(lambda x: jnp.asarray(x) if isinstance(x, jax.ShapeDtypeStruct) else x, rest)
    return nnx.merge(graphdef, params, rest)


def from_pretrained(path: str, *, dtype=jnp.float32, param_dtype=None, mesh=None, rules=None,
                    **config_overrides) -> CausalLM | LLaDA:
    """Loads a transformers checkpoint directory (config.json + safetensors) as a CausalLM, or
    as a LLaDA / Dream when config.json's model_type is "llada" / "Dream".

    ``dtype`` sets the compute dtype and, unless ``param_dtype`` is given, the parameter dtype
    (training keeps float32 parameters with bfloat16 compute); ``mesh`` shards parameters by their logical
    axes (pojax.sharding rules); ``config_overrides`` set pojax-only ModelConfig fields
    (scan_layers, remat, ...).
    """
    if not os.path.exists(os.path.join(path, "config.json")):
        raise CheckpointError(f"{path}: no config.json")
    name = jnp.dtype(dtype).name
    pname = jnp.dtype(param_dtype).name if param_dtype is not None else name
    config = _read_config(path, dtype=name, param_dtype=pname, **config_overrides)
    cls = network_class(config)
    abstract = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
    _fill_static(abstract, config)
    return load_into(abstract, path, mesh=mesh, rules=rules)


def load_decoder(path: str, config: ModelConfig, *, mesh=None, rules=None) -> CausalLM | LLaDA:
    """The network of ``config`` (CausalLM, or LLaDA for model_type "llada") with its parameters
    read from the checkpoint dir ``path``, never materialized at random first. A CausalLM whose
    config ties the embeddings has no LM head to read (a sequence classifier's backbone)."""
    cls = network_class(config)
    abstract = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
    _fill_static(abstract, config)
    return load_into(abstract, path, mesh=mesh, rules=rules)


def _read_config(path: str, **overrides) -> ModelConfig:
    """The ModelConfig of a checkpoint dir's config.json, with its generation_config.json (kept
    for export); a LLaDA config without its mask token id is refused (the reference code would
    silently fall back to GPT-2's 50256)."""
    fname = os.path.join(path, "config.json")
    with open(fname) as f:
        d = json.load(f)
    if d.get("model_type") == "llada" and d.get("mask_token_id") is None:
        raise CheckpointError(f"{fname}: key 'mask_token_id' is missing or null; a LLaDA checkpoint needs the "
                              "id of its [MASK] token (126336 for GSAI-ML/LLaDA-8B)")
    gen = os.path.join(path, GENERATION_FILE)
    if os.path.exists(gen):
        with open(gen) as f:
            overrides = {"generation_config": json.dumps(json.load(f), sort_keys=True), **overrides}
    try:
        return ModelConfig.from_hf_config(d, **overrides)
    except (ValueError, KeyError, TypeError) as e:  # an unsupported family or a malformed config: name the file
        raise CheckpointError(f"{fname}: {e}") from None


def _fill_static(model: CausalLM | LLaDA, config: ModelConfig) -> None:
    """Concrete values for the non-parameter variables that eval_shape left abstract."""
    from pojax.models.layers import rope_inv_freq

    model.inv_freq.set_value(rope_inv_freq(config.rotary_dim, config.rope_theta, config.rope))
    if hasattr(model, "inv_freq_long"):
        model.inv_freq_long.set_value(rope_inv_freq(config.rotary_dim, config.rope_theta, config.rope, long=True))
    if hasattr(model, "inv_freq_local"):
        model.inv_freq_local.set_value(rope_inv_freq(config.rotary_dim, config.sliding_rope_theta, config.sliding_rope))
    if hasattr(model, "sliding"):
        model.sliding.set_value(jnp.array([t == "sliding_attention" for t in config.layer_types]))
    if hasattr(model, "router_stats"):
        model.router_stats.set_value(moe.empty_stats(config.num_experts).get_value())


def hf_config_files(config: ModelConfig, *, token_ids: dict | None = None) -> tuple[dict, dict | None]:
    """(config.json, generation_config.json or None) of an export of a model with ``config``.

    config.json carries the special-token ids of ``config`` (those of the checkpoint it was read
    from), updated by ``token_ids`` (e.g. the gym's BOS / PAD for a random model; a None there is
    written as null, so that transformers' per-family default, Llama's EOS 2, claims nothing).
    generation_config.json is the source checkpoint's own (``config.generation_config``: EOS
    list, sampling defaults, verbatim) when it had one, else the token ids alone, else None.
    """
    hf = config.to_hf_dict()
    hf.update({k: list(v) if isinstance(v, tuple) else v for k, v in (token_ids or {}).items()})
    if config.generation_config is not None:
        return hf, json.loads(config.generation_config)
    gen = {k: hf[k] for k in TOKEN_ID_KEYS if hf.get(k) is not None}
    return hf, gen or None


def save_pretrained(model: CausalLM | LLaDA, path: str, *, max_shard_bytes: int = 5 * 2**30,
                    token_ids: dict | None = None) -> None:
    """Writes config.json and generation_config.json (``hf_config_files``: the source
    checkpoint's token ids and generation config, ``token_ids`` on top) and safetensors (sharded
    with an index above ``max_shard_bytes``)."""
    os.makedirs(path, exist_ok=True)
    names = name_map(model)
    tensors = {}
    for p, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        hf_names, layout = names[tuple(p)]
        value = np.asarray(jax.device_get(var[...]))
        for i in np.ndindex(hf_names.shape):
            name, piece = hf_names[i], to_hf(value[i], layout)
            if layout not in ("copy", "reshape") and layout[0] == "fused":  # rows of a fused tensor
                whole = tensors.setdefault(name, np.zeros((layout[4], piece.shape[1]), piece.dtype))
                whole[layout[2]:layout[3]] = piece
            else:
                tensors[name] = piece
    shards, current, size = [], {}, 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensors[name]
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(path, SINGLE_FILE), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(path, fname), metadata={"format": "pt"})
            weight_map.update({name: fname for name in shard})
        total = sum(t.nbytes for t in tensors.values())
        with open(os.path.join(path, INDEX_FILE), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    hf, gen = hf_config_files(model.config, token_ids=token_ids)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    if gen is not None:
        with open(os.path.join(path, GENERATION_FILE), "w") as f:
            json.dump(gen, f, indent=2)
