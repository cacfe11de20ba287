"""Masked-diffusion likelihoods: draws, ELBO estimators, LLaDA's SFT / pre-training losses.

The reference values are exact: for a response of L ≤ 5 tokens the ELBO
𝓑 = Σ_l (1/l) E_{|A|=l}[Σ_{i∈A} log p(x_i | x_A masked)] (and the ε-clipped timestep form) is
computed by enumerating all 2^L - 1 masked subsets. Every estimator must be unbiased for it
(Monte Carlo mean within 4 standard errors, fixed seeds). For a factorized model
(p(x_i | anything) = q_i(x_i)) the ELBO equals the exact log-likelihood Σ_i log q_i(x_i).
Run with ``-s`` to see the measured z-scores and variance ratios.
"""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pojax.likelihood import diffusion as dl

V = 5  # real tokens 0..3, mask token 4 (the head scores all 5, as LLaDA's does)
MASK = 4


class ToyMDM(nnx.Module):
    """Embedding + learned positions + one bidirectional attention layer + MLP, untied head.

    Initialized from numpy (no eager JAX ops to compile); same seed, same weights."""

    def __init__(self, seed=0, vocab=V, max_len=8, d=16):
        rng = np.random.default_rng(seed)
        n = lambda *s: nnx.Param(jnp.asarray(rng.standard_normal(s, np.float32) / np.sqrt(s[0])))
        self.embed = nnx.Param(jnp.asarray(rng.standard_normal((vocab, d), np.float32)))
        self.pos = nnx.Param(jnp.asarray(rng.standard_normal((max_len, d), np.float32)))
        self.wqkv, self.wo, self.w1, self.w2 = n(d, 3 * d), n(d, d), n(d, 2 * d), n(2 * d, d)
        self.head = n(d, vocab)

    def hidden_states(self, ids, *, positions=None, segment_ids=None):
        b, t = ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t), (b, t))
        x = self.embed[...][ids] + self.pos[...][positions]
        q, k, v = jnp.split(x @ self.wqkv[...], 3, axis=-1)
        s = jnp.einsum("btd,bsd->bts", q, k) / math.sqrt(q.shape[-1])
        if segment_ids is not None:
            s = jnp.where(segment_ids[:, None, :] == segment_ids[:, :, None], s, -1e9)
        x = x + jax.nn.softmax(s, axis=-1) @ v @ self.wo[...]
        return x + jnp.tanh(x @ self.w1[...]) @ self.w2[...]

    def lm_head_weight(self):
        return self.head[...]

    def logits(self, ids):
        return self.hidden_states(ids) @ self.head[...]


class Factorized(nnx.Module):
    """p(x_i | anything) = softmax(table[i]): the logits depend on the position only."""

    def __init__(self, seed=1, max_len=8):
        table = np.random.default_rng(seed).standard_normal((max_len, V), np.float32)
        self.table = nnx.Param(jnp.asarray(table))

    def hidden_states(self, ids, *, positions=None, segment_ids=None):
        return jax.nn.one_hot(jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape), self.table.shape[0])

    def lm_head_weight(self):
        return self.table[...]

    def logits(self, ids):
        return self.hidden_states(ids) @ self.table[...]


# Three rows of T = 6: prompt | response | padding (response_mask False beyond the response).
TOKENS = np.array([[0, 1, 2, 3, 1, 0], [3, 2, 2, 0, 1, 1], [1, 1, 0, 2, 3, 3]], np.int32)
PROMPT = np.array([[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]], bool)
RESPONSE = np.array([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0]], bool)

elbo_jit = nnx.jit(dl.elbo, static_argnames=("n_mc", "mask_id", "estimator", "eps", "chunk_size"))


log_probs = nnx.jit(lambda model, ids: jax.nn.log_softmax(model.logits(ids), -1))
per_draw_seg = nnx.jit(lambda m, tok, d, seg: dl.elbo_per_draw(m, tok, d, mask_id=MASK, segment_ids=seg))
sft_jit = nnx.jit(dl.sft_loss, static_argnames=("mask_id",))
pretrain_jit = nnx.jit(dl.pretrain_loss, static_argnames=("mask_id",))
make_draws_jit = jax.jit(dl.make_draws, static_argnames=("n_mc", "estimator", "eps"))


