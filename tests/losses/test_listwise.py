"""Listwise losses (plackett_luce, lipo, tpo, irpo) against numpy written from the papers (tpo: from
its authors' code), their K = 2 reductions, ragged K (masked == sliced), ties, metrics and the
transforms."""
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
    padded at the end) in the others when ``ragged``, completion lengths 1..12; padded slots
    hold garbage."""
    rng = np.random.default_rng(seed)
    logps = -rng.uniform(1, 20, (b, k))
    ref = logps + rng.normal(0, 2, (b, k))
    scores = rng.integers(0, 4, (b, k)).astype(float) if integer_scores else rng.permutation(b * k).reshape(b, k) / (b * k)
    n_valid = np.array([k] + list(rng.integers(1, k + 1, b - 1))) if ragged else np.full(b, k)
    mask = np.arange(k)[None, :] < n_valid[:, None]
    length = rng.integers(1, 13, (b, k)).astype(float)
    logps = np.where(mask, logps, 1e6)
    ref = np.where(mask, ref, -np.inf)
    scores = np.where(mask, scores, np.nan)
    length = np.where(mask, length, 0.0)
    f = lambda x: jnp.asarray(x, jnp.float32)
    return L.RankedLogps(logps=f(logps), ref_logps=f(ref), scores=f(scores), mask=jnp.asarray(mask), length=f(length))


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


NUMPY = {"plackett_luce": np_plackett_luce, "lipo": np_lipo, "irpo": np_irpo}  # tpo: test_tpo_* below


@pytest.mark.parametrize("name", sorted(NUMPY))
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


def test_lipo_on_two_responses_is_its_pairwise_form():
    # K = 2: ranks are {1, 2} whatever the scores, so Δ = |G_1 - G_2| (1/log2 2 - 1/log2 3).
    pair = random_pair(3)
    lists = two_responses(pair).replace(scores=jnp.tile(jnp.array([2.5, 0.5]), (8, 1)))
    delta = (2 ** 2.5 - 2 ** 0.5) * (1 - 1 / math.log2(3))
    np.testing.assert_allclose(run("lipo", lists, beta=0.3).loss, delta * run("sigmoid", pair, beta=0.3).loss, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_masked_equals_sliced(name):
    logps = ranked(4)
    got = run(name, logps, beta=0.5)
    for i in range(4):
        m = np.asarray(logps.mask[i])
        row = L.RankedLogps(logps=logps.logps[i:i + 1, m], ref_logps=logps.ref_logps[i:i + 1, m], scores=logps.scores[i:i + 1, m],
                            length=logps.length[i:i + 1, m])
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
    with pytest.raises(ValueError, match="loss 'tpo' normalizes by completion length, but RankedLogps.length is None"):
        L.get("tpo")(logps.replace(length=None))


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


# TPO: a numpy transcription of its authors' loss.py (github.com/MrBlankness/TPO at ba87a23), written from
# their compute_step_weights, compute_weighted_logits, lambda_rank_loss and TPOLoss.forward, not from pojax.

def np_tpo_step_weights(hidden, step_index):
    """compute_step_weights: w[b, n, s] = 1 + cos(mean hidden state of step s in response n, the same in
    response 0) for s = 1..max step, 0 where either lacks step s. hidden [B, N, T, D], step_index [B, N, T]."""
    nb, nn_, top = hidden.shape[0], hidden.shape[1], step_index.max()
    w = np.zeros((nb, nn_, top + 1))
    for b in range(nb):
        for n in range(nn_):
            for s in range(1, top + 1):
                here, first = step_index[b, n] == s, step_index[b, 0] == s
                if here.any() and first.any():
                    u, v = hidden[b, n][here].mean(0), hidden[b, 0][first].mean(0)
                    w[b, n, s] = u @ v / max(np.linalg.norm(u) * np.linalg.norm(v), 1e-8) + 1
    return w


def np_tpo_step_reward(token_values, weights, step_index):
    """compute_weighted_logits: Σ_s w_s · mean_{t in step s} x_t / Σ_s w_s over the steps present; 0 if none."""
    nb, nn_ = token_values.shape[:2]
    out = np.zeros((nb, nn_))
    for b in range(nb):
        for n in range(nn_):
            total, weight = 0.0, 0.0
            for s in range(1, weights.shape[2]):
                here = step_index[b, n] == s
                if here.any():
                    total += weights[b, n, s] * token_values[b, n][here].mean()
                    weight += weights[b, n, s]
            if weight > 0:
                out[b, n] = total / weight
    return out


def np_tpo_rank(text, labels):
    """lambda_rank_loss before its batch mean: Σ_{i,j} -log σ((r_i - r_j) sign(ψ_i - ψ_j)) / (N(N - 1)), [B]."""
    n = text.shape[1]
    diff = text[:, :, None] - text[:, None, :]
    sign = np.sign(labels[:, :, None] - labels[:, None, :])
    return -np_log_sigmoid(diff * sign).sum(axis=(1, 2)) / (n * (n - 1))


def np_tpo_authors(token_logratio, hidden, step_index, labels, beta):
    """TPOLoss.forward on one batch: -log σ(β · mean_b lambda_rank_loss(step-weighted rewards, labels))."""
    text = np_tpo_step_reward(token_logratio, np_tpo_step_weights(hidden, step_index), step_index)
    return -np_log_sigmoid(beta * np.mean(np_tpo_rank(text, labels)))


def tpo_case(seed, b=3, k=5, t=9, prompt=3, steps=1):
    """Token-level data in the authors' layout and the matching RankedLogps.

    Per-token policy / reference log-probs [B, K, T]; step_index [B, K, T]: 0 on the prompt and the
    padding, 1..``steps`` on each response's completion tokens (split in ``steps`` runs); random
    hidden states [B, K, T, 4]; integer labels with ties. Row b > 0 keeps only its first K - b
    responses (ragged), row 0 all K."""
    rng = np.random.default_rng(seed)
    policy = -rng.uniform(0.1, 5.0, (b, k, t))
    ref = policy + rng.normal(0, 0.7, (b, k, t))
    n = rng.integers(steps, t - prompt + 1, (b, k))
    step_index = np.zeros((b, k, t), int)
    for i in range(b):
        for j in range(k):
            step_index[i, j, prompt:prompt + n[i, j]] = 1 + np.arange(n[i, j]) * steps // n[i, j]
    hidden = rng.normal(0, 1, (b, k, t, 4))
    labels = rng.integers(0, 3, (b, k)).astype(float)
    labels[:, :2] = [2.0, 2.0]  # a tie in every row
    labels[:, 2] = 0.0  # and a strictly ordered pair
    n_valid = k - np.arange(b)
    mask = np.arange(k)[None, :] < n_valid[:, None]
    scored = step_index > 0
    f = lambda x: jnp.asarray(x, jnp.float32)
    lists = L.RankedLogps(logps=f(np.where(scored, policy, 0).sum(-1)), ref_logps=f(np.where(scored, ref, 0).sum(-1)),
                          scores=f(np.where(mask, labels, np.nan)), mask=jnp.asarray(mask), length=f(n))
    return lists, (policy - ref, hidden, step_index, labels, n_valid)


def authors_per_prompt(data, beta):
    """The authors' loss of each prompt alone (their tpo_train.py runs batches of one prompt), valid slots only."""
    u, hidden, step_index, labels, n_valid = data
    return [np_tpo_authors(u[i:i + 1, :m], hidden[i:i + 1, :m], step_index[i:i + 1, :m], labels[i:i + 1, :m], beta)
            for i, m in enumerate(n_valid)]


