"""GAE and the clipped PPO loss (pojax.losses.ppo) against plain numpy loops written from the
papers (GAE: arXiv 1506.02438 Eq. 16; PPO: arXiv 1707.06347 Eq. 7, 9)."""
import jax
import numpy as np
import pytest

from pojax.losses.ppo import gae, ppo_loss, whiten


def gae_numpy(r, v, m, gamma, lam):
    """Per row: the actions are the masked positions (contiguous); the episode ends after them."""
    adv, ret = np.zeros_like(r), np.zeros_like(r)
    for b in range(r.shape[0]):
        idx = np.flatnonzero(m[b])
        a_next = 0.0
        for j in range(len(idx) - 1, -1, -1):
            t = idx[j]
            v_next = v[b, idx[j + 1]] if j + 1 < len(idx) else 0.0
            delta = r[b, t] + gamma * v_next - v[b, t]
            a_next = delta + gamma * lam * a_next
            adv[b, t], ret[b, t] = a_next, a_next + v[b, t]
    return adv, ret


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.5), (0.99, 1.0), (1.0, 0.0)])
def test_gae_matches_numpy(gamma, lam):
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(4, 9)).astype(np.float32), rng.normal(size=(4, 9)).astype(np.float32)
    m = np.zeros((4, 9), bool)
    m[0, 2:9] = True  # runs to the last position
    m[1, 3:6] = True  # right padding after the completion
    m[2, 0:1] = True  # one action
    # row 3: no action at all
    adv, ret = jax.jit(lambda r, v, m: gae(r, v, m, gamma=gamma, lam=lam))(r, v, m)
    want_adv, want_ret = gae_numpy(r, v, m, gamma, lam)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-6)
    assert not np.asarray(adv)[~m].any() and not np.asarray(ret)[~m].any()


def test_gae_hand_values():
    # two actions, γ = 0.5, λ = 0.5: δ1 = 2 − 1 = 1 (terminal), δ0 = 1 + 0.5·1 − 0.5 = 1, Â0 = 1 + 0.25·1
    r, v, m = np.array([[1.0, 2.0, 9.0]]), np.array([[0.5, 1.0, 7.0]]), np.array([[True, True, False]])
    adv, ret = gae(r, v, m, gamma=0.5, lam=0.5)
    np.testing.assert_allclose(adv, [[1.25, 1.0, 0.0]])
    np.testing.assert_allclose(ret, [[1.75, 2.0, 0.0]])
    # λ = 1, γ = 1: returns are the reward-to-go, whatever the values
    _, ret = gae(r, v, m, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(ret, [[3.0, 2.0, 0.0]])


def ppo_numpy(logp, old, adv, val, ret, m, clip, c_v):
    out = []
    for b in range(logp.shape[0]):
        t = m[b]
        ratio = np.exp(logp[b, t] - old[b, t])
        surr = np.minimum(ratio * adv[b, t], np.clip(ratio, 1 - clip, 1 + clip) * adv[b, t])
        out.append(-surr.mean() + c_v * np.mean(0.5 * (val[b, t] - ret[b, t]) ** 2))
    return np.array(out)


def test_ppo_loss_matches_numpy_and_clips_both_sides():
    rng = np.random.default_rng(1)
    b, t = 5, 7
    old = rng.normal(size=(b, t)).astype(np.float32) - 2
    logp = old + rng.normal(scale=0.4, size=(b, t)).astype(np.float32)  # ratios spread past 1 ± ε
    adv, val, ret = (rng.normal(size=(b, t)).astype(np.float32) for _ in range(3))
    m = rng.random((b, t)) < 0.7
    m[:, 0] = True
    logp[~m] = -np.inf  # a masked -inf must not turn the loss into NaN
    ratio = np.exp(logp - old)[m]
    assert (ratio > 1.2).any() and (ratio < 0.8).any()
    loss, metrics = ppo_loss(logp, old, adv, val, ret, m, clip=0.2, value_coef=0.3)
    np.testing.assert_allclose(loss, ppo_numpy(logp, old, adv, val, ret, m, 0.2, 0.3), rtol=1e-5, atol=1e-6)
    clipfrac = [np.mean(np.abs(np.exp(logp[i, m[i]] - old[i, m[i]]) - 1) > 0.2) for i in range(b)]
    np.testing.assert_allclose(metrics["ppo/clipfrac"], clipfrac, rtol=1e-6)


def test_ppo_clipping_cuts_the_gradient_on_the_right_side():
    m = np.ones((1, 4), bool)
    old = np.zeros((1, 4), np.float32)
    # ratio 1.5 with Â > 0 and ratio 0.5 with Â < 0: clipped, no gradient; ratio 1.5 with Â < 0
    # and ratio 0.5 with Â > 0: the unclipped (pessimistic) term, gradient −Â·ρ / T
    logp = np.log(np.array([[1.5, 0.5, 1.5, 0.5]], np.float32))
    adv = np.array([[1.0, -1.0, -1.0, 1.0]], np.float32)
    zeros = np.zeros((1, 4), np.float32)
    grad = jax.grad(lambda lp: ppo_loss(lp, old, adv, zeros, zeros, m, clip=0.2)[0].sum())(logp)
    np.testing.assert_allclose(grad, [[0.0, 0.0, 1.5 / 4, -0.5 / 4]], rtol=1e-6)
    loss, _ = ppo_loss(logp, old, adv, zeros, zeros, m, clip=0.2)
    np.testing.assert_allclose(loss, [-(1.2 - 0.8 - 1.5 + 0.5) / 4], rtol=1e-6)  # min(ρÂ, clip(ρ)Â) per token


def test_value_loss_and_its_gradient():
    m = np.array([[True, True, False]])
    val, ret = np.array([[1.0, 3.0, 5.0]], np.float32), np.array([[0.0, 1.0, 0.0]], np.float32)
    zeros = np.zeros((1, 3), np.float32)
    loss, metrics = ppo_loss(zeros, zeros, zeros, val, ret, m, value_coef=0.5)
    np.testing.assert_allclose(metrics["ppo/value_loss"], [(0.5 * 1 + 0.5 * 4) / 2])
    np.testing.assert_allclose(loss, [0.5 * 1.25])
    grad = jax.grad(lambda v: ppo_loss(zeros, zeros, zeros, v, ret, m, value_coef=0.5)[0].sum())(val)
    np.testing.assert_allclose(grad, [[0.5 * 1.0 / 2, 0.5 * 2.0 / 2, 0.0]])


def test_whiten_over_the_mask():
    x = np.array([[1.0, 2.0, 100.0], [3.0, -50.0, -50.0]], np.float32)
    m = np.array([[True, True, False], [True, False, False]])
    w = np.asarray(whiten(x, m))
    np.testing.assert_allclose(w[m], (x[m] - x[m].mean()) / x[m].std(), rtol=1e-5)
    assert not w[~m].any()