def timestep_coeff(l, n, eps):
    """(1/(1-ε)) ∫_ε^1 p^{l-1} (1-p)^{n-l} dp: the timestep estimator's weight of one l-subset."""
    P = np.polynomial.Polynomial
    prim = (P([0] * (l - 1) + [1]) * P([1, -1]) ** (n - l)).integ()
    return (prim(1.0) - prim(eps)) / (1.0 - eps)


def exact_elbos(model, tokens_T, response_T, eps):
    """(length form 𝓑, ε-clipped timestep form) of one row, by enumerating every masked subset."""
    pos = np.flatnonzero(response_T)
    n = len(pos)
    subsets = [a for l in range(1, n + 1) for a in itertools.combinations(pos, l)]
    masks = np.zeros((32, len(tokens_T)), bool)  # ≥ 2^L - 1 rows (L ≤ 5): one compiled shape
    for r, a in enumerate(subsets):
        masks[r, list(a)] = True
    noisy = np.where(masks, MASK, tokens_T[None])
    logp = np.asarray(log_probs(model, jnp.asarray(noisy)), np.float64)
    picked = np.take_along_axis(logp, np.broadcast_to(tokens_T, masks.shape)[..., None], -1)[..., 0]
    g = np.where(masks, picked, 0.0).sum(-1)[:len(subsets)]
    sizes = masks.sum(-1)[:len(subsets)]
    length_form = sum(g[sizes == l].mean() / l for l in range(1, n + 1))
    timestep_form = sum(timestep_coeff(s, n, eps) * gi for s, gi in zip(sizes, g))
    return length_form, timestep_form


def replicate(n):
    """Each of the 3 rows n times: [3n, T] (row r·n + i is a copy of row r)."""
    rep = lambda a: jnp.asarray(np.repeat(a, n, axis=0))
    return rep(TOKENS), rep(PROMPT), rep(RESPONSE)


N_REP, N_MC = 2000, 4  # one compiled shape for every Monte Carlo test below


@nnx.jit(static_argnames=("estimator",))
def _per_draw(model, key, estimator):
    tok, pr, resp = replicate(N_REP)
    draws = dl.make_draws(key, dl.response_positions(pr, resp), n_mc=N_MC, estimator=estimator)
    return dl.elbo_per_draw(model, tok, draws, mask_id=MASK)


def mc(model, estimator, seed):
    """[3, N_REP, N_MC] per-draw estimates of each row; their mean over the last axis is ``elbo``."""
    est = _per_draw(model, jax.random.key(seed), estimator)
    return np.asarray(est, np.float64).reshape(3, N_REP, N_MC)


def z_score(samples, target):
    return (samples.mean() - target) / (samples.std() / np.sqrt(len(samples)))


def test_mask_tokens_rate_and_maskable():
    tokens = jnp.zeros((400, 50), jnp.int32)
    maskable = jnp.arange(50) >= 10
    noisy, masked = dl.mask_tokens(tokens, jnp.full((400,), 0.3), jax.random.key(0), MASK,
                                   jnp.broadcast_to(maskable, (400, 50)))
    noisy, masked = np.asarray(noisy), np.asarray(masked)
    assert not masked[:, :10].any()
    assert abs(float(masked[:, 10:].mean()) - 0.3) < 0.01
    np.testing.assert_array_equal(noisy, np.where(masked, MASK, 0))
    p = np.asarray(dl.sample_p_mask(jax.random.key(1), 10000, eps=0.1))
    assert float(p.min()) >= 0.1 and float(p.max()) <= 1.0 and abs(float(p.mean()) - 0.55) < 0.01


