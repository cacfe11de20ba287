"""Packed pairs give the same per-pair log-likelihoods, losses and gradients as the unpacked
[chosen; rejected] batch of pojax.objectives.preference, with and without a reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pojax.data import packing
from pojax.models import CausalLM, ModelConfig
from pojax.objectives import (
    check_packable,
    packed_pair_logps,
    packed_preference_loss,
    pair_logps,
    preference_loss,
)

V = 64
CONFIG = ModelConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)


def make_pairs(n=5, seed=0):
    """Pairs of different prompt / completion lengths (one with a 1-token completion)."""
    rng = np.random.default_rng(seed)
    lengths = [(3, 4, 2), (6, 1, 5), (2, 7, 3), (5, 3, 3), (4, 2, 6)][:n]
    return [tuple(rng.integers(1, V, k).tolist() for k in ls) for ls in lengths]


def unpacked(pairs, width=16):
    """The fixed-width paired arrays of tokenize.encode for the same pairs (pad id 0)."""
    out = {k: np.zeros((len(pairs), width), np.int32 if k.endswith("ids") else bool)
           for k in ("chosen_ids", "rejected_ids", "chosen_mask", "rejected_mask")}
    for i, (p, c, r) in enumerate(pairs):
        for side, comp in (("chosen", c), ("rejected", r)):
            out[f"{side}_ids"][i, :len(p) + len(comp)] = p + comp
            out[f"{side}_mask"][i, len(p):len(p) + len(comp)] = True
    return out


def jnp_batch(batch):
    return {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.fixture(scope="module")
def models():
    return CausalLM(CONFIG, rngs=nnx.Rngs(0)), CausalLM(CONFIG, rngs=nnx.Rngs(1))


@pytest.fixture(scope="module")
def batches():
    pairs = make_pairs()
    # 3 rows x 3 pair slots of 40 tokens: the 5 pairs (19..26 tokens each) leave empty slots.
    packed = packing.pack_pairs(pairs, num_rows=3, row_length=40, max_segments=6, pad_id=0)
    assert packed["pair_mask"].sum() == 5 and not packed["pair_mask"].all()
    return jnp_batch(packed), jnp_batch(unpacked(pairs))


@nnx.jit
def both_logps(policy, reference, packed, plain):
    got, mask = packed_pair_logps(policy, reference, packed, chunk_size=8)
    return got, mask, pair_logps(policy, reference, plain, chunk_size=8)


@pytest.mark.parametrize("with_ref", [True, False])
def test_packed_pair_logps_equal_unpacked(models, batches, with_ref):
    policy, ref = models
    packed, plain = batches
    with jax.default_matmul_precision("highest"):
        got, mask, want = both_logps(policy, ref if with_ref else None, packed, plain)
    n = len(plain["chosen_ids"])
    assert mask.tolist() == [True] * n + [False] * (len(mask) - n)  # slot k holds pair k
    fields = ["chosen", "rejected", "chosen_len", "rejected_len"] + (["ref_chosen", "ref_rejected"] if with_ref else [])
    for f in fields:
        np.testing.assert_allclose(getattr(got, f)[:n], getattr(want, f), rtol=0, atol=1e-5, err_msg=f)
    if not with_ref:
        assert got.ref_chosen is None and got.ref_rejected is None
    # empty slots: log-likelihood 0, length 1 (finite in every loss)
    assert np.all(np.asarray(got.chosen)[n:] == 0) and np.all(np.asarray(got.chosen_len)[n:] == 1)


@nnx.jit(static_argnames=("loss_name",))
def both_losses_and_grads(policy, reference, packed, plain, loss_name):
    def packed_loss(m):
        # vocabulary tiles of 7 here, one tile there: the tiling must not change the numbers either
        loss, metrics, _ = packed_preference_loss(m, reference, packed, loss_name=loss_name,
                                                  hparams={"beta": 0.1}, chunk_size=8, vocab_chunk_size=7)
        return loss, metrics

    def plain_loss(m):
        loss, metrics, _ = preference_loss(m, reference, plain, loss_name=loss_name, hparams={"beta": 0.1},
                                           chunk_size=8, vocab_chunk_size=None)
        return loss, metrics

    (a, ma), ga = nnx.value_and_grad(packed_loss, has_aux=True)(policy)
    (b, mb), gb = nnx.value_and_grad(plain_loss, has_aux=True)(policy)
    return a, ma, ga, b, mb, gb


def test_packed_loss_metrics_and_gradients_equal_unpacked(models, batches):
    """Mean over the 5 present pairs (4 empty slots excluded) = the unpacked batch mean."""
    policy, ref = models
    packed, plain = batches
    with jax.default_matmul_precision("highest"):
        a, ma, ga, b, mb, gb = both_losses_and_grads(policy, ref, packed, plain, "sigmoid")
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert ma.keys() == mb.keys()
    for k in ma:
        np.testing.assert_allclose(ma[k], mb[k], rtol=0, atol=1e-5, err_msg=k)
    flat_a, flat_b = jax.tree.leaves(ga), jax.tree.leaves(gb)
    assert len(flat_a) == len(flat_b) and any(np.abs(x).max() > 1e-4 for x in flat_a)
    for x, y in zip(flat_a, flat_b):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


def test_packed_dpo_at_policy_equal_reference_is_log_2(models, batches):
    policy, _ = models
    packed, _ = batches
    loss, metrics, _ = nnx.jit(lambda m, b: packed_preference_loss(m, m, b, loss_name="dpo", hparams={"beta": 0.1},
                                                                   chunk_size=8))(policy, packed)
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(metrics["rewards/margins"], 0.0, atol=1e-6)


def test_precomputed_reference_travels_as_pair_extras(models):
    """reference.mode='precomputed': stored ref sums ride in the packed batch as [P] extras."""
    policy, ref = models
    pairs = make_pairs()
    plain = jnp_batch(unpacked(pairs))
    with jax.default_matmul_precision("highest"):
        stored = nnx.jit(lambda r, b: pair_logps(r, None, b, chunk_size=8))(ref, plain)
        extras = {"ref_chosen": np.asarray(stored.chosen), "ref_rejected": np.asarray(stored.rejected)}
        batches = list(packing.packed_batches(pairs, num_rows=2, row_length=40, max_segments=4, extras=extras))
        fn = nnx.jit(lambda m, r, b: packed_preference_loss(m, r, b, loss_name="sigmoid", hparams={"beta": 0.1},
                                                            chunk_size=8)[0])
        got = [fn(policy, None, jnp_batch(b)) for b in batches]
        want = [fn(policy, ref, jnp_batch(b)) for b in batches]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,hparams,match", [
    ("aot", {}, "loss 'aot' couples"),
    ("orpo", {}, "loss 'orpo' couples"),
    ("sigmoid+sft", {}, "loss 'sft' couples"),
    ("cpo", {}, "cpo_alpha=1.0 couples"),
    ("sigmoid", {"rpo_alpha": 1.0}, "loss.rpo_alpha"),
    ("sigmoid", {"ld_alpha": 0.5}, "loss.ld_alpha needs per-pair token log-probs"),
    ("sigmoid", {"use_weighting": True}, "loss.use_weighting needs per-pair token log-probs"),
])
def test_unsupported_losses_are_refused(name, hparams, match):
    with pytest.raises(ValueError, match=match):
        check_packable(name, hparams)


def test_supported_losses_pass_the_check():
    for name, hparams in [("sigmoid", {}), ("dpo", {"rpo_alpha": None}), ("ipo", {}), ("simpo", {}),
                          ("cpo", {"cpo_alpha": 0.0}), ("sigmoid+hinge", {})]:
        check_packable(name, hparams)