@pytest.mark.parametrize("beta", [0.1, 0.5, 3.0])
def test_tpo_matches_the_authors_code(beta):
    # Single-step responses with random hidden states: the step weight w ≠ 1 cancels in w·m / w, so the
    # authors' reward is the token mean. The published sign exactly; pojax's default is the same with
    # the argument of the outer log-sigmoid negated (β → -β in their formula). Ties in every row.
    lists, data = tpo_case(0)
    published = run("tpo", lists, beta=beta, tpo_published_sign=True).loss
    np.testing.assert_allclose(published, authors_per_prompt(data, beta), rtol=1e-5)
    np.testing.assert_allclose(run("tpo", lists, beta=beta).loss, authors_per_prompt(data, -beta), rtol=1e-5)
    # The λ-weighted LiPO loss this name used to run differs.
    assert not np.allclose(run("lipo", lists, beta=beta).loss, authors_per_prompt(data, -beta), rtol=1e-2)


@pytest.mark.parametrize("published", [False, True])
def test_tpo_gradients_match_the_authors_code(published):
    # d loss / d log π(y_k): central differences of the authors' loss, moving each completion token of
    # response k by ε / n_k (the sequence log-likelihood by ε).
    lists, data = tpo_case(1)
    u, hidden, step_index, labels, n_valid = data
    beta = 0.7
    grad = jax.grad(lambda lp: jnp.sum(L.get("tpo")(lists.replace(logps=lp), beta=beta,
                                                    tpo_published_sign=published).loss))(lists.logps)
    want = np.zeros(lists.logps.shape)
    eps = 1e-4
    for i, m in enumerate(n_valid):
        for j in range(m):
            scored = step_index[i, j] > 0
            bump = np.where(scored, eps / scored.sum(), 0.0)
            f = lambda uu: np_tpo_authors(uu[None, :m], hidden[i:i + 1, :m], step_index[i:i + 1, :m],
                                          labels[i:i + 1, :m], beta if published else -beta)
            up, down = u[i].copy(), u[i].copy()
            up[j] += bump
            down[j] -= bump
            want[i, j] = (f(up) - f(down)) / (2 * eps)
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-8)