@pytest.mark.parametrize("estimator", dl.ESTIMATORS)
def test_draws_stay_in_the_response_and_have_the_stated_weights(estimator):
    resp = jnp.asarray(RESPONSE)
    n = RESPONSE.sum(-1)
    d = make_draws_jit(jax.random.key(3), resp, n_mc=12, estimator=estimator)
    mask, w = np.asarray(d.mask), np.asarray(d.weight)
    assert mask.shape == (3, 12, 6) and w.shape == (3, 12) and w.dtype == np.float32
    assert not (mask & ~RESPONSE[:, None]).any()  # prompt and padding never masked
    counts = mask.sum(-1)
    if estimator.startswith("length"):
        np.testing.assert_allclose(w * counts, np.broadcast_to(n[:, None], w.shape), rtol=1e-6)
        assert counts.min() >= 1
    else:
        assert (w >= 1.0).all() and (w <= 1 / dl.DEFAULT_EPS + 1e-3).all()
    if estimator == "length_stratified":
        # M = 12 draws over L ∈ {3, 4, 2}: every length exactly M / L times.
        for r in range(3):
            c = np.bincount(counts[r], minlength=5)[1:n[r] + 1]
            assert (c == 12 // n[r]).all(), c


def test_same_key_same_draws_policy_and_reference_share_them():
    model = ToyMDM(0)
    tok, pr, resp = map(jnp.asarray, (TOKENS, PROMPT, RESPONSE))
    key = jax.random.key(7)
    a = elbo_jit(model, tok, pr, key, n_mc=4, mask_id=MASK, response_mask=resp)
    draws = make_draws_jit(key, dl.response_positions(pr, resp), n_mc=4)
    b = elbo_jit(model, tok, pr, None, n_mc=4, mask_id=MASK, response_mask=resp, draws=draws)
    np.testing.assert_array_equal(a, b)
    per_draw = per_draw_seg(model, tok, draws, None)
    assert per_draw.shape == (3, 4)
    np.testing.assert_allclose(per_draw.mean(-1), a, rtol=1e-6)
    c = elbo_jit(model, tok, pr, jax.random.key(8), n_mc=4, mask_id=MASK, response_mask=resp)
    assert not np.allclose(a, c)
    assert a.shape == (3,) and a.dtype == jnp.float32
    # segment ids reach every folded copy of its own row: hiding the padding column (segment 2)
    # equals dropping it
    seg = jnp.asarray(np.where(RESPONSE | PROMPT, 1, 2))
    hidden = per_draw_seg(model, tok, draws, seg)
    dropped = per_draw_seg(model, tok[:, :5], draws.replace(mask=draws.mask[:, :, :5]), None)
    np.testing.assert_allclose(hidden, dropped, rtol=1e-5)
    assert not np.allclose(hidden, per_draw, rtol=1e-3)


def test_factorized_model_elbo_is_the_exact_log_likelihood():
    model = Factorized(1)
    logq = np.asarray(jax.nn.log_softmax(model.table[...], -1), np.float64)  # [T, V]
    for r in range(3):
        exact = sum(logq[i, TOKENS[r, i]] for i in np.flatnonzero(RESPONSE[r]))
        length_form, _ = exact_elbos(model, TOKENS[r], RESPONSE[r], eps=0.0)
        np.testing.assert_allclose(length_form, exact, rtol=1e-6)


@pytest.mark.parametrize("estimator", dl.ESTIMATORS)
def test_estimators_are_unbiased_for_the_enumerated_elbo(estimator):
    model = ToyMDM(0)
    est = mc(model, estimator, seed=0).mean(-1)  # N_REP independent elbo(n_mc=4) per row
    zs = []
    for r in range(3):
        length_form, timestep_form = exact_elbos(model, TOKENS[r], RESPONSE[r], dl.DEFAULT_EPS)
        zs.append(z_score(est[r], timestep_form if estimator.startswith("timestep") else length_form))
        # the ε-clipping moves the timestep target by O(ε) only
        assert abs(timestep_form - length_form) < 0.02 * abs(length_form)
    print(f"\n{estimator}: z-scores of the MC mean vs the enumerated ELBO: {np.round(zs, 2)}")
    assert np.all(np.abs(zs) < 4), zs


def test_variance_falls_as_one_over_n_mc():
    model = ToyMDM(0)
    length = mc(model, "length", seed=1)
    # iid draws: one draw (M = 1) vs the mean of the N_MC = 4 draws of elbo, exactly 4 in expectation
    ratio = length[..., 0].var(1) / length.mean(-1).var(1)
    strat = mc(model, "length_stratified", seed=1).mean(-1).var(1)
    ts = mc(model, "timestep", seed=1)
    print(f"\nVar(M=1)/Var(M=4), 'length': {np.round(ratio, 2)}; 'timestep': "
          f"{np.round(ts[..., 0].var(1) / ts.mean(-1).var(1), 2)}; at M=4 Var('length')/"
          f"Var('length_stratified'): {np.round(length.mean(-1).var(1) / strat, 2)}, "
          f"Var('timestep')/Var('length'): {np.round(ts.mean(-1).var(1) / length.mean(-1).var(1), 2)}")
    assert np.all((ratio > 3.4) & (ratio < 4.7)), ratio
    assert np.all(strat < length.mean(-1).var(1))  # stratified lengths never do worse here


def test_shared_draws_cancel_the_noise_of_policy_minus_reference():
    policy = ToyMDM(0)
    ref = ToyMDM(0)
    # reference ≈ policy: every weight moved by 2% noise
    rng = np.random.default_rng(5)
    for _, var in nnx.to_flat_state(nnx.state(ref, nnx.Param)):
        var[...] = var[...] * (1 + 0.02 * rng.standard_normal(var.shape, np.float32))
    ratios = {}
    for est in ("length_stratified", "timestep"):
        shared = mc(policy, est, seed=1).mean(-1) - mc(ref, est, seed=1).mean(-1)
        indep = mc(policy, est, seed=1).mean(-1) - mc(ref, est, seed=2).mean(-1)
        ratios[est] = indep.var(axis=1) / shared.var(axis=1)
    print(f"\nVar(independent draws)/Var(shared draws) of policy − reference, n_mc=4: "
          f"{ {k: np.round(v, 1).tolist() for k, v in ratios.items()} }")
    # Row 2 (L = 2) under 'length_stratified': its 4 draws already cover l = 1, 2 twice each, so
    # the estimate is nearly exact either way and sharing gains least there.
    for est, r in ratios.items():
        assert np.all(r > 2) and np.all(r[:2] > 100), (est, r)


def test_gradients_flow_and_are_finite():
    model = ToyMDM(0)
    tok, pr, resp = map(jnp.asarray, (TOKENS, PROMPT, RESPONSE))

    @nnx.jit
    def grads(model):
        return nnx.grad(lambda m: dl.elbo(m, tok, pr, jax.random.key(0), n_mc=3, mask_id=MASK,
                                          response_mask=resp).sum())(model)

    leaves = jax.tree.leaves(grads(model))
    assert all(bool(jnp.isfinite(g).all()) for g in leaves)
    assert any(float(jnp.abs(g).max()) > 0 for g in leaves)


def test_bad_inputs_raise_clear_errors():
    model = ToyMDM(0)
    tok, pr = jnp.asarray(TOKENS), jnp.asarray(PROMPT)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="n_mc must be an int >= 1"):
        dl.elbo(model, tok, pr, key, n_mc=0, mask_id=MASK)
    full = pr.at[1].set(True)
    with pytest.raises(ValueError, match=r"rows \[1\] have no response tokens: prompt_mask covers"):
        dl.elbo(model, tok, full, key, n_mc=2, mask_id=MASK)
    with pytest.raises(ValueError, match=r"rows \[1\] have no response tokens"):
        dl.sft_loss(model, tok, full, key, mask_id=MASK)
    with pytest.raises(ValueError, match="unknown estimator 'antithetic'; known: timestep"):
        dl.elbo(model, tok, pr, key, n_mc=2, mask_id=MASK, estimator="antithetic")
    with pytest.raises(ValueError, match="prompt_mask must have the shape of tokens"):
        dl.elbo(model, tok, pr[:, :3], key, n_mc=2, mask_id=MASK)
    with pytest.raises(ValueError, match="elbo needs a PRNG key or explicit draws"):
        dl.elbo(model, tok, pr, None, n_mc=2, mask_id=MASK)
    draws = make_draws_jit(key, ~pr, n_mc=3)
    with pytest.raises(ValueError, match="n_mc=2 but the draws hold 3 per row"):
        dl.elbo(model, tok, pr, None, n_mc=2, mask_id=MASK, draws=draws)


