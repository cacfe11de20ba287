"""pojax's LLaDA (masked-diffusion LM) against the reference PyTorch modeling code and against
the architecture's defining properties.

(a) golden: tests/golden/llada_tiny (a tiny random checkpoint written by the reference code,
    experiments/parity/llada_golden.py) loaded by pojax, logits compared to the reference's.
(b) live: the same comparison, plus the export path, against the reference code itself when
    POJAX_LLADA_REFERENCE names the directory holding modeling_llada.py and
    configuration_llada.py (skipped otherwise; the code is not on PyPI).
(c) reference-free: a float64 numpy forward (tests/models/llada_fixtures.py) and properties —
    ff_proj is the SiLU gate, rotate-half RoPE, untied head, bidirectional attention, packed
    documents isolated — plus checkpoint round trips, mesh sharding and config errors.
"""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from pojax import sharding
from pojax.likelihood.autoregressive import token_logps_from_hidden
from pojax.models import (
    CheckpointError,
    LLaDA,
    ModelConfig,
    from_pretrained,
    save_pretrained,
)
from pojax.models.llada import EOS_TOKEN_ID, EOT_TOKEN_ID, MASK_TOKEN_ID, llada_8b
from tests.models.llada_fixtures import (
    BLOCK,
    GOLDEN_CKPT,
    edited_checkpoint,
    golden,
    numpy_forward,
    read_checkpoint,
)

ATOL = 1e-5
REFERENCE = os.environ.get("POJAX_LLADA_REFERENCE")


@jax.jit
def _forward(model, ids, kw):
    return model(ids, **kw)


def run(model, ids, **kw):
    """fp32 logits at full matmul precision, as numpy."""
    with jax.default_matmul_precision("highest"):
        return np.asarray(_forward(model, jnp.asarray(ids), {k: jnp.asarray(v) for k, v in kw.items()}))


def packed_kw(g):
    return dict(positions=g["packed_positions"], segment_ids=g["packed_segment_ids"])


@pytest.fixture(scope="module")
def g():
    return golden()


@pytest.fixture(scope="module")
def model():
    return from_pretrained(GOLDEN_CKPT)


@pytest.fixture(scope="module")
def ckpt():
    return read_checkpoint()


# ------------------------------------------------------------------ (a) golden reference logits

def test_golden_logits(model, g):
    assert isinstance(model, LLaDA) and model.config.mask_token_id == 119
    got = run(model, g["input_ids"])
    assert got.shape == g["logits"].shape == (2, 12, 128)  # embedding_size columns, not vocab_size
    np.testing.assert_allclose(got, g["logits"], atol=ATOL, rtol=0)


