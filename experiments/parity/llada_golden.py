"""Golden files for pojax's LLaDA from the reference PyTorch modeling code.

LLaDA's modeling code (modeling_llada.py + configuration_llada.py) ships with the Hugging Face
checkpoint (GSAI-ML/LLaDA-8B-Base), not on PyPI, so CI cannot run it. This script builds a
tiny random-init model with that code, saves it in the checkpoint layout, and records its
fp32 logits; tests/models/test_llada.py compares pojax against them, and runs the same
comparison live when POJAX_LLADA_REFERENCE names the reference directory.

    python -m experiments.parity.llada_golden --reference=<dir with modeling_llada.py and
        configuration_llada.py> [--out=tests/golden]

writes <out>/llada_tiny/{config.json, model.safetensors} (the reference model's weights, its
own tensor names) and <out>/llada_tiny.npz:
  input_ids [B, T] int32, logits [B, T, V] float32   (plain rows, mask tokens included)
  packed_ids, packed_segment_ids, packed_positions [1, T]; packed_logits [1, T, V]: two
    documents and padding in one row, scored by the reference one document at a time
  reference_sha256, versions: provenance.

    python -m experiments.parity.llada_golden --reference=<dir> --generate=<LLaDA's generate.py>

also runs ML-GSAI/LLaDA's generate.py (its ``generate``, imported from the given path) on that
tiny checkpoint at temperature 0, low-confidence remasking, for SAMPLER_CONFIGS x cfg_scale in
(0, 1) on three left-padded prompts, and writes <out>/llada_sampler.npz:
  prompts, attention_mask [3, P] int32 (left padding with pad id 118 != mask id 119);
  configs [C, 4] int32 (gen_length, steps, block_length, cfg_scale); tokens [C, 3, G] int32
    (the generated tokens, prompt dropped);
  confidence_gap, logit_gap [C, 3, max steps] float32 (nan past a config's steps): per step the
    gap between the k-th and (k+1)-th confidence generate.py's top-k chooses from (inf when
    every candidate is taken), and the smallest top-1 - top-2 logit gap over the k tokens it
    unmasks: near-ties there are where float noise could make two ports disagree;
  generate_sha256 (of generate.py), reference_sha256, versions.
generate.py passes its [B, T] attention_mask to the model, whose reference (the modeling code
used for the golden checkpoint) only takes a [B, 1, T, T] mask; ``_GenerateModel`` expands it
to a key-padding mask (every query sees exactly the non-padding keys), what the mask means.

The reference code is imported from a private copy of the two files (either import style,
``from .configuration_llada`` or ``from configuration_llada``). transformers 5.x dropped the
``use_cache`` attribute the reference's forward reads, so forwards pass ``use_cache=False``.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile
from unittest import mock

import numpy as np

from experiments.parity.common import files_sha256, randomize_

FILES = ("modeling_llada.py", "configuration_llada.py")

# The tiny model: LLaDA-8B's architecture switches, shrunk (GQA, embedding_size > vocab_size,
# the 8B's RoPE θ). Every key the reference reads is explicit: its defaults describe another net.
TINY = dict(
    d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=48, mlp_ratio=4,
    vocab_size=120, embedding_size=128, mask_token_id=119, eos_token_id=118, pad_token_id=118,
    rope=True, rope_theta=500000.0, rope_full_precision=True, max_sequence_length=64, rms_norm_eps=1e-5,
    block_type="llama", layer_norm_type="rms", layer_norm_with_affine=True, activation_type="silu",
    weight_tying=False, include_bias=False, include_qkv_bias=False, bias_for_layer_norm=False,
    alibi=False, attention_layer_norm=False, input_emb_norm=False, scale_logits=False, block_group_size=1,
    multi_query_attention=None, flash_attention=False, attention_dropout=0.0, residual_dropout=0.0,
    embedding_dropout=0.0, init_device="cpu", init_fn="normal", init_std=0.02,
)
SEED = 0
B, T = 2, 12
PACKED = (6, 4, 2)  # document A, document B, padding (segment id 0)

_LOADED: dict[str, object] = {}


@contextlib.contextmanager
def _lenient_auto_register():
    """The reference registers its classes with transformers' Auto* at import; a second copy
    (another reference dir in the same process) would raise, so allow re-registration."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
    )

    patches = []
    register = AutoConfig.register
    patches.append(mock.patch.object(AutoConfig, "register",
                                     staticmethod(lambda t, c, exist_ok=False: register(t, c, exist_ok=True))))
    for auto in (AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM):
        fn = auto.register.__func__
        patches.append(mock.patch.object(
            auto, "register", classmethod(lambda cls, c, m, exist_ok=False, fn=fn: fn(cls, c, m, exist_ok=True))))
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        yield