def test_sft_and_pretrain_losses_match_llada_by_hand():
    model = ToyMDM(0)
    tok, pr = jnp.asarray(TOKENS), jnp.asarray(PROMPT)
    key = jax.random.key(9)
    # LLaDA's forward process with the same key, then its loss written out in numpy.
    k_t, k_mask = jax.random.split(key)
    p = np.asarray(dl.sample_p_mask(k_t, 3))

    def by_hand(maskable, norm):
        noisy, masked = dl.mask_tokens(tok, p, k_mask, MASK, maskable)
        lp = np.asarray(log_probs(model, noisy))
        ce = -np.take_along_axis(lp, TOKENS[..., None], -1)[..., 0]
        return (np.where(masked, ce, 0.0) / p[:, None] / norm).sum(-1), np.asarray(masked)

    want, masked = by_hand(~pr, (~PROMPT).sum(-1, keepdims=True))  # EOS padding counts in L
    assert not (masked & PROMPT).any() and masked.any()
    np.testing.assert_allclose(sft_jit(model, tok, pr, key, mask_id=MASK), want, rtol=1e-5)
    want, _ = by_hand(None, 6)
    np.testing.assert_allclose(pretrain_jit(model, tok, key, mask_id=MASK), want, rtol=1e-5)


def test_sft_loss_times_answer_length_estimates_minus_the_timestep_elbo():
    model = ToyMDM(0)
    n_rep = N_REP
    tok, pr, _ = replicate(n_rep)
    loss = sft_jit(model, tok, pr, jax.random.key(3), mask_id=MASK)
    scaled = -np.asarray(loss, np.float64).reshape(3, n_rep) * (~PROMPT).sum(-1)[:, None]
    for r in range(3):
        _, target = exact_elbos(model, TOKENS[r], ~PROMPT[r], dl.DEFAULT_EPS)
        assert abs(z_score(scaled[r], target)) < 4, r


