"""Shared-prompt log-probs (one forward per prompt, K completions as branches) equal those of each
sequence in its own row: values, log Σp², gradients, sliding windows, ragged prompts, an empty
prompt, K = 2 and 3, sharded over 8 devices; the branch mask is the hand-derived one; the
window width is the tightest that serves the rows and refuses rows that do not share a prompt."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pojax.likelihood import autoregressive as ar
from pojax.likelihood import shared_prompt as sp
from pojax.models.config import ModelConfig
from pojax.models.layers import attention_mask
from pojax.models.transformer import CausalLM
from pojax.objectives import pair_logps, preference_loss, ranked_logps, unpaired_logps


def model(sliding_window=None, seed=0):
    cfg = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=sliding_window,
                      layer_types=None if sliding_window is None else ("sliding_attention", "full_attention"))
    return CausalLM(cfg, rngs=nnx.Rngs(seed))


def rows(prompts, lengths, t=12, seed=0):
    """ids, mask [B, K, T]: row b's K sequences share prompts[b] tokens, completion k has lengths[b][k]."""
    rng = np.random.default_rng(seed)
    b, k = len(prompts), len(lengths[0])
    ids = rng.integers(1, 50, (b, k, t)).astype(np.int32)
    mask = np.zeros((b, k, t), bool)
    for i, p in enumerate(prompts):
        ids[i, :, :p] = ids[i, 0, :p]
        for j, n in enumerate(lengths[i]):
            mask[i, j, p:p + n] = True
            ids[i, j, p + n:] = 0  # right padding
    return ids, mask


def separate(m, ids, mask, **kw):
    """The reference: every sequence in its own row, [B, K, T]."""
    b, k, t = ids.shape
    tg, tm = ar.shift_targets(jnp.asarray(ids.reshape(b * k, t)), jnp.asarray(mask.reshape(b * k, t)))
    out = nnx.jit(lambda mm: ar.token_logps(mm, jnp.asarray(ids.reshape(b * k, t)), tg, chunk_size=5,
                                            vocab_chunk_size=16, **kw))(m)
    shape = lambda x: np.asarray(x).reshape(b, k, t)
    return (shape(out[0]), shape(tm), shape(out[1])) if kw else (shape(out), shape(tm))


CASES = {"pairs": ([4, 1, 6], [[5, 3], [7, 8], [2, 6]]),
         "three": ([4, 1, 6], [[5, 3, 2], [7, 8, 1], [2, 6, 3]]),
         "no_prompt": ([0, 3], [[4, 2], [5, 5]])}


@pytest.mark.parametrize("case", sorted(CASES))
def test_values_equal_separate_rows(case):
    ids, mask = rows(*CASES[case])
    m = model()
    width = sp.window_width(ids, mask)
    tok, tm, sq = nnx.jit(lambda mm: sp.token_logps(mm, jnp.asarray(ids), jnp.asarray(mask), width, chunk_size=5,
                                                    vocab_chunk_size=16, return_log_sum_sq=True))(m)
    want, want_mask, want_sq = separate(m, ids, mask, return_log_sum_sq=True)
    np.testing.assert_array_equal(np.asarray(tm), want_mask)
    assert want_mask.sum() == mask.sum() - (np.asarray(CASES[case][0]) == 0).sum() * ids.shape[1]
    np.testing.assert_allclose(np.where(want_mask, tok, 0), np.where(want_mask, want, 0), atol=2e-5)
    np.testing.assert_allclose(np.where(want_mask, sq, 0), np.where(want_mask, want_sq, 0), atol=2e-5)
    assert np.all(np.asarray(tok)[~want_mask] == 0)


def test_sliding_window_model_equals_separate_rows():
    ids, mask = rows([6, 2], [[5, 3], [6, 9]], t=14, seed=1)
    m = model(sliding_window=3)
    width = sp.window_width(ids, mask)
    tok, tm = nnx.jit(lambda mm: sp.token_logps(mm, jnp.asarray(ids), jnp.asarray(mask), width, chunk_size=5,
                                                vocab_chunk_size=16))(m)
    want, want_mask = separate(m, ids, mask)
    np.testing.assert_allclose(np.where(want_mask, tok, 0), np.where(want_mask, want, 0), atol=2e-5)


