"""Chunked log-probs equal the naive full-logits ones (values and gradients, fp32 and bf16, any
sequence chunk and vocabulary tile), the sums match hand values, and the compiled temp memory
scales with the chunk and the tile, not with T·V, and stays flat in V beyond one tile."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from pojax.likelihood import autoregressive as ar


def naive(hidden_BTD, w_DV, targets_BT, *, logit_soft_cap=None):
    """The reference: full [B, T, V] fp32 logits, log_softmax, gather. (logps, log Σ p²)."""
    logits = jnp.einsum("btd,dv->btv", hidden_BTD.astype(jnp.float32), w_DV.astype(jnp.float32),
                        precision=jax.lax.Precision.HIGHEST)
    if logit_soft_cap is not None:
        logits = logit_soft_cap * jnp.tanh(logits / logit_soft_cap)
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, targets_BT[..., None], axis=-1)[..., 0]
    return picked, jnp.log(jnp.sum(jnp.exp(logp) ** 2, axis=-1))


# Jitted once per shape: eager op-by-op dispatch would compile every primitive separately.
chunked_jit = jax.jit(ar.token_logps_from_hidden,
                      static_argnames=("chunk_size", "logit_soft_cap", "return_log_sum_sq", "vocab_chunk_size"))
naive_jit = jax.jit(naive, static_argnames=("logit_soft_cap",))


def inputs(b=3, t=13, d=16, v=50, seed=0, dtype=jnp.float32):
    """Random hidden [B, T, D], head [D, V], targets [B, T] (numpy RNG: no eager JAX compiles)."""
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.standard_normal((b, t, d), np.float32), dtype)
    w = jnp.asarray(rng.standard_normal((d, v), np.float32) / 2, dtype)
    return hidden, w, jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32)


@pytest.mark.parametrize("chunk", [1, 4, 5, 13, 16, 1024])  # T = 13: non-divisors, T, > T
def test_equals_naive_for_any_chunk(chunk):
    h, w, tg = inputs()
    got, got_sq = chunked_jit(h, w, tg, chunk_size=chunk, return_log_sum_sq=True)
    want, want_sq = naive_jit(h, w, tg)
    assert got.shape == got_sq.shape == (3, 13) and got.dtype == got_sq.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_sq, want_sq, rtol=0, atol=1e-5)
    # the single-output form returns the same log-probs
    np.testing.assert_array_equal(chunked_jit(h, w, tg, chunk_size=chunk), got)


def test_logit_soft_cap_equals_naive():
    h, w, tg = inputs(seed=3)
    got, got_sq = chunked_jit(h, w, tg, chunk_size=6, logit_soft_cap=2.0, return_log_sum_sq=True)
    want, want_sq = naive_jit(h, w, tg, logit_soft_cap=2.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_sq, want_sq, rtol=0, atol=1e-5)
    assert not np.allclose(got, naive_jit(h, w, tg)[0], atol=1e-2)  # the cap does change the numbers


def test_bf16_inputs_match_fp32_reference_on_the_same_values():
    h, w, tg = inputs(seed=4, dtype=jnp.bfloat16)
    got, got_sq = chunked_jit(h, w, tg, chunk_size=5, return_log_sum_sq=True)
    assert got.dtype == got_sq.dtype == jnp.float32
    # fp32 math on the bf16-rounded values
    want, want_sq = naive_jit(h.astype(jnp.float32), w.astype(jnp.float32), tg)
    # bf16·bf16 products are exact in fp32; only the summation order differs from the reference.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(got_sq, want_sq, rtol=0, atol=1e-4)
    loss = lambda h, w: jnp.sum(ar.token_logps_from_hidden(h, w, tg, chunk_size=5))
    gh, gw = jax.jit(jax.grad(loss, (0, 1)))(h, w)
    assert gh.dtype == gw.dtype == jnp.bfloat16


@pytest.mark.parametrize("tile", [1, 7, 16, 49, 50, None])  # V = 50: non-divisors (clamped last tile), V, one tile
@pytest.mark.parametrize("cap", [None, 2.0])
def test_vocab_tiles_equal_naive_values_and_gradients(tile, cap):
    h, w, tg = inputs(seed=7)
    got, got_sq = chunked_jit(h, w, tg, chunk_size=5, logit_soft_cap=cap, return_log_sum_sq=True,
                              vocab_chunk_size=tile)
    want, want_sq = naive_jit(h, w, tg, logit_soft_cap=cap)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_sq, want_sq, rtol=0, atol=1e-5)
    c1, c2 = jax.random.normal(jax.random.key(3), (2, *tg.shape))

    def tiled(h, w):
        logps, log_sq = ar.token_logps_from_hidden(h, w, tg, chunk_size=5, logit_soft_cap=cap,
                                                   return_log_sum_sq=True, vocab_chunk_size=tile)
        return jnp.sum(c1 * logps + c2 * log_sq)

    def reference(h, w):
        logps, log_sq = naive(h, w, tg, logit_soft_cap=cap)
        return jnp.sum(c1 * logps + c2 * log_sq)

    for g, r in zip(jax.jit(jax.grad(tiled, (0, 1)))(h, w), jax.jit(jax.grad(reference, (0, 1)))(h, w)):
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunk", [5, 13])
def test_gradients_equal_naive(chunk):
    h, w, tg = inputs(seed=1)
    c1, c2 = jax.random.normal(jax.random.key(9), (2, *tg.shape))

    def chunked(h, w):
        logps, log_sq = ar.token_logps_from_hidden(h, w, tg, chunk_size=chunk, return_log_sum_sq=True)
        return jnp.sum(c1 * logps + c2 * log_sq)

    def reference(h, w):
        logps, log_sq = naive(h, w, tg)
        return jnp.sum(c1 * logps + c2 * log_sq)

    got = jax.jit(jax.grad(chunked, argnums=(0, 1)))(h, w)
    want = jax.jit(jax.grad(reference, argnums=(0, 1)))(h, w)
    for g, r in zip(got, want):
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-5)
    assert float(jnp.abs(got[0]).max()) > 0 and float(jnp.abs(got[1]).max()) > 0


def test_jit_equals_no_jit():
    h, w, tg = inputs(seed=2)
    fn = lambda h, w, tg: ar.token_logps_from_hidden(h, w, tg, chunk_size=4, return_log_sum_sq=True)
    for a, b in zip(jax.jit(fn)(h, w, tg), fn(h, w, tg)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    mask = tg % 2 == 0
    np.testing.assert_allclose(jax.jit(ar.sequence_logps)(fn(h, w, tg)[0], mask),
                               ar.sequence_logps(fn(h, w, tg)[0], mask), rtol=1e-6)


def test_sequence_and_mean_logps_by_hand():
    lp = jnp.array([[-1.0, -2.0, -3.0, -4.0, -np.inf],
                    [-0.5, -0.25, -1.0, -2.0, -8.0]])
    mask = jnp.array([[False, True, True, True, False],
                      [False, False, False, False, False]])
    # the masked -inf must not leak: where, not multiply
    np.testing.assert_array_equal(ar.sequence_logps(lp, mask), np.array([-9.0, 0.0], np.float32))
    np.testing.assert_array_equal(ar.mean_logps(lp, mask), np.array([-3.0, 0.0], np.float32))
    assert ar.sequence_logps(lp.astype(jnp.bfloat16), mask).dtype == jnp.float32


def test_segment_logps_by_hand():
    lp = jnp.array([[-1.0, -2.0, -3.0, -4.0, -5.0, -6.0],
                    [-0.5, -0.25, -1.0, -2.0, -8.0, -16.0]])
    seg = jnp.array([[1, 1, 2, 2, 3, 0],
                     [2, 2, 2, 1, 1, 0]])
    mask = jnp.array([[True, True, False, True, True, True],
                      [True, True, True, True, False, True]])
    want = np.array([[-3.0, -4.0, -5.0],   # segment 2 loses its masked -3; the padding -6 counts nowhere
                     [-2.0, -1.75, 0.0]],  # segment 3 absent → 0
                    np.float32)
    np.testing.assert_array_equal(ar.segment_logps(lp, seg, mask, 3), want)
    # with a single segment covering each row it is sequence_logps
    ones = jnp.ones_like(seg)
    np.testing.assert_array_equal(ar.segment_logps(lp, ones, mask, 1)[:, 0], ar.sequence_logps(lp, mask))


def test_shift_targets():
    ids = jnp.array([[5, 6, 7, 8, 9, 10]])
    completion = jnp.array([[0, 0, 1, 1, 1, 1]])
    tg, m = ar.shift_targets(ids, completion)
    np.testing.assert_array_equal(tg, [[6, 7, 8, 9, 10, 0]])
    np.testing.assert_array_equal(m, [[False, True, True, True, True, False]])
    assert m.dtype == jnp.bool_
    # packed: documents [5 6 7] and [8 9 10]; position 2 (token 7) must not score token 8
    _, m = ar.shift_targets(ids, jnp.ones_like(ids), segment_ids_BT=jnp.array([[1, 1, 1, 2, 2, 2]]))
    np.testing.assert_array_equal(m, [[True, True, False, True, True, False]])


@pytest.mark.parametrize("tied", [False, True])
def test_model_token_logps_equal_log_softmax_of_its_logits(tied):
    """Through a real pojax CausalLM: the chunked path equals log_softmax of ``model(ids)``."""
    from flax import nnx

    from pojax.models import CausalLM, ModelConfig

    model = CausalLM(ModelConfig(vocab_size=61, num_hidden_layers=1, tie_word_embeddings=tied), rngs=nnx.Rngs(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 61, (2, 9)), jnp.int32)
    tg, mask = ar.shift_targets(ids, jnp.ones_like(ids, bool))

    @nnx.jit  # one compile instead of op-by-op dispatch through the decoder
    def both(model, ids, tg):
        full = jnp.take_along_axis(jax.nn.log_softmax(model(ids), -1), tg[..., None], -1)[..., 0]
        return ar.token_logps(model, ids, tg, chunk_size=4), full

    with jax.default_matmul_precision("highest"):
        got, want = both(model, ids, tg)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ar.sequence_logps(got, mask), np.sum(np.where(mask, want, 0.0), -1), rtol=0, atol=1e-4)


def test_batch_sharded_input_stays_sharded():
    """On the 8 test devices with B split over "data": same numbers, no all-gather, and the
    per-device temp memory is that of a single row."""
    mesh = jax.make_mesh((8,), ("data",))
    h, w, tg = inputs(b=8, t=64, d=16, v=256, seed=6)
    fn = jax.jit(lambda h, w, tg: ar.token_logps_from_hidden(h, w, tg, chunk_size=16))
    rows = NamedSharding(mesh, P("data"))
    h_s, tg_s, w_s = jax.device_put(h, rows), jax.device_put(tg, rows), jax.device_put(w, NamedSharding(mesh, P()))
    np.testing.assert_allclose(fn(h_s, w_s, tg_s), naive_jit(h, w, tg)[0], rtol=0, atol=1e-5)

    grad = jax.jit(jax.grad(lambda h, w, tg: jnp.sum(ar.token_logps_from_hidden(h, w, tg, chunk_size=16)), (0, 1)))
    sharded = grad.lower(h_s, w_s, tg_s).compile()
    assert "all-gather" not in sharded.as_text()
    one_row = grad.lower(h[:1], w, tg[:1]).compile()
    assert sharded.memory_analysis().temp_size_in_bytes <= 1.1 * one_row.memory_analysis().temp_size_in_bytes


def _temp_bytes(per_token_fn, b, t, d, v):
    """Compiled temp bytes of value_and_grad(Σ token log-probs) w.r.t. hidden and head; nothing runs."""
    shapes = (jax.ShapeDtypeStruct((b, t, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32),
              jax.ShapeDtypeStruct((b, t), jnp.int32))
    loss = lambda h, w, tg: jnp.sum(per_token_fn(h, w, tg))
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*shapes).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_temp_memory_scales_with_chunk_and_tile_not_with_vocab_times_length():
    b, t, d, v, vt = 1, 2048, 64, 128 * 1024, ar.DEFAULT_VOCAB_CHUNK
    naive_bytes = _temp_bytes(lambda h, w, tg: naive(h, w, tg)[0], b, t, d, v)
    chunked = {c: _temp_bytes(lambda h, w, tg, c=c: ar.token_logps_from_hidden(h, w, tg, chunk_size=c), b, t, d, v)
               for c in (128, 512)}
    print(f"\n[B={b}, T={t}, D={d}, V={v}, Vt={vt}] value_and_grad temp bytes: naive {naive_bytes:,}; "
          + "; ".join(f"chunk {c}: {n:,}" for c, n in chunked.items()))
    assert naive_bytes >= b * t * v * 4  # the naive version holds the full fp32 logits
    assert chunked[512] < naive_bytes / 40
    # grows with the chunk, roughly in proportion: a few [B, C, Vt] fp32 tile buffers
    growth = (chunked[512] - chunked[128]) / ((512 - 128) * b * vt * 4)
    assert 1 <= growth <= 4, growth
    # and is bounded by a few tile buffers plus the [D, V] fp32 gradient of the head
    assert chunked[512] < 4 * b * 512 * vt * 4 + 3 * d * v * 4


def test_temp_memory_flat_in_vocab_beyond_one_tile():
    """From V = 32k to 128k the temp memory grows by the [D, V] head-gradient terms only; with
    one tile over the whole vocabulary it grows by at least the extra [B, C, V] logits."""
    b, t, d, c = 1, 1024, 64, 512
    fn = lambda tile: lambda h, w, tg: ar.token_logps_from_hidden(h, w, tg, chunk_size=c, vocab_chunk_size=tile)
    tiled = {v: _temp_bytes(fn(ar.DEFAULT_VOCAB_CHUNK), b, t, d, v) for v in (32 * 1024, 128 * 1024)}
    whole = {v: _temp_bytes(fn(None), b, t, d, v) for v in (32 * 1024, 128 * 1024)}
    dv = 96 * 1024
    print(f"\ntemp bytes V=32k→128k: tiled {tiled}, one tile {whole}")
    assert tiled[128 * 1024] - tiled[32 * 1024] <= 3 * d * dv * 4
    assert whole[128 * 1024] - whole[32 * 1024] >= b * c * dv * 4