def load_reference(reference_dir: str):
    """The reference's modeling module, imported from a private copy of its two files."""
    reference_dir = os.path.abspath(reference_dir)
    if reference_dir in _LOADED:
        return _LOADED[reference_dir]
    missing = [f for f in FILES if not os.path.exists(os.path.join(reference_dir, f))]
    if missing:
        raise FileNotFoundError(f"{reference_dir}: no {', '.join(missing)}")
    name = f"llada_reference_{len(_LOADED)}"
    root = tempfile.mkdtemp(prefix="pojax_llada_ref_")
    pkg = os.path.join(root, name)
    os.makedirs(pkg)
    for f in FILES:
        shutil.copy(os.path.join(reference_dir, f), pkg)
    open(os.path.join(pkg, "__init__.py"), "w").close()
    sys.path[:0] = [root, pkg]  # package import, and the absolute `from configuration_llada import`
    try:
        with _lenient_auto_register():
            sys.modules.pop("configuration_llada", None)
            module = importlib.import_module(f"{name}.modeling_llada")
    finally:
        sys.path.remove(root)
        sys.path.remove(pkg)
    _LOADED[reference_dir] = module
    return module


def reference_sha256(reference_dir: str) -> str:
    return files_sha256(reference_dir, FILES)


def make_reference(ref, config: dict, seed: int = SEED):
    """A random-init reference LLaDAModelLM (fp32, eval). Norm weights and biases are random
    too (their init, ones and zeros, would hide a misplaced parameter)."""
    import torch

    torch.manual_seed(seed)
    return randomize_(ref.LLaDAModelLM(ref.LLaDAConfig(**config), init_params=False).float().eval())


def reference_logits(model, input_ids: np.ndarray) -> np.ndarray:
    """fp32 logits [B, T, V] of the reference on input_ids [B, T] (no attention mask: every
    token attends to every token, as in LLaDA's generate.py / get_log_likelihood.py)."""
    import torch

    with torch.no_grad():
        out = model(torch.as_tensor(np.asarray(input_ids), dtype=torch.long), use_cache=False)
    return out.logits.float().numpy()


def reference_packed_logits(model, ids: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
    """Logits [1, T, V] of a packed row, each document run alone by the reference (zeros at
    padding, segment id 0)."""
    out = np.zeros(ids.shape + (model.config.embedding_size or model.config.vocab_size,), np.float32)
    for seg in np.unique(segment_ids[segment_ids > 0]):
        where = np.flatnonzero(segment_ids[0] == seg)
        out[0, where] = reference_logits(model, ids[:, where])[0]
    return out


def save_reference_checkpoint(model, config: dict, path: str) -> None:
    """The checkpoint layout of GSAI-ML/LLaDA-8B: config.json (model_type "llada") and
    model.safetensors with the reference's own tensor names (model.transformer.*)."""
    import torch
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(config, model_type="llada", architectures=["LLaDAModelLM"])
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)


def load_reference_checkpoint(ref, path: str):
    """The reference model of a checkpoint dir (config.json + safetensors, sharded or not), every
    tensor name and shape checked (strict). transformers 5.x's from_pretrained cannot build the
    reference class (it never calls post_init), so the weights go through load_state_dict."""
    import torch
    from safetensors.torch import load_file

    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    model = ref.LLaDAModelLM(ref.LLaDAConfig(**config), init_params=False).float().eval()
    index = os.path.join(path, "model.safetensors.index.json")
    files = ["model.safetensors"]
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    state = {}
    for fname in files:
        state.update(load_file(os.path.join(path, fname)))
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return model


