"""Listwise losses (plackett_luce, lipo, tpo, irpo) against numpy written from the papers, their
K = 2 reductions, ragged K (masked == sliced), ties, metrics and the transforms."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pojax.losses as L
from tests.losses.helpers import assert_bf16_inputs_give_fp32_outputs, random_pair, run

NAMES = ["plackett_luce", "lipo", "tpo", "irpo"]


def ranked(seed, b=4, k=5, ragged=True, integer_scores=False):
    """A RankedLogps with distinct scores, K valid responses in the first row and fewer (≥ 1,
    padded at the end) in the others when ``ragged``; padded slots hold garbage."""
    rng = np.random.default_rng(seed)
    logps = -rng.uniform(1, 20, (b, k))
    ref = logps + rng.normal(0, 2, (b, k))
    scores = rng.integers(0, 4, (b, k)).astype(float) if integer_scores else rng.permutation(b * k).reshape(b, k) / (b * k)
    n_valid = np.array([k] + list(rng.integers(1, k + 1, b - 1))) if ragged else np.full(b, k)
    mask = np.arange(k)[None, :] < n_valid[:, None]
    logps = np.where(mask, logps, 1e6)
    ref = np.where(mask, ref, -np.inf)
    scores = np.where(mask, scores, np.nan)
    f = lambda x: jnp.asarray(x, jnp.float32)
    return L.RankedLogps(logps=f(logps), ref_logps=f(ref), scores=f(scores), mask=jnp.asarray(mask))


def valid_rows(logps):
    """(u, scores) float64 numpy per row, valid slots only."""
    for i in range(logps.logps.shape[0]):
        m = np.asarray(logps.mask[i])
        u = np.asarray(logps.logps[i], np.float64)[m] - np.asarray(logps.ref_logps[i], np.float64)[m]
        yield u, np.asarray(logps.scores[i], np.float64)[m]


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_plackett_luce(u, scores, beta):
    # DPO paper, Appendix A.3: -log Π_k exp(β r_τ(k)) / Σ_{j ≥ k} exp(β r_τ(j)), τ = order by score.
    r = beta * u[np.argsort(-scores, kind="stable")]
    return -sum(r[k] - np.log(np.sum(np.exp(r[k:]))) for k in range(len(r)))


def np_lipo(u, psi, beta):
    # LiPO-λ (arXiv 2402.01878): Σ_{ψ_i > ψ_j} |G_i - G_j| |1/D(τ_i) - 1/D(τ_j)| log(1 + e^{-(s_i - s_j)}).
    s = beta * u
    tau = np.empty(len(s))
    tau[np.argsort(-s, kind="stable")] = np.arange(1, len(s) + 1)
    gain, disc = 2.0 ** psi - 1, 1 / np.log2(1 + tau)
    return sum(abs(gain[i] - gain[j]) * abs(disc[i] - disc[j]) * np.logaddexp(0, -(s[i] - s[j]))
               for i, j in itertools.permutations(range(len(s)), 2) if psi[i] > psi[j])


def np_irpo(u, g, beta):
    # IRPO (arXiv 2504.15477): -Σ_i g_i/log2(1+i) log σ(-log Σ_{j≠i} exp(s_j - s_i)), i = list position.
    s = beta * u
    total = 0.0
    for i in range(len(s)):
        others = [j for j in range(len(s)) if j != i]
        if others:
            p_i = np_sigmoid(-np.log(np.sum(np.exp(s[others] - s[i]))))
            total += -g[i] / np.log2(2 + i) * np.log(p_i)
    return total


NUMPY = {"plackett_luce": np_plackett_luce, "lipo": np_lipo, "tpo": np_lipo, "irpo": np_irpo}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_matches_numpy_on_ragged_lists(name, beta):
    logps = ranked(1, integer_scores=name == "irpo")
    if name == "lipo":
        logps = logps.replace(scores=logps.scores * 3)  # graded labels ψ in [0, 3)
    got = run(name, logps, beta=beta).loss
    want = [NUMPY[name](u, s, beta) for u, s in valid_rows(logps)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def two_responses(pair):
    """The PairLogps as K = 2 lists scored [1, 0]."""
    stack = lambda a, b: jnp.stack([a, b], axis=-1)
    return L.RankedLogps(logps=stack(pair.chosen, pair.rejected), ref_logps=stack(pair.ref_chosen, pair.ref_rejected),
                         scores=jnp.tile(jnp.array([1.0, 0.0]), (pair.chosen.shape[0], 1)))


PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected")


@pytest.mark.parametrize("name", ["plackett_luce", "irpo"])
@pytest.mark.parametrize("beta", [0.1, 2.0])
def test_two_responses_scored_one_zero_are_sigmoid_dpo(name, beta):
    pair = random_pair(2)
    got = run(name, two_responses(pair), beta=beta)
    want = run("sigmoid", pair, beta=beta)
    np.testing.assert_allclose(got.loss, want.loss, rtol=1e-6)
    for key in PAIR_METRICS:
        np.testing.assert_allclose(got.metrics[key], want.metrics[key], rtol=1e-6)


@pytest.mark.parametrize("name", ["lipo", "tpo"])
def test_lipo_on_two_responses_is_its_pairwise_form(name):
    # K = 2: ranks are {1, 2} whatever the scores, so Δ = |G_1 - G_2| (1/log2 2 - 1/log2 3).
    pair = random_pair(3)
    lists = two_responses(pair).replace(scores=jnp.tile(jnp.array([2.5, 0.5]), (8, 1)))
    delta = (2 ** 2.5 - 2 ** 0.5) * (1 - 1 / math.log2(3))
    np.testing.assert_allclose(run(name, lists, beta=0.3).loss, delta * run("sigmoid", pair, beta=0.3).loss, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_masked_equals_sliced(name):
    logps = ranked(4)
    got = run(name, logps, beta=0.5)
    for i in range(4):
        m = np.asarray(logps.mask[i])
        row = L.RankedLogps(logps=logps.logps[i:i + 1, m], ref_logps=logps.ref_logps[i:i + 1, m], scores=logps.scores[i:i + 1, m])
        alone = run(name, row, beta=0.5)
        np.testing.assert_allclose(got.loss[i], alone.loss[0], rtol=1e-6, atol=1e-7)
        for key, value in alone.metrics.items():
            np.testing.assert_allclose(got.metrics[key][i], value[0], rtol=1e-6, atol=1e-7)


def test_plackett_luce_ties_are_symmetric_breslow():
    # Scores (2, 1, 1): the tied pair shares one risk set, L = [lse(all) - z_0] + 2·lse(z_1, z_2) - z_1 - z_2.
    z = np.array([0.3, -1.2, 0.8])
    lists = L.RankedLogps(logps=jnp.asarray([z], jnp.float32), ref_logps=jnp.zeros((1, 3)), scores=jnp.array([[2.0, 1.0, 1.0]]))
    want = np.logaddexp.reduce(z) - z[0] + 2 * np.logaddexp(z[1], z[2]) - z[1] - z[2]
    np.testing.assert_allclose(run("plackett_luce", lists, beta=1.0).loss, [want], rtol=1e-6)
    swapped = lists.replace(logps=lists.logps[:, jnp.array([0, 2, 1])])
    np.testing.assert_allclose(run("plackett_luce", swapped, beta=1.0).loss, [want], rtol=1e-6)


def test_listwise_metrics_by_hand():
    # r = (1, 3, 2), scores (3, 2, 1): top-1 by r is response 1 (score 2, not the best);
    # ordered pairs (0,1), (0,2), (1,2): only (1,2) has r in the score order.
    lists = L.RankedLogps(logps=jnp.array([[1.0, 3.0, 2.0]]), ref_logps=jnp.zeros((1, 3)), scores=jnp.array([[3.0, 2.0, 1.0]]))
    m = run("lipo", lists, beta=0.5).metrics
    np.testing.assert_allclose([m["rewards/chosen"][0], m["rewards/rejected"][0], m["rewards/margins"][0]], [0.5, 1.0, -0.5])
    np.testing.assert_allclose(m["rewards/accuracies"], [1 / 3], rtol=1e-6)
    np.testing.assert_allclose(m["rewards/top1_accuracy"], [0.0])
    np.testing.assert_allclose([m["logps/chosen"][0], m["logps/rejected"][0]], [1.0, 2.0])
    tied = lists.replace(scores=jnp.ones((1, 3)))
    tied_out = run("lipo", tied)
    assert np.isnan(float(tied_out.metrics["rewards/accuracies"][0]))
    np.testing.assert_allclose(tied_out.loss, [0.0])  # tied labels form no pair


def test_irpo_weights_positions_and_grades():
    # One relevant response (grade 1) at position 2 of 2: weight 1/log2(3) on -log σ(s_2 - s_1).
    lists = L.RankedLogps(logps=jnp.array([[-1.0, -2.0]]), ref_logps=jnp.zeros((1, 2)), scores=jnp.array([[0.0, 1.0]]))
    want = -np_log_sigmoid(0.5 * (-2.0 + 1.0)) / math.log2(3)
    np.testing.assert_allclose(run("irpo", lists, beta=0.5).loss, [want], rtol=1e-6)


def test_errors():
    logps = ranked(0)
    for name in NAMES:
        with pytest.raises(ValueError, match=f"loss '{name}' needs reference log-probs, but RankedLogps.ref_logps is None"):
            L.get(name)(logps.replace(ref_logps=None))
        with pytest.raises(TypeError, match="betta"):
            L.get(name)(logps, betta=0.1)
        assert L.input_kind(name) == "ranked" and L.needs_reference(name) and not L.needs_tokens(name)


@pytest.mark.parametrize("name", NAMES)
def test_jit_equals_eager(name):
    logps = ranked(5)
    eager, jitted = L.get(name)(logps, beta=0.3), jax.jit(lambda lp: L.get(name)(lp, beta=0.3))(logps)
    np.testing.assert_allclose(jitted.loss, eager.loss, rtol=1e-6, atol=1e-7)
    for key, value in eager.metrics.items():
        np.testing.assert_allclose(jitted.metrics[key], value, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_inputs_give_fp32_outputs(name):
    assert_bf16_inputs_give_fp32_outputs(name, ranked(6))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_are_finite_with_extremes_and_garbage_padding(name):
    logps = ranked(7, integer_scores=True)
    huge = jnp.where(logps.mask, jnp.array([-1e4, -1.0, -5e3, 0.0, -2.0]), 1e6)
    loss_fn = lambda policy, ref, lp: jnp.mean(L.get(name)(lp.replace(logps=policy, ref_logps=ref)).loss)
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
    for lp in (logps, logps.replace(logps=huge), logps.replace(ref_logps=huge)):
        loss, grads = grad_fn(lp.logps, lp.ref_logps, lp)
        assert np.isfinite(float(loss)), name
        for g in grads:
            assert np.all(np.isfinite(np.asarray(g))), name
            np.testing.assert_array_equal(np.asarray(g)[~np.asarray(lp.mask)], 0.0)