def test_golden_packed_row(model, g):
    # two documents and padding in one row == the reference run on each document alone
    got = run(model, g["packed_ids"], **packed_kw(g))
    real = g["packed_segment_ids"] > 0
    np.testing.assert_allclose(got[real], g["packed_logits"][real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("overrides", [{"scan_layers": True}, {"remat": "full"},
                                       {"scan_layers": True, "remat": "dots"}, {"attention_impl": "jax"}])
def test_layout_variants_match_golden(g, overrides):
    m = from_pretrained(GOLDEN_CKPT, **overrides)
    np.testing.assert_allclose(run(m, g["input_ids"]), g["logits"], atol=ATOL, rtol=0)
    got = run(m, g["packed_ids"], **packed_kw(g))
    real = g["packed_segment_ids"] > 0
    np.testing.assert_allclose(got[real], g["packed_logits"][real], atol=ATOL, rtol=0)


# ------------------------------------------------------------------ (b) live reference

LIVE_VARIANTS = {
    "gqa": {},
    "mha-tied": dict(n_kv_heads=4, weight_tying=True),
    "mqa-qkv-bias": dict(n_kv_heads=None, multi_query_attention=True, include_qkv_bias=True, n_layers=1),
}
live = pytest.mark.skipif(not REFERENCE, reason="POJAX_LLADA_REFERENCE (dir of the reference modeling_llada.py) unset")


@live
@pytest.mark.parametrize("variant", sorted(LIVE_VARIANTS))
def test_live_reference(variant, tmp_path):
    from experiments.parity import llada_golden as lg

    ref = lg.load_reference(REFERENCE)
    config = {**lg.TINY, **LIVE_VARIANTS[variant]}
    torch_model = lg.make_reference(ref, config, seed=1)
    lg.save_reference_checkpoint(torch_model, config, str(tmp_path / "ref"))
    ids, packed, segments, positions = lg.inputs(config, seed=1)
    m = from_pretrained(str(tmp_path / "ref"))
    want = lg.reference_logits(torch_model, ids)
    np.testing.assert_allclose(run(m, ids), want, atol=ATOL, rtol=0)
    real = segments > 0
    got = run(m, packed, positions=positions, segment_ids=segments)
    np.testing.assert_allclose(got[real], lg.reference_packed_logits(torch_model, packed, segments)[real],
                               atol=ATOL, rtol=0)
    # pojax's export (sharded, with an index) is what the reference code loads: strict names and shapes
    save_pretrained(m, str(tmp_path / "pojax"), max_shard_bytes=30_000)
    again = lg.load_reference_checkpoint(ref, str(tmp_path / "pojax"))
    np.testing.assert_allclose(lg.reference_logits(again, ids), want, atol=1e-6, rtol=0)


@live
def test_live_golden_is_reproducible(tmp_path, g):
    from experiments.parity import llada_golden as lg

    fresh = lg.write_golden(REFERENCE, str(tmp_path))
    for key in ("input_ids", "packed_ids", "packed_segment_ids", "packed_positions"):
        np.testing.assert_array_equal(fresh[key], g[key])
    np.testing.assert_allclose(fresh["logits"], g["logits"], atol=1e-6, rtol=0)
    new, old = load_file(str(tmp_path / "llada_tiny" / "model.safetensors")), load_file(GOLDEN_CKPT + "/model.safetensors")
    assert new.keys() == old.keys() and all(np.array_equal(new[k], old[k]) for k in new)


# ------------------------------------------------------------------ (c) reference-free checks

def test_matches_numpy_forward(model, ckpt, g):
    config, tensors = ckpt
    np.testing.assert_allclose(run(model, g["input_ids"]), numpy_forward(config, tensors, g["input_ids"]),
                               atol=ATOL, rtol=0)
    kw = packed_kw(g)
    real = kw["segment_ids"] > 0
    want = numpy_forward(config, tensors, g["packed_ids"], **kw)
    np.testing.assert_allclose(run(model, g["packed_ids"], **kw)[real], want[real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("mistake", ["swap_mlp", "interleaved_rope", "tied_head", "causal"])
def test_porting_mistakes_are_far_outside_tolerance(model, ckpt, g, mistake):
    # pojax equals the numpy forward to 1e-5 (above); each classic mistake moves the logits by
    # far more, so pojax makes none of them.
    config, tensors = ckpt
    wrong = numpy_forward(config, tensors, g["input_ids"], **{mistake: True})
    assert np.abs(run(model, g["input_ids"]) - wrong).max() > 1e-2


def test_ff_proj_is_the_silu_gate(model, tmp_path):
    # the MLP is linear in up_proj (doubling it doubles the output) but not in ff_proj
    x = jax.random.normal(jax.random.key(0), (2, 5, 32), jnp.float32)
    with jax.default_matmul_precision("highest"):
        base = np.asarray(model.layers[0].mlp(x))

        def scaled(name):
            def edit(t):
                t[BLOCK.format(0) + name] = t[BLOCK.format(0) + name] * 2
            return np.asarray(from_pretrained(edited_checkpoint(tmp_path / name, tensors=edit)).layers[0].mlp(x))

        np.testing.assert_allclose(scaled("up_proj.weight"), 2 * base, atol=1e-6, rtol=1e-6)
        assert np.abs(scaled("ff_proj.weight") - 2 * base).max() > 1e-2


def test_rope_rotates_halves(model):
    # rotate-half pairs dim i with i + Dh/2 (GPT-J style would pair 2i with 2i + 1)
    from pojax.models.layers import apply_rope

    dh = model.config.head_dim
    e0 = jnp.zeros((1, 1, 1, dh)).at[..., 0].set(1.0)
    out = np.asarray(apply_rope(e0, jnp.array([[3]]), model.inv_freq[...]))[0, 0, 0]
    want = np.zeros(dh)
    want[0], want[dh // 2] = np.cos(3.0), np.sin(3.0)  # inv_freq[0] = 1
    np.testing.assert_allclose(out, want, atol=1e-6)
    np.testing.assert_allclose(model.inv_freq[...], 1 / 500000.0 ** (np.arange(0, dh, 2) / dh), rtol=1e-6)


def test_head_is_untied(model, ckpt, tmp_path, g):
    _, tensors = ckpt
    np.testing.assert_array_equal(model.lm_head_weight(), tensors["model.transformer.ff_out.weight"].T.astype(np.float32))
    assert not np.allclose(model.lm_head_weight(), model.embed_tokens[...].T)

    def tie(c):
        c["weight_tying"] = True

    def drop_head(t):
        del t["model.transformer.ff_out.weight"]

    tied = from_pretrained(edited_checkpoint(tmp_path / "tied", tensors=drop_head, config=tie))
    assert tied.lm_head is None
    np.testing.assert_allclose(run(tied, g["input_ids"]), numpy_forward(dict(ckpt[0], weight_tying=True), tensors, g["input_ids"]),
                               atol=ATOL, rtol=0)
    save_pretrained(tied, str(tmp_path / "tied_out"))
    assert "model.transformer.ff_out.weight" not in load_file(str(tmp_path / "tied_out" / "model.safetensors"))
    assert json.loads((tmp_path / "tied_out" / "config.json").read_text())["weight_tying"] is True


def test_attention_is_bidirectional(model, g):
    ids = g["input_ids"].copy()
    before = run(model, ids)
    ids[:, -1] = (ids[:, -1] + 1) % 120  # change only the last token
    after = run(model, ids)
    assert (np.abs(after[:, 0] - before[:, 0]).max(-1) > 1e-3).all()  # the first position sees the last


def test_packed_documents_are_isolated(model, g):
    ids, kw = g["packed_ids"].copy(), packed_kw(g)
    seg = kw["segment_ids"][0]
    a, b = seg == 1, seg == 2
    before = run(model, ids, **kw)
    alone = run(model, ids[:, a])  # document A on its own, positions 0..
    np.testing.assert_allclose(before[:, a], alone, atol=ATOL, rtol=0)
    ids[0, b | (seg == 0)] = 7  # rewrite document B and the padding
    after = run(model, ids, **kw)
    np.testing.assert_array_equal(after[:, a], before[:, a])
    assert np.abs(after[:, b] - before[:, b]).max() > 1e-3


def test_save_load_round_trip(model, ckpt, g, tmp_path):
    config, tensors = ckpt
    save_pretrained(model, str(tmp_path / "one"))
    saved = load_file(str(tmp_path / "one" / "model.safetensors"))
    assert saved.keys() == tensors.keys()  # the reference's own names, nothing more
    for name, value in saved.items():
        np.testing.assert_array_equal(value, tensors[name].astype(np.float32), err_msg=name)
    cfg = json.loads((tmp_path / "one" / "config.json").read_text())
    for key in ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "embedding_size", "mask_token_id",
                "eos_token_id", "pad_token_id", "rope_theta", "rms_norm_eps", "weight_tying", "max_sequence_length",
                "block_type", "layer_norm_type", "activation_type", "rope", "alibi", "include_bias", "include_qkv_bias",
                "bias_for_layer_norm", "attention_layer_norm", "input_emb_norm", "scale_logits", "block_group_size"):
        assert cfg[key] == config[key], key
    assert cfg["model_type"] == "llada" and cfg["architectures"] == ["LLaDAModelLM"]
    # sharded set with an index file
    save_pretrained(model, str(tmp_path / "sharded"), max_shard_bytes=20_000)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    for path in ("one", "sharded"):
        again = from_pretrained(str(tmp_path / path))
        np.testing.assert_array_equal(run(again, g["input_ids"]), run(model, g["input_ids"]))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_sharded_forward_equals_single_device(g, scan_layers):
    assert jax.device_count() == 8
    x = jnp.asarray(np.random.default_rng(0).integers(0, 120, (4, 12)), jnp.int32)
    fwd = jax.jit(lambda m, x: m(x))
    with jax.default_matmul_precision("highest"):
        want = fwd(from_pretrained(GOLDEN_CKPT, scan_layers=scan_layers), x)
        mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
        m = from_pretrained(GOLDEN_CKPT, mesh=mesh, scan_layers=scan_layers)
        with sharding.use_mesh(mesh):
            got = fwd(m, jax.device_put(x, sharding.logical_to_sharding(("batch", "length"), mesh)))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    gate = m.layers.mlp.gate_proj.kernel if scan_layers else m.layers[0].mlp.gate_proj.kernel
    assert len(gate[...].sharding.device_set) == 8
    assert np.prod(gate[...].addressable_shards[0].data.shape) < np.prod(gate.shape)


def test_bf16_compute(g):
    # float32 master weights, bfloat16 matmuls, float32 logits
    m = from_pretrained(GOLDEN_CKPT, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    assert m.embed_tokens[...].dtype == jnp.float32 and m.layers[0].mlp.up_proj.dtype == jnp.bfloat16
    assert m.embed(jnp.asarray(g["input_ids"])).dtype == jnp.bfloat16
    got = np.asarray(_forward(m, jnp.asarray(g["input_ids"]), {}))
    assert got.dtype == np.float32
    rel = np.abs(got - g["logits"]).max() / np.abs(g["logits"]).max()
    assert rel < 0.05, rel


def test_chunked_token_logps_reuse(model, g):
    # the chunked log-prob path of the AR models works unchanged on LLaDA's hidden states and head
    @jax.jit
    def both(model, ids):
        got = token_logps_from_hidden(model.hidden_states(ids), model.lm_head_weight(), ids, chunk_size=5)
        return got, jnp.take_along_axis(jax.nn.log_softmax(model(ids), -1), ids[..., None], -1)[..., 0]

    with jax.default_matmul_precision("highest"):
        got, want = both(model, jnp.asarray(g["input_ids"]))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_missing_mask_token_id(tmp_path):
    # the reference code would silently use its default 50256; pojax refuses, naming file and key
    for name, edit in (("absent", lambda c: c.pop("mask_token_id")), ("null", lambda c: c.update(mask_token_id=None))):
        path = edited_checkpoint(tmp_path / name, config=edit)
        message = (f"{os.path.join(path, 'config.json')}: key 'mask_token_id' is missing or null; a LLaDA checkpoint "
                   "needs the id of its [MASK] token (126336 for GSAI-ML/LLaDA-8B)")
        with pytest.raises(CheckpointError, match=re.escape(message)):
            from_pretrained(path)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(block_type="sequential"),
     "llada config key 'block_type' = 'sequential' is not supported; pojax's LLaDA needs 'llama'"),
    (lambda c: c.pop("block_type"), "llada config key 'block_type' = 'sequential'"),  # the reference's default
    (lambda c: c.update(activation_type="swiglu"), "llada config key 'activation_type' = 'swiglu'"),
    (lambda c: c.update(rope=False), "llada config key 'rope' = False"),
])
def test_unsupported_switches(tmp_path, edit, message):
    with pytest.raises(ValueError, match=message):
        from_pretrained(edited_checkpoint(tmp_path / "c", config=edit))


def test_shape_disagreeing_with_config(tmp_path):
    path = edited_checkpoint(tmp_path / "c", config=lambda c: c.update(mlp_hidden_size=64))
    with pytest.raises(CheckpointError, match=r"tensor 'model.transformer.blocks.0.ff_proj.weight' in model.safetensors "
                                              r"has shape \(48, 32\) but config.json implies \(64, 32\)"):
        from_pretrained(path)


def test_presets_and_config_round_trip(ckpt):
    c = llada_8b()
    assert (c.mask_token_id, c.eos_token_id, MASK_TOKEN_ID, EOS_TOKEN_ID, EOT_TOKEN_ID) == (126336, 126081, 126336, 126081, 126348)
    d = c.to_hf_dict()
    assert (d["d_model"], d["n_layers"], d["n_heads"], d["n_kv_heads"], d["mlp_hidden_size"], d["embedding_size"],
            d["rope_theta"], d["weight_tying"], d["block_type"]) == (4096, 32, 32, 32, 12288, 126464, 500000.0, False, "llama")
    assert ModelConfig.from_hf_config(d) == c
    tiny = ModelConfig.from_hf_config(ckpt[0])
    assert ModelConfig.from_hf_config(tiny.to_hf_dict()) == tiny
    assert (tiny.vocab_size, tiny.num_key_value_heads, tiny.head_dim) == (128, 2, 8)
    with pytest.raises(ValueError, match=re.escape("llada needs mask_token_id (the [MASK] token id; 126336 for LLaDA-8B)")):
        ModelConfig(model_type="llada")
    with pytest.raises(ValueError, match=re.escape("mask_token_id=256 is outside the vocabulary [0, 256)")):
        ModelConfig(model_type="llada", mask_token_id=256)
    with pytest.raises(ValueError, match="llada splits d_model=64 into 4 heads; head_dim=8 does not fit"):
        ModelConfig(model_type="llada", mask_token_id=0, head_dim=8)
    with pytest.raises(ValueError, match="llada has no sliding window, q/k norm, rope scaling, o_proj or mlp bias"):
        ModelConfig(model_type="llada", mask_token_id=0, qk_norm=True)
    with pytest.raises(ValueError, match="llada has no transformers config class"):
        tiny.to_hf_config()
    no_mask = {k: v for k, v in ckpt[0].items() if k != "mask_token_id"}
    with pytest.raises(ValueError, match=re.escape("llada config key 'mask_token_id' is missing (the [MASK] token id")):
        ModelConfig.from_hf_config(no_mask)
    with pytest.raises(ValueError, match="LLaDA needs a model_type 'llada' config, got 'llama'"):
        LLaDA(ModelConfig(), rngs=None)
