"""LLaDA test fixtures: the committed golden checkpoint, edited copies of it, and a float64 numpy
forward written from the LLaDA-8B checkpoint's semantics (independent of pojax and of the
PyTorch reference), with switches for the usual porting mistakes."""
import json
import os
import shutil

import numpy as np
from safetensors.numpy import load_file, save_file

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "..", "golden")
GOLDEN_CKPT = os.path.join(GOLDEN_DIR, "llada_tiny")
GOLDEN_NPZ = os.path.join(GOLDEN_DIR, "llada_tiny.npz")
BLOCK = "model.transformer.blocks.{}."


def golden() -> dict:
    with np.load(GOLDEN_NPZ) as f:
        return {k: f[k] for k in f.files}


def read_checkpoint(path: str = GOLDEN_CKPT) -> tuple[dict, dict]:
    """(config.json dict, {tensor name: float64 array}) of a single-file checkpoint."""
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    tensors = {k: v.astype(np.float64) for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
    return config, tensors


def edited_checkpoint(dst, *, tensors=None, config=None, src: str = GOLDEN_CKPT) -> str:
    """A copy of ``src`` at ``dst`` whose tensors / config.json are replaced by ``tensors(dict)``
    / ``config(dict)`` (functions editing them in place)."""
    dst = str(dst)
    shutil.copytree(src, dst, dirs_exist_ok=True)
    if tensors is not None:
        t = load_file(os.path.join(dst, "model.safetensors"))
        tensors(t)
        save_file(t, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    if config is not None:
        with open(os.path.join(dst, "config.json")) as f:
            c = json.load(f)
        config(c)
        with open(os.path.join(dst, "config.json"), "w") as f:
            json.dump(c, f)
    return dst


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * w


def _rope(x, positions, theta, interleaved: bool):
    """x [B, T, N, Dh]; LLaDA rotates the halves (dim i with i + Dh/2), GPT-J style interleaved
    RoPE rotates neighbours (2i with 2i + 1)."""
    dh = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, dh, 2) / dh)
    ang = positions[..., None].astype(np.float64) * inv  # [B, T, Dh/2]
    cos, sin = np.cos(ang)[:, :, None], np.sin(ang)[:, :, None]
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = a * cos - b * sin, b * cos + a * sin
        return out
    a, b = x[..., : dh // 2], x[..., dh // 2:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)


def numpy_forward(config: dict, t: dict, ids, *, positions=None, segment_ids=None, causal=False,
                  interleaved_rope=False, swap_mlp=False, tied_head=False) -> np.ndarray:
    """Logits [B, T, V] float64 of a LLaDA checkpoint (config.json dict, tensors by name)."""
    ids = np.asarray(ids)
    b, n = ids.shape
    d, h = config["d_model"], config["n_heads"]
    k = config.get("n_kv_heads") or h
    dh, eps, theta = d // h, config["rms_norm_eps"], config["rope_theta"]
    positions = np.broadcast_to(np.arange(n), (b, n)) if positions is None else np.asarray(positions)
    seg = np.ones((b, n), int) if segment_ids is None else np.asarray(segment_ids)
    allowed = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)  # [B, T, S]
    allowed |= (seg == 0)[:, :, None] & np.eye(n, dtype=bool)  # padding sees itself only: no NaN
    if causal:
        allowed &= np.tril(np.ones((n, n), bool))
    x = t["model.transformer.wte.weight"][ids]
    for i in range(config["n_layers"]):
        w = {name[len(BLOCK.format(i)):]: v for name, v in t.items() if name.startswith(BLOCK.format(i))}
        a = _rms(x, w["attn_norm.weight"], eps)
        q = (a @ w["q_proj.weight"].T + w.get("q_proj.bias", 0.0)).reshape(b, n, h, dh)
        kk = (a @ w["k_proj.weight"].T + w.get("k_proj.bias", 0.0)).reshape(b, n, k, dh)
        v = (a @ w["v_proj.weight"].T + w.get("v_proj.bias", 0.0)).reshape(b, n, k, dh)
        q, kk = _rope(q, positions, theta, interleaved_rope), _rope(kk, positions, theta, interleaved_rope)
        kk, v = np.repeat(kk, h // k, axis=2), np.repeat(v, h // k, axis=2)  # query head j uses kv head j // (H/K)
        s = np.einsum("bthd,bshd->bhts", q, kk) / np.sqrt(dh)
        s = np.where(allowed[:, None], s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        p = s / s.sum(-1, keepdims=True)
        o = np.einsum("bhts,bshd->bthd", p, v).reshape(b, n, d)
        x = x + o @ w["attn_out.weight"].T
        f = _rms(x, w["ff_norm.weight"], eps)
        gate, lin = ("up_proj", "ff_proj") if swap_mlp else ("ff_proj", "up_proj")
        g = f @ w[gate + ".weight"].T
        x = x + (g / (1 + np.exp(-g)) * (f @ w[lin + ".weight"].T)) @ w["ff_out.weight"].T
    x = _rms(x, t["model.transformer.ln_f.weight"], eps)
    tied = tied_head or config.get("weight_tying", True)
    head = t["model.transformer.wte.weight"] if tied else t["model.transformer.ff_out.weight"]
    return x @ head.T
