"""pojax's Dream (masked-diffusion LM) against the reference PyTorch modeling code's golden values
(tests/golden/dream_tiny, written by experiments/parity/dream_golden.py), plus the shift, the
checkpoint round trip and refused config keys. Training and sampling on Dream: the gym tests in
tests/train/test_diffusion_train.py."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from pojax.models import CheckpointError, Dream, from_pretrained, save_pretrained
from pojax.models.dream import shift_right

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "..", "golden")
GOLDEN_CKPT = os.path.join(GOLDEN_DIR, "dream_tiny")
ATOL = 1e-5


@pytest.fixture(scope="module")
def golden():
    with np.load(os.path.join(GOLDEN_DIR, "dream_tiny.npz")) as f:
        return {k: f[k] for k in f.files}


def shifted(logits):
    """Dream's generation-time shift: token i is read from position i - 1 (0 keeps its own)."""
    return np.concatenate([logits[:, :1], logits[:, :-1]], axis=1)


def test_loads_as_dream_and_matches_the_reference_shifted(golden):
    model = from_pretrained(GOLDEN_CKPT)
    assert isinstance(model, Dream) and model.config.model_type == "dream"
    assert model.config.mask_token_id == 119 and model.config.attention_bias and not model.config.o_proj_bias
    with jax.default_matmul_precision("highest"):
        got = np.asarray(model(jnp.asarray(golden["input_ids"])))
    np.testing.assert_allclose(got, shifted(golden["logits"]), atol=ATOL, rtol=0)
    # unshifted, the logits would be off: the shift is what makes position i predict token i
    assert np.abs(got - golden["logits"]).max() > 0.1


def test_padded_rows_match_the_reference_2d_mask(golden):
    """segment ids (1 real, 0 padding) = the reference's 2-D attention mask, on the real tokens."""
    model = from_pretrained(GOLDEN_CKPT)
    mask = golden["attention_mask"]
    with jax.default_matmul_precision("highest"):
        got = np.asarray(model(jnp.asarray(golden["padded_ids"]), segment_ids=jnp.asarray(mask)))
    valid = mask.astype(bool)
    np.testing.assert_allclose(got[valid], shifted(golden["padded_logits"])[valid], atol=ATOL, rtol=0)


def test_attention_is_bidirectional():
    """Changing the last token changes the prediction of the first positions (a causal model's
    would not move)."""
    model = from_pretrained(GOLDEN_CKPT)
    x = np.arange(10, dtype=np.int32)[None] % 100
    y = x.copy()
    y[0, -1] = 7
    a, b = np.asarray(model(jnp.asarray(x))), np.asarray(model(jnp.asarray(y)))
    assert np.abs(a[0, 1] - b[0, 1]).max() > 1e-3


def test_shift_keeps_each_packed_documents_first_token():
    h = jnp.arange(6, dtype=jnp.float32).reshape(1, 6, 1)
    seg = jnp.asarray([[1, 1, 1, 2, 2, 0]])
    np.testing.assert_array_equal(np.asarray(shift_right(h))[0, :, 0], [0, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(np.asarray(shift_right(h, seg))[0, :, 0], [0, 0, 1, 3, 3, 5])


def test_save_round_trip_keeps_the_reference_layout(tmp_path):
    model = from_pretrained(GOLDEN_CKPT, scan_layers=True)
    save_pretrained(model, str(tmp_path))
    want = load_file(os.path.join(GOLDEN_CKPT, "model.safetensors"))
    got = load_file(os.path.join(tmp_path, "model.safetensors"))
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    with open(tmp_path / "config.json") as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "Dream" and cfg["mask_token_id"] == 119 and cfg["rope_theta"] == 1_000_000.0
    assert cfg["auto_map"]["AutoModel"] == "modeling_dream.DreamModel"
    again = from_pretrained(str(tmp_path))
    x = jnp.asarray(np.arange(12, dtype=np.int32)[None] % 100)
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(from_pretrained(GOLDEN_CKPT)(x)), atol=1e-6)


def test_sliding_window_and_missing_mask_token_are_refused(tmp_path):
    with open(os.path.join(GOLDEN_CKPT, "config.json")) as f:
        cfg = json.load(f)
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, use_sliding_window=True, sliding_window=4)))
    with pytest.raises(CheckpointError, match="Dream config key 'use_sliding_window' = True is not supported"):
        from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "mask_token_id"}))
    with pytest.raises(CheckpointError, match="dream needs mask_token_id"):
        from_pretrained(str(tmp_path))


def test_elbo_terms_are_the_reference_logits_at_the_masked_positions(golden):
    """pojax.likelihood.diffusion on Dream: a draw that masks exactly the golden rows' [MASK]
    positions scores the clean tokens there with the reference's (shifted) log-softmax."""
    from pojax.likelihood.diffusion import MaskDraws, elbo_per_draw

    noisy = golden["input_ids"]
    masked = noisy == 119
    clean = np.where(masked, (np.arange(noisy.size).reshape(noisy.shape) * 7) % 117, noisy).astype(np.int32)
    draws = MaskDraws(mask=jnp.asarray(masked)[:, None], weight=jnp.ones((noisy.shape[0], 1), jnp.float32))
    with jax.default_matmul_precision("highest"):
        got = np.asarray(elbo_per_draw(from_pretrained(GOLDEN_CKPT), jnp.asarray(clean), draws, mask_id=119))[:, 0]
    z = shifted(golden["logits"]).astype(np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    want = np.where(masked, np.take_along_axis(logp, clean[..., None], -1)[..., 0], 0.0).sum(-1)
    assert masked.sum(-1).min() > 0
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_diffusion_sampler_fills_every_masked_position():
    from pojax.sampling.diffusion import generate

    model = from_pretrained(GOLDEN_CKPT)
    prompts = jnp.asarray(np.arange(10, dtype=np.int32).reshape(2, 5))
    out = np.asarray(generate(model, prompts, jax.random.key(0), gen_length=8, steps=8, block_length=4, mask_id=119))
    assert out.shape == (2, 8) and not (out == 119).any()
