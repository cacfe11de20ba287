"""Golden files for pojax's Dream from the reference PyTorch modeling code.

Dream's modeling code (configuration_dream.py, modeling_dream.py, generation_utils.py) ships with
the Hugging Face checkpoint (Dream-org/Dream-v0-Base-7B), not on PyPI, so CI cannot run it. This
script builds a tiny random-init DreamModel with that code, saves it in the checkpoint layout, and
records its fp32 logits; tests/models/test_dream.py compares pojax against them.

    python -m experiments.parity.dream_golden --reference=<dir with the three files> [--out=tests/golden]

writes <out>/dream_tiny/{config.json, model.safetensors} (the reference model's weights under its
own tensor names) and <out>/dream_tiny.npz:
  input_ids [B, T] int32 (some [MASK] tokens), logits [B, T, V] float32: the reference's forward
    output, unshifted (Dream's generation reads token i from position i - 1);
  padded_ids [B, T], attention_mask [B, T] int32 (row 0 right-padded), padded_logits [B, T, V]:
    the forward with that 2-D mask;
  reference_sha256, versions: provenance.

The files used for tests/golden came from ZHZisZZ/dllm (dllm/pipelines/dream/models, commit
ca17675), a copy of the Hub code whose forward also takes a 2-D attention mask (the Hub's takes
"full" or a 4-D mask; the network is the same). Under transformers 5.x the reference needs two
shims, applied here: ROPE_INIT_FUNCTIONS lost its "default" entry (restored with transformers
4.x's formula, inv_freq = θ^(-2i/d), attention factor 1), and save_pretrained cannot read the
reference's list-style tied-weight keys (the tensors are written with safetensors directly).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile

import numpy as np

from experiments.parity.common import files_sha256, randomize_

FILES = ("configuration_dream.py", "modeling_dream.py", "generation_utils.py")
# Dream-v0-7B's architecture switches, shrunk: GQA, q/k/v bias, untied head, RoPE θ 1e6.
TINY = dict(vocab_size=120, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
            tie_word_embeddings=False, use_sliding_window=False, mask_token_id=119, pad_token_id=118,
            bos_token_id=117, eos_token_id=118)
SEED = 0
B, T = 2, 12
PADDED = 8  # real tokens of row 0 of the padded batch


def _default_rope(config, device=None, seq_len=None, **kwargs):
    """transformers 4.x's default RoPE parameters (θ^(-2i/d), attention factor 1)."""
    import torch

    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    inv = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    return inv, 1.0


def load_reference(reference_dir: str):
    """(the reference's modeling module, its configuration module), from a private copy."""
    from transformers import modeling_rope_utils

    reference_dir = os.path.abspath(reference_dir)
    missing = [f for f in FILES if not os.path.exists(os.path.join(reference_dir, f))]
    if missing:
        raise FileNotFoundError(f"{reference_dir}: no {', '.join(missing)}")
    modeling_rope_utils.ROPE_INIT_FUNCTIONS.setdefault("default", _default_rope)
    root = tempfile.mkdtemp(prefix="pojax_dream_ref_")
    pkg = os.path.join(root, "dream_reference")
    os.makedirs(pkg)
    for f in FILES:
        shutil.copy(os.path.join(reference_dir, f), pkg)
    open(os.path.join(pkg, "__init__.py"), "w").close()
    sys.path.insert(0, root)
    try:
        return (importlib.import_module("dream_reference.modeling_dream"),
                importlib.import_module("dream_reference.configuration_dream"))
    finally:
        sys.path.remove(root)


def make_reference(modeling, configuration, seed: int = SEED):
    """A random-init reference DreamModel (fp32, eval), norms and biases random too."""
    import torch

    torch.manual_seed(seed)
    return randomize_(modeling.DreamModel(configuration.DreamConfig(**TINY)).float().eval())


def reference_logits(model, ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    import torch

    kw = {} if attention_mask is None else {"attention_mask": torch.as_tensor(attention_mask, dtype=torch.long)}
    with torch.no_grad():
        return model(torch.as_tensor(ids, dtype=torch.long), **kw).logits.float().numpy()


def save_reference_checkpoint(model, path: str) -> None:
    """Dream-v0's layout: config.json (model_type "Dream") and model.safetensors under the
    reference's tensor names (model.layers.*, lm_head.weight)."""
    import torch
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()
               if "rotary_emb" not in k}
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(TINY, model_type="Dream", architectures=["DreamModel"],
               auto_map={"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
               hidden_act="silu", rope_scaling=None, sliding_window=None, max_window_layers=TINY["num_hidden_layers"],
               attention_dropout=0.0, use_cache=False, torch_dtype="float32")
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)


def inputs(seed: int = SEED):
    """Plain rows [B, T] with some [MASK] tokens; padded rows and their 2-D attention mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, TINY["vocab_size"] - 3, (B, T)).astype(np.int32)
    ids[rng.random((B, T)) < 0.3] = TINY["mask_token_id"]
    padded = rng.integers(0, TINY["vocab_size"] - 3, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[0, PADDED:] = 0
    padded[0, PADDED:] = TINY["pad_token_id"]
    padded[:, 3] = TINY["mask_token_id"]
    return ids, padded, mask


def write_golden(reference_dir: str, out: str) -> dict:
    import torch
    import transformers

    modeling, configuration = load_reference(reference_dir)
    model = make_reference(modeling, configuration)
    ckpt = os.path.join(out, "dream_tiny")
    if os.path.exists(ckpt):
        shutil.rmtree(ckpt)
    save_reference_checkpoint(model, ckpt)
    ids, padded, mask = inputs()
    golden = dict(input_ids=ids, logits=reference_logits(model, ids), padded_ids=padded, attention_mask=mask,
                  padded_logits=reference_logits(model, padded, mask),
                  reference_sha256=np.array(files_sha256(reference_dir, FILES)),
                  versions=np.array(f"torch {torch.__version__}, transformers {transformers.__version__}"))
    np.savez_compressed(os.path.join(out, "dream_tiny.npz"), **golden)
    return golden


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="dir with " + ", ".join(FILES))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests", "golden"))
    args = parser.parse_args(argv)
    golden = write_golden(args.reference, args.out)
    print(f"wrote {args.out}/dream_tiny and dream_tiny.npz (logits {golden['logits'].shape})")


if __name__ == "__main__":
    main()
