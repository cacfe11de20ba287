"""pojax's decoder against transformers' PyTorch models: random tiny checkpoints saved with
save_pretrained, loaded by pojax.models.from_pretrained, compared at the logits (fp32)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from pojax.models import from_pretrained, save_pretrained
from tests.models.hf_fixtures import VARIANTS, VOCAB, make_checkpoint, torch_logits

ATOL = 1e-5


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    model = make_checkpoint(request.param, path)
    return request.param, path, model


def ids(b=2, t=11, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, (b, t)).astype(np.int32)


def test_logits_match_transformers(checkpoint):
    name, path, ref = checkpoint
    with jax.default_matmul_precision("highest"):
        model = from_pretrained(str(path))
        x = ids()
        got = np.asarray(model(jnp.asarray(x)))
    want = torch_logits(ref, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    # per-token log-probs of the next token
    lp = lambda z: z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    tgt = x[:, 1:]
    np.testing.assert_allclose(np.take_along_axis(lp(got[:, :-1]), tgt[..., None], -1),
                               np.take_along_axis(lp(want[:, :-1]), tgt[..., None], -1), atol=ATOL, rtol=0)


def test_chunked_log_probs_match_transformers(checkpoint):
    """The training path's log-probs (pojax.likelihood.autoregressive: sequence chunks, vocabulary
    tiles, the model's own final-logit soft cap) against transformers' log-softmax."""
    from pojax.likelihood.autoregressive import shift_targets, token_logps

    name, path, ref = checkpoint
    x = ids(seed=4)
    targets, mask = shift_targets(jnp.asarray(x), jnp.ones(x.shape, bool))
    with jax.default_matmul_precision("highest"):
        got = np.asarray(token_logps(from_pretrained(str(path)), jnp.asarray(x), targets, chunk_size=4,
                                     vocab_chunk_size=32))
    z = torch_logits(ref, x).astype(np.float64)
    lp = z - z.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    want = np.take_along_axis(lp[:, :-1], x[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(got[:, :-1], want, atol=ATOL, rtol=0)
    assert bool(np.asarray(mask)[:, :-1].all())


def test_padded_rows_match_transformers(checkpoint):
    # right padding: transformers' attention_mask == pojax's segment ids (1 real, 0 padding)
    name, path, ref = checkpoint
    x = ids(seed=1)
    mask = np.ones_like(x)
    mask[0, 7:] = 0
    with jax.default_matmul_precision("highest"):
        got = np.asarray(from_pretrained(str(path))(jnp.asarray(x), segment_ids=jnp.asarray(mask)))
    want = torch_logits(ref, x, mask)
    valid = mask.astype(bool)
    np.testing.assert_allclose(got[valid], want[valid], atol=ATOL, rtol=0)


def test_round_trip_through_pojax_save(checkpoint, tmp_path):
    name, path, ref = checkpoint
    model = from_pretrained(str(path))
    save_pretrained(model, str(tmp_path))
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    x = ids(seed=2)
    np.testing.assert_allclose(torch_logits(again, x), torch_logits(ref, x), atol=1e-6, rtol=0)


# every switch on two families (Llama's pre-norm blocks; Gemma 3's sandwich blocks with per-layer RoPE
# tables under nnx.scan); the other families once with scan and remat together (remat and the
# attention backend do not depend on the family)
EVERY_SWITCH = ("llama-gqa", "gemma3-text")


@pytest.mark.parametrize("overrides", [{"scan_layers": True}, {"remat": "full"}, {"scan_layers": True, "remat": "dots"},
                                       {"attention_impl": "jax"}])
def test_scan_and_remat_variants_match_transformers(checkpoint, overrides):
    name, path, ref = checkpoint
    x = ids(seed=3)
    if overrides.get("attention_impl") == "jax" and name.startswith("gemma2"):  # gemma3 has no attention cap
        from pojax.models.hf_io import CheckpointError

        with pytest.raises(CheckpointError, match="attn_logit_softcapping needs attention_impl='xla'"):
            from_pretrained(str(path), **overrides)  # refused: jax.nn.dot_product_attention cannot soft-cap
        return
    if name not in EVERY_SWITCH and overrides != {"scan_layers": True, "remat": "dots"}:
        pytest.skip("scan / remat / attention backend: checked on EVERY_SWITCH, and scan + remat on every family")
    with jax.default_matmul_precision("highest"):
        got = np.asarray(from_pretrained(str(path), **overrides)(jnp.asarray(x)))
    np.testing.assert_allclose(got, torch_logits(ref, x), atol=ATOL, rtol=0)


def test_one_layer_checkpoint_with_scan_layers_loads_and_saves(tmp_path):
    """A single stacked layer is still a stacked parameter (leading layer axis of 1)."""
    ref = make_checkpoint("llama-gqa", tmp_path / "one", num_layers=1)
    x = ids(seed=4)
    model = from_pretrained(str(tmp_path / "one"), scan_layers=True)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(model(jnp.asarray(x)))
    np.testing.assert_allclose(got, torch_logits(ref, x), atol=ATOL, rtol=0)
    save_pretrained(model, str(tmp_path / "again"))
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path / "again")).eval()
    np.testing.assert_allclose(torch_logits(again, x), torch_logits(ref, x), atol=1e-6, rtol=0)


def test_longrope_short_rows_take_the_short_table(tmp_path):
    """Rows no longer than original_max_position_embeddings use LongRoPE's short factors (the
    other parity tests' 11-token rows use the long ones), as transformers decides per call."""
    ref = make_checkpoint("phi3-longrope", tmp_path)
    x = ids(t=8, seed=5)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(from_pretrained(str(tmp_path))(jnp.asarray(x)))
    np.testing.assert_allclose(got, torch_logits(ref, x), atol=ATOL, rtol=0)