def test_tpo_takes_step_weighted_rewards_as_logps_with_unit_length():
    # Multi-step responses (3 steps, the Adaptive Step Reward's weights from hidden states): passing the
    # step-weighted mean log-likelihoods of policy and reference with length 1 gives the authors' loss.
    lists, data = tpo_case(2, steps=3)
    u, hidden, step_index, labels, n_valid = data
    weights = np_tpo_step_weights(hidden, step_index)
    scored = step_index > 0
    # policy and reference log-probs: any split of u works, the reward is linear in them
    policy = np_tpo_step_reward(np.where(scored, u + 1.0, 0), weights, step_index)
    ref = np_tpo_step_reward(np.where(scored, 1.0, 0), weights, step_index)
    f = lambda x: jnp.asarray(x, jnp.float32)
    stepped = lists.replace(logps=f(policy), ref_logps=f(ref), length=jnp.ones(lists.length.shape))
    np.testing.assert_allclose(run("tpo", stepped, beta=0.5, tpo_published_sign=True).loss,
                               authors_per_prompt(data, 0.5), rtol=1e-5)
    # whereas the token mean of multi-step responses is not their reward
    assert not np.allclose(run("tpo", lists, beta=0.5, tpo_published_sign=True).loss, authors_per_prompt(data, 0.5))


def test_tpo_by_hand_with_a_tie():
    # Token-mean rewards r = (0.3, -0.2, 0.5), labels (2, 1, 1): the pairs (0, 1) and (0, 2) count in both
    # directions, the tie (1, 2) both ways and the 3 diagonal entries add log 2 each:
    # ℓ = [2 softplus(-0.5) + 2 softplus(0.2) + 5 log 2] / 6,  L = -log σ(-β ℓ).
    r, n = np.array([0.3, -0.2, 0.5]), np.array([2.0, 4.0, 1.0])
    lists = L.RankedLogps(logps=jnp.asarray([r * n], jnp.float32), ref_logps=jnp.zeros((1, 3)),
                          scores=jnp.array([[2.0, 1.0, 1.0]]), length=jnp.asarray([n], jnp.float32))
    rank = (2 * np.logaddexp(0, -0.5) + 2 * np.logaddexp(0, 0.2) + 5 * np.log(2)) / 6
    out = run("tpo", lists, beta=0.5)
    np.testing.assert_allclose(out.loss, [np.logaddexp(0, 0.5 * rank)], rtol=1e-6)
    np.testing.assert_allclose(out.metrics["loss/rank"], [rank], rtol=1e-6)
    np.testing.assert_allclose(out.metrics["rewards/chosen"], [0.5 * 0.3], rtol=1e-6)  # β r of the best-scored
    assert abs(float(run("lipo", lists, beta=0.5).loss[0]) - np.logaddexp(0, 0.5 * rank)) > 0.05  # the old tpo


def test_tpo_at_the_reference_and_its_gradient_direction():
    # π = π_ref: every entry is log 2, ℓ = K/(K-1) log 2, so L = log(1 + 2^{βK/(K-1)}) (published sign:
    # log(1 + 2^{-βK/(K-1)})). Each ordered pair's entry has slope -sign/2 at 0, so
    # dℓ/dr_i = -Σ_j sign(ψ_i - ψ_j) / (K(K-1)): descent raises the rewards of the better responses by
    # default and lowers them with the published sign. A prompt with one response has loss 0.
    beta = 0.4
    scores = np.array([[3.0, 1.0, 2.0, 1.0], [0.0, 5.0, 1.0, 0.0], [1.0, 2.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
    length = np.array([[3.0, 1.0, 7.0, 2.0], [5.0, 2.0, 4.0, 1.0], [1.0, 6.0, 1.0, 1.0], [2.0, 1.0, 1.0, 1.0]])
    same = -np.arange(16.0).reshape(4, 4)
    lists = L.RankedLogps(logps=jnp.asarray(same, jnp.float32), ref_logps=jnp.asarray(same, jnp.float32),
                          scores=jnp.asarray(scores, jnp.float32), mask=jnp.asarray(mask), length=jnp.asarray(length, jnp.float32))
    k = mask.sum(-1).astype(float)
    safe = np.maximum(k - 1, 1)
    for published, sign in [(False, 1.0), (True, -1.0)]:
        fn = lambda lp: L.get("tpo")(lists.replace(logps=lp), beta=beta, tpo_published_sign=published).loss
        want = np.where(k >= 2, np.log1p(2.0 ** (sign * beta * k / safe)), 0.0)
        np.testing.assert_allclose(fn(lists.logps), want, rtol=1e-6)
        grad = np.asarray(jax.grad(lambda lp: jnp.sum(fn(lp)))(lists.logps))
        rank = k / safe * np.log(2)
        slope = sign * beta * np_sigmoid(sign * beta * rank)  # dL/dℓ
        wins = np.sum(np.sign(scores[:, :, None] - scores[:, None, :]) * mask[:, None, :], axis=-1)
        want_grad = np.where(mask & (k >= 2)[:, None], -slope[:, None] * wins / (k * safe)[:, None] / length, 0.0)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-9)
        best = np.argmax(np.where(mask, scores, -np.inf), axis=-1)[:3]
        assert np.all(sign * grad[np.arange(3), best] < 0)