def inputs(config: dict, seed: int = SEED):
    """Plain rows [B, T] with some mask tokens, and one packed row (ids, segment ids, positions)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config["vocab_size"], (B, T)).astype(np.int32)
    ids[rng.random((B, T)) < 0.3] = config["mask_token_id"]
    a, b, pad = PACKED
    packed = rng.integers(0, config["vocab_size"], (1, a + b + pad)).astype(np.int32)
    packed[0, a + b:] = config["pad_token_id"]
    packed[0, [1, a + 2]] = config["mask_token_id"]
    segments = np.array([[1] * a + [2] * b + [0] * pad], np.int32)
    positions = np.array([list(range(a)) + list(range(b)) + [0] * pad], np.int32)
    return ids, packed, segments, positions


def write_golden(reference_dir: str, out: str) -> dict:
    import torch
    import transformers

    ref = load_reference(reference_dir)
    model = make_reference(ref, TINY)
    ckpt = os.path.join(out, "llada_tiny")
    if os.path.exists(ckpt):
        shutil.rmtree(ckpt)
    save_reference_checkpoint(model, TINY, ckpt)
    ids, packed, segments, positions = inputs(TINY)
    golden = dict(
        input_ids=ids,
        logits=reference_logits(model, ids),
        packed_ids=packed,
        packed_segment_ids=segments,
        packed_positions=positions,
        packed_logits=reference_packed_logits(model, packed, segments),
        reference_sha256=np.array(reference_sha256(reference_dir)),
        versions=np.array(f"torch {torch.__version__}, transformers {transformers.__version__}"),
    )
    np.savez_compressed(os.path.join(out, "llada_tiny.npz"), **golden)
    return golden


# Sampler configurations: (gen_length, steps, block_length); each run with cfg_scale 0 and 1.
SAMPLER_CONFIGS = ((8, 8, 4), (8, 4, 8), (8, 8, 2), (8, 6, 4))  # (8, 6, 4): 2, 1, 1 per step
CFG_SCALES = (0, 1)
SAMPLER_PROMPT_LENGTHS = (5, 3, 4)
# Prompts chosen away from near-ties: with these every recorded confidence gap is >= 2.8e-5 and
# every logit gap >= 4.8e-4 (float32 noise between ports is ~1e-6); the first seed tried (1) had
# a confidence gap of 5.8e-7, a tie float noise could break either way.
SAMPLER_SEED = 2


def sampler_prompts(config: dict, seed: int = SAMPLER_SEED):
    """prompts [3, P] left-padded with pad_token_id, and their attention mask (1 on real tokens);
    no prompt token is the mask or pad id."""
    rng = np.random.default_rng(seed)
    p = max(SAMPLER_PROMPT_LENGTHS)
    special = min(config["mask_token_id"], config["pad_token_id"])
    prompts = np.full((len(SAMPLER_PROMPT_LENGTHS), p), config["pad_token_id"], np.int32)
    mask = np.zeros(prompts.shape, np.int32)
    for row, n in enumerate(SAMPLER_PROMPT_LENGTHS):
        prompts[row, p - n:] = rng.integers(0, special, n)
        mask[row, p - n:] = 1
    return prompts, mask


def load_generate(path: str):
    """generate.py as a module, imported from its path (it stays outside pojax)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"llada_generate_{len(_LOADED)}", os.path.abspath(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _GenerateModel:
    """The reference model as generate.py calls it: ``.device``, ``model(x, attention_mask=m)``
    with m [B, T] (expanded to the reference's [B, 1, T, T] key-padding mask), ``.logits``.
    Also records, per call (= per denoising step), the near-tie gaps of generate.py's choices
    (recomputed from the same logits with generate.py's formulas)."""

    def __init__(self, model, *, prompt_len, gen_length, steps, block_length, cfg_scale, mask_id):
        import torch

        self.model, self.device = model, torch.device("cpu")
        self.p, self.block_length, self.cfg_scale, self.mask_id = prompt_len, block_length, cfg_scale, mask_id
        self.steps_per_block = steps // (gen_length // block_length)
        self.calls, self.confidence_gap, self.logit_gap = 0, [], []

    def __call__(self, x, attention_mask=None):
        import torch

        mask4 = None
        if attention_mask is not None:
            keys = attention_mask.to(torch.bool)[:, None, None, :]
            mask4 = keys.expand(x.shape[0], 1, x.shape[1], x.shape[1])
        out = self.model(x, attention_mask=mask4, use_cache=False)
        self._gaps(x, out.logits)
        self.calls += 1
        return out

    def _gaps(self, x, logits):
        import torch

        blk, i = divmod(self.calls, self.steps_per_block)
        if self.cfg_scale > 0:
            (x, _), (cond, un) = x.chunk(2), logits.chunk(2)
            logits = un + (self.cfg_scale + 1) * (cond - un)
        start, end = self.p + blk * self.block_length, self.p + (blk + 1) * self.block_length
        masked = x == self.mask_id
        if i == 0:
            self.n_block = masked[:, start:end].sum(1)
        n = self.n_block
        k = n // self.steps_per_block + (i < n % self.steps_per_block).long()
        top2 = logits.float().topk(2, dim=-1).values
        x0_p = torch.softmax(logits.float(), -1).max(-1).values
        conf_gap, logit_gap = [], []
        for row in range(x.shape[0]):
            cand = masked[row].clone()
            cand[end:] = False
            conf = x0_p[row][cand]
            order = torch.argsort(conf, descending=True)
            kk = int(k[row])
            c = conf[order]
            conf_gap.append(float(c[kk - 1] - c[kk]) if 0 < kk < len(c) else float("inf"))
            chosen = torch.nonzero(cand).flatten()[order[:kk]]
            g = top2[row, chosen, 0] - top2[row, chosen, 1]
            logit_gap.append(float(g.min()) if kk else float("inf"))
        self.confidence_gap.append(conf_gap)
        self.logit_gap.append(logit_gap)


def reference_generate(gen, model, prompts, attention_mask, *, gen_length, steps, block_length,
                       cfg_scale, mask_id):
    """generate.py's generate at temperature 0, low-confidence remasking: (tokens [B, G],
    confidence_gap [B, steps], logit_gap [B, steps])."""
    import torch

    wrapped = _GenerateModel(model, prompt_len=prompts.shape[1], gen_length=gen_length, steps=steps,
                             block_length=block_length, cfg_scale=cfg_scale, mask_id=mask_id)
    out = gen.generate(wrapped, torch.as_tensor(prompts, dtype=torch.long),
                       attention_mask=torch.as_tensor(attention_mask, dtype=torch.long), steps=steps,
                       gen_length=gen_length, block_length=block_length, temperature=0.0,
                       cfg_scale=float(cfg_scale), remasking="low_confidence", mask_id=mask_id)
    assert wrapped.calls == steps
    return (out[:, prompts.shape[1]:].numpy().astype(np.int32),
            np.asarray(wrapped.confidence_gap, np.float32).T, np.asarray(wrapped.logit_gap, np.float32).T)


def write_sampler_golden(reference_dir: str, generate_path: str, out: str) -> dict:
    """Runs generate.py on the tiny checkpoint at <out>/llada_tiny; writes <out>/llada_sampler.npz."""
    import torch
    import transformers

    ref = load_reference(reference_dir)
    gen = load_generate(generate_path)
    model = load_reference_checkpoint(ref, os.path.join(out, "llada_tiny"))
    mask_id = model.config.mask_token_id
    prompts, attention_mask = sampler_prompts(TINY)
    configs = [(g, s, b, c) for (g, s, b) in SAMPLER_CONFIGS for c in CFG_SCALES]
    max_steps = max(s for _, s, _, _ in configs)
    tokens, conf_gaps, logit_gaps = [], [], []
    for g, s, b, c in configs:
        t, cg, lg = reference_generate(gen, model, prompts, attention_mask, gen_length=g, steps=s,
                                       block_length=b, cfg_scale=c, mask_id=mask_id)
        tokens.append(t)
        conf_gaps.append(np.pad(cg, ((0, 0), (0, max_steps - s)), constant_values=np.nan))
        logit_gaps.append(np.pad(lg, ((0, 0), (0, max_steps - s)), constant_values=np.nan))
    with open(generate_path, "rb") as f:
        generate_sha = hashlib.sha256(f.read()).hexdigest()
    golden = dict(
        prompts=prompts, attention_mask=attention_mask, configs=np.asarray(configs, np.int32),
        tokens=np.stack(tokens), confidence_gap=np.stack(conf_gaps), logit_gap=np.stack(logit_gaps),
        generate_sha256=np.array(generate_sha), reference_sha256=np.array(reference_sha256(reference_dir)),
        versions=np.array(f"torch {torch.__version__}, transformers {transformers.__version__}"),
    )
    np.savez_compressed(os.path.join(out, "llada_sampler.npz"), **golden)
    return golden


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True,
                        help="directory holding the reference modeling_llada.py and configuration_llada.py")
    parser.add_argument("--generate", default=None,
                        help="path to ML-GSAI/LLaDA's generate.py: also write llada_sampler.npz")
    parser.add_argument("--out", default=os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "tests", "golden")),
                        help="output directory (default: tests/golden)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    golden = write_golden(args.reference, args.out)
    sizes = {f: os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(args.out) for f in fs if "llada" in dp + f}
    print(f"wrote {args.out}: logits {golden['logits'].shape}, files {sizes}")
    if args.generate:
        s = write_sampler_golden(args.reference, args.generate, args.out)
        print(f"wrote llada_sampler.npz: tokens {s['tokens'].shape}, smallest confidence gap "
              f"{np.nanmin(s['confidence_gap']):.3g}, smallest logit gap {np.nanmin(s['logit_gap']):.3g}")


if __name__ == "__main__":
    main()