def test_gradients_equal_separate_rows():
    ids, mask = rows(*CASES["three"], seed=2)
    m = model(seed=1)
    width = sp.window_width(ids, mask)
    weights = np.random.default_rng(3).standard_normal(ids.shape).astype(np.float32)

    def shared(mm):
        tok, tm = sp.token_logps(mm, jnp.asarray(ids), jnp.asarray(mask), width, chunk_size=5, vocab_chunk_size=16)
        return jnp.sum(jnp.where(tm, tok * weights, 0.0))

    def apart(mm):
        tok, tm = _separate_jnp(mm, ids, mask)
        return jnp.sum(jnp.where(tm, tok * weights, 0.0))

    g1, g2 = nnx.jit(nnx.grad(shared))(m), nnx.jit(nnx.grad(apart))(m)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
    assert sum(float(jnp.abs(a).sum()) for a in jax.tree.leaves(g1)) > 0


def _separate_jnp(m, ids, mask):
    b, k, t = ids.shape
    tg, tm = ar.shift_targets(jnp.asarray(ids.reshape(b * k, t)), jnp.asarray(mask.reshape(b * k, t)))
    tok = ar.token_logps(m, jnp.asarray(ids.reshape(b * k, t)), tg, chunk_size=5, vocab_chunk_size=16)
    return tok.reshape(b, k, t), tm.reshape(b, k, t)


def test_branch_mask_by_hand():
    # one row: prompt of 2 (branch 0), completion A of 2 (branch 1), window B of 2 (branch 2)
    ids, positions, branch = sp.shared_rows(jnp.arange(8).reshape(1, 2, 4), jnp.array([2]), 2)
    np.testing.assert_array_equal(positions, [[0, 1, 2, 3, 2, 3]])
    np.testing.assert_array_equal(branch, [[0, 0, 1, 1, 2, 2]])
    np.testing.assert_array_equal(ids, [[0, 1, 2, 3, 6, 7]])
    got = np.asarray(attention_mask(positions, positions, q_branch=branch, kv_branch=branch))[0].astype(int)
    want = np.array([[1, 0, 0, 0, 0, 0],
                     [1, 1, 0, 0, 0, 0],
                     [1, 1, 1, 0, 0, 0],
                     [1, 1, 1, 1, 0, 0],
                     [1, 1, 0, 0, 1, 0],
                     [1, 1, 0, 0, 1, 1]])
    np.testing.assert_array_equal(got, want)


def test_window_width():
    ids, mask = rows([4, 1, 6], [[5, 3], [7, 8], [2, 6]])
    assert sp.window_width(ids, mask) == 8  # row 1: prompt 1, longest completion 8
    bad = ids.copy()
    bad[0, 1, 2] += 1  # the rejected prompt differs from the chosen one
    assert sp.window_width(bad, mask) is None
    empty = mask.copy()
    empty[2] = False  # a row without any completion token
    assert sp.window_width(ids, empty) is None
    ragged, rmask = rows([3, 2], [[4, 2, 1], [3, 5, 2]], seed=4)
    ragged[1, 2] = 0  # a missing ranked response: all padding, nothing to score
    rmask[1, 2] = False
    assert sp.window_width(ragged, rmask) == 5