# ------------------------------------------------------------------- 'length' = the ELBO-KTO authors' l draws


def authors_lengths(n_rows: int, n_mc: int, n_tokens: int) -> np.ndarray:
    """[n_rows, n_mc] l of the ELBO-KTO authors' draws (precompute_bref.py, commit 80dc31e): per row
    index i a base seed h(G ^ i), per draw k = 1..K the seed h(base ^ k·φ) (tag 0), and
    l = 1 + h(seed) mod L, with h the SplitMix64 finalizer (φ = 0x9E3779B97F4A7C15). Numpy uint64
    arithmetic wraps modulo 2^64 as their masks do."""
    phi = np.uint64(0x9E3779B97F4A7C15)

    def h(x):
        z = x + phi
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))

    base = h(np.uint64(0x1A2B3C4D5E6F7788) ^ np.arange(n_rows, dtype=np.uint64))[:, None]
    k = np.arange(1, n_mc + 1, dtype=np.uint64)[None, :]
    return (1 + h(h(base ^ (k * phi))) % np.uint64(n_tokens)).astype(np.int64)


def chi2_uniform(values, n_cells):
    counts = np.bincount(values, minlength=n_cells)
    assert len(counts) == n_cells, counts
    expected = len(values) / n_cells
    return float(((counts - expected) ** 2 / expected).sum())


def test_length_draws_are_iid_uniform_per_draw_as_the_authors_draw_them():
    """'length': every l_j uniform on 1..L and independent of the row's other draws, like the
    authors' l_from_seed (checked by the same chi-square bounds on both, fixed seeds: 99.99th
    percentiles of χ²(L − 1) and χ²(L² − 1)); 'length_stratified' is not independent within a row."""
    n_rows, m, n = 2000, 8, 5
    resp = jnp.asarray(np.tile([False] + [True] * n + [False], (n_rows, 1)))
    ours = np.asarray(make_draws_jit(jax.random.key(11), resp, n_mc=m, estimator="length").mask).sum(-1)
    theirs = authors_lengths(n_rows, m, n)
    strat = np.asarray(make_draws_jit(jax.random.key(11), resp, n_mc=m, estimator="length_stratified").mask).sum(-1)
    for l in (ours, theirs, strat):
        assert l.min() == 1 and l.max() == n
        assert chi2_uniform(l.ravel() - 1, n) < 23.5  # uniform marginals, all three
    pair = lambda l: ((l[:, 0::2] - 1) * n + (l[:, 1::2] - 1)).ravel()  # (l_1, l_2), (l_3, l_4), ... per row
    assert chi2_uniform(pair(ours), n * n) < 58.6  # independent draws: uniform on the L² pairs
    assert chi2_uniform(pair(theirs), n * n) < 58.6
    assert chi2_uniform(pair(strat), n * n) > 1000.0  # stratified lengths are not