def test_pair_ranked_unpaired_logps_equal_unshared():
    ids, mask = rows(*CASES["three"], seed=5)
    m, ref = model(seed=2), model(seed=3)
    width = sp.window_width(ids, mask)
    pairs = {"chosen_ids": ids[:, 0], "rejected_ids": ids[:, 1], "chosen_mask": mask[:, 0], "rejected_mask": mask[:, 1]}
    for fn, batch in [(pair_logps, pairs),
                      (ranked_logps, {"input_ids": ids, "completion_mask": mask, "scores": np.ones(ids.shape[:2])}),
                      (unpaired_logps, {"input_ids": ids[:, 0], "completion_mask": mask[:, 0], "kl_ids": ids[:, 2],
                                        "kl_mask": mask[:, 2], "label": np.array([True, False, True])})]:
        a = nnx.jit(lambda mm, rr: fn(mm, rr, batch, chunk_size=5, vocab_chunk_size=16, completion_width=width))(m, ref)
        b = nnx.jit(lambda mm, rr: fn(mm, rr, batch, chunk_size=5, vocab_chunk_size=16))(m, ref)
        if fn is pair_logps:  # token rows: equal where scored (elsewhere the unshared path keeps raw values)
            for half in ("chosen_tokens", "rejected_tokens"):
                ta, tb = getattr(a, half), getattr(b, half)
                np.testing.assert_array_equal(ta.mask, tb.mask)
                for x, y in [(ta.policy, tb.policy), (ta.ref, tb.ref)]:
                    np.testing.assert_allclose(np.where(tb.mask, x, 0), np.where(tb.mask, y, 0), atol=2e-5)
            a, b = (dataclasses.replace(x, chosen_tokens=None, rejected_tokens=None) for x in (a, b))
        if fn is ranked_logps:  # tpo's lengths: the scored (shifted) completion tokens of each response
            np.testing.assert_array_equal(a.length, mask[:, :, 1:].sum(-1))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(x, y, atol=1e-4, rtol=1e-5)
    # and the DPO loss at init (policy = reference) is log 2 through the shared path
    loss = nnx.jit(lambda mm: preference_loss(mm, mm, pairs, loss_name="sigmoid", hparams={"beta": 0.1}, chunk_size=5,
                                              completion_width=width)[0])(m)
    np.testing.assert_allclose(loss, np.log(2), rtol=1e-6)


def test_sharded_equals_single_device():
    ids, mask = rows([4, 1, 6, 2, 5, 3, 0, 7], [[5, 3], [7, 8], [2, 6], [3, 3], [6, 1], [2, 2], [4, 5], [4, 1]],
                     t=16, seed=6)
    m = model(seed=4)
    width = sp.window_width(ids, mask)
    fn = nnx.jit(lambda mm, i, k: sp.token_logps(mm, i, k, width, chunk_size=8, vocab_chunk_size=16))
    single = fn(m, jnp.asarray(ids), jnp.asarray(mask))
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    shard = NamedSharding(mesh, P("data"))
    sharded = fn(m, jax.device_put(ids, shard), jax.device_put(mask, shard))
    assert len(sharded[0].sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(sharded[0]), np.asarray(single[0]), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(sharded[1]), np.asarray(single[1]))


@pytest.mark.parametrize("query_block", [5, 12])  # several blocks, the last one partial; one block
def test_attention_parts_equal_the_full_mask(query_block):
    """Skipping the key blocks the shared layout hides (causal query blocks of the first
    sequence, other completions' windows) gives the hidden states of the full masked attention."""
    ids, mask = rows(*CASES["three"], seed=7)
    m = model(sliding_window=4, seed=5)
    width = sp.window_width(ids, mask)
    b, k, t = ids.shape
    row_ids, positions, branch = sp.shared_rows(jnp.asarray(ids), sp.prompt_lengths(jnp.asarray(mask)), width)
    parts = sp.attention_parts(t, width, k, query_block=query_block)
    assert len(parts) == -(-t // query_block) + k - 1
    hidden = lambda p: nnx.jit(lambda mm: mm.hidden_states(row_ids, positions=positions, branch_ids=branch,
                                                           attention_parts=p))(m)
    full, parted = hidden(None), hidden(parts)
    np.testing.assert_allclose(parted, full, atol=1e-5)
    weights = np.random.default_rng(8).standard_normal(full.shape).astype(np.float32)
    grad = lambda p: nnx.jit(nnx.grad(lambda mm: jnp.sum(weights * mm.hidden_states(
        row_ids, positions=positions, branch_ids=branch, attention_parts=p))))(m)
    for a, b in zip(jax.tree.leaves(grad(parts)), jax.tree.leaves(grad(None)), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
