"""Adaptive and soft-label losses (beta_dpo, madpo, soft_dpo, adpo, curry_dpo) against numpy
written from the papers, their reductions to sigmoid DPO, and the transforms every loss passes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pojax.losses as L
from tests.losses.helpers import random_pair

B = 8


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def np_delta(logps):
    f = lambda x: np.asarray(x, np.float64)
    return (f(logps.chosen) - f(logps.ref_chosen)) - (f(logps.rejected) - f(logps.ref_rejected))


def runtime(seed, b=B):
    """Per-pair runtime data: soft labels in [0, 1] and reward-model margins."""
    rng = np.random.default_rng(100 + seed)
    return {"preference": jnp.asarray(rng.uniform(0, 1, b), jnp.float32),
            "reward_margin": jnp.asarray(rng.normal(0, 3, b), jnp.float32)}


# Each loss with the runtime inputs it needs (beyond the PairLogps).
EXTRA = {
    "soft_dpo": lambda s: {"preference": runtime(s)["preference"]},
    "adpo": lambda s: {"preference": runtime(s)["preference"]},
    "madpo": lambda s: {"reward_margin": runtime(s)["reward_margin"]},
    "beta_dpo": lambda s: {},
    "curry_dpo": lambda s: {},
}
NAMES = list(EXTRA)


def assert_same_output(got, want, rtol=1e-6):
    np.testing.assert_allclose(got.loss, want.loss, rtol=rtol, atol=1e-7)
    for key, value in want.metrics.items():
        np.testing.assert_allclose(got.metrics[key], value, rtol=rtol, atol=1e-7)


# --- reductions to sigmoid DPO ------------------------------------------------------------------

@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_soft_dpo_with_hard_labels_is_sigmoid_dpo(beta):
    logps = random_pair(0)
    want = L.get("sigmoid")(logps, beta=beta)
    assert_same_output(L.get("soft_dpo")(logps, beta=beta), want)
    assert_same_output(L.get("soft_dpo")(logps, beta=beta, preference=jnp.ones(B)), want)


def test_beta_dpo_without_adaptation_or_filtering_is_sigmoid_dpo():
    logps = random_pair(1)
    got = L.get("beta_dpo")(logps, beta=0.1, beta_dpo_alpha=0, beta_dpo_filter=False)
    assert_same_output(got, L.get("sigmoid")(logps, beta=0.1))
    np.testing.assert_allclose(got.metrics["beta_dpo/beta"], 0.1, rtol=1e-7)


def test_adpo_with_hard_labels_is_sigmoid_dpo():
    logps = random_pair(2)
    assert_same_output(L.get("adpo")(logps, beta=0.3), L.get("sigmoid")(logps, beta=0.3))


def test_curry_dpo_is_sigmoid_dpo():
    logps = random_pair(3, tokens=True)
    hp = {"beta": 0.2, "label_smoothing": 0.1, "rpo_alpha": 0.5}
    assert_same_output(L.get("curry_dpo")(logps, **hp), L.get("sigmoid")(logps, **hp))


def test_madpo_at_the_transition_margin_is_sigmoid_dpo():
    # c(τ) = 1, so w(τ) = σ(τ)/σ(τ) = 1; every margin ≤ -τ keeps the weight 1.
    logps = random_pair(4)
    margins = jnp.array([2.0, -2.0, -3.0, -50.0, 2.0, -2.5, -7.0, 2.0])
    got = L.get("madpo")(logps, beta=0.1, reward_margin=margins)
    assert_same_output(got.replace(metrics={k: v for k, v in got.metrics.items() if k != "madpo/weight"}),
                       L.get("sigmoid")(logps, beta=0.1))


# --- numpy references from the papers ------------------------------------------------------------

def test_soft_dpo_matches_numpy():
    logps, p = random_pair(5), np.asarray(runtime(5)["preference"], np.float64)
    z = 0.25 * np_delta(logps)
    want = -p * np_log_sigmoid(z) - (1 - p) * np_log_sigmoid(-z)
    np.testing.assert_allclose(L.get("soft_dpo")(logps, beta=0.25, preference=runtime(5)["preference"]).loss, want, rtol=1e-5)


def test_adpo_matches_numpy_kl():
    # KL(q ‖ p_θ) over {y_w, y_l}, p_θ = softmax((s - s_ref)/τ), τ = 1/β, q = (p, 1-p).
    logps = random_pair(6)
    p = np.asarray(runtime(6)["preference"], np.float64)
    p[:2] = [0.0, 1.0]  # hard labels: 0 log 0 = 0
    tau = 2.0
    a_w = (np.asarray(logps.chosen, np.float64) - np.asarray(logps.ref_chosen, np.float64)) / tau
    a_l = (np.asarray(logps.rejected, np.float64) - np.asarray(logps.ref_rejected, np.float64)) / tau
    log_pw = a_w - np.logaddexp(a_w, a_l)
    log_pl = a_l - np.logaddexp(a_w, a_l)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.where(p > 0, p * (np.log(p) - log_pw), 0) + np.where(p < 1, (1 - p) * (np.log(1 - p) - log_pl), 0)
    got = L.get("adpo")(logps, beta=1 / tau, preference=jnp.asarray(p, jnp.float32))
    np.testing.assert_allclose(got.loss, want, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got.loss) >= -1e-6)
    soft = L.get("soft_dpo")(logps, beta=1 / tau, preference=jnp.asarray(p, jnp.float32)).loss
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0) - np.where(p < 1, (1 - p) * np.log(1 - p), 0)
    np.testing.assert_allclose(got.loss, np.asarray(soft) - entropy, rtol=1e-5, atol=1e-6)


def np_madpo_weight(h, c_max, c_min, lam, tau):
    c = c_min + (c_max - c_min) / (1 + (c_max - 1) / (1 - c_min) * np.exp(lam * (np.abs(h) - tau)))
    sig = lambda x: 1 / (1 + np.exp(-x))
    return np.where(h > -tau, sig(c * h) / sig(h), 1.0)


@pytest.mark.parametrize("hp", [{}, {"madpo_c_max": 3.0, "madpo_c_min": 0.2, "madpo_lambda": 0.5, "madpo_tau": 1.0}])
def test_madpo_matches_numpy(hp):
    full = {"madpo_c_max": 2.0, "madpo_c_min": 0.5, "madpo_lambda": 1.0, "madpo_tau": 2.0, **hp}
    logps, h = random_pair(7), np.asarray(runtime(7)["reward_margin"], np.float64)
    w = np_madpo_weight(h, full["madpo_c_max"], full["madpo_c_min"], full["madpo_lambda"], full["madpo_tau"])
    want = -w * np_log_sigmoid(0.1 * np_delta(logps))
    got = L.get("madpo")(logps, beta=0.1, reward_margin=runtime(7)["reward_margin"], **hp)
    np.testing.assert_allclose(got.loss, want, rtol=1e-5)
    np.testing.assert_allclose(got.metrics["madpo/weight"], w, rtol=1e-5)


def test_madpo_amplifies_hard_pairs_and_dampens_easy_ones():
    # w = σ(c h)/σ(h): 1 at h = 0 and at h = τ, above 1 in between (c > 1), below 1 beyond τ.
    w = np.asarray(L.madpo_weight(jnp.array([0.0, 0.5, 1.0, 2.0, 6.0])))
    assert abs(w[0] - 1.0) < 1e-6 and w[1] > 1.0 and w[2] > 1.0 and abs(w[3] - 1.0) < 1e-6 and w[4] < 1.0
    assert np.all(np.isfinite(np.asarray(L.madpo_weight(jnp.array([-1e4, 1e4, 0.0])))))


class NumpyBetaDPO:
    """beta-DPO (arXiv 2407.08639, §4) as the authors' code: EMA of the batch margin mean/std,
    Gaussian-weighted selection of ⌊B(1-ρ)⌋ pairs, β·(1 + α(mean selected M - M_0)) clamped at
    1e-3, the mean of the loss over the selected pairs. Selection here: largest weight plus the
    given Gumbel noise (none: deterministic)."""

    def __init__(self, momentum=0.9):
        self.mean = self.std = 0.0
        self.m = momentum

    def __call__(self, delta, beta, alpha, rho, gumbel=None):
        self.mean = self.m * self.mean + (1 - self.m) * delta.mean()
        self.std = self.m * self.std + (1 - self.m) * delta.std(ddof=1)
        score = -0.5 * ((delta - self.mean) / max(self.std, 1e-6)) ** 2
        if gumbel is not None:
            score = score + gumbel
        k = max(int(np.floor(len(delta) * (1 - rho))), 1)
        kept = np.argsort(-score, kind="stable")[:k]
        beta_b = max(beta * (1 + alpha * (delta[kept].mean() - self.mean)), 1e-3)
        per_pair = -np_log_sigmoid(beta_b * delta)
        return per_pair[kept].mean(), beta_b, kept


@pytest.mark.parametrize("use_key", [False, True])
def test_beta_dpo_matches_numpy_across_batches(use_key):
    ref, state = NumpyBetaDPO(), None
    for step in range(3):
        logps = random_pair(10 + step, b=10)
        delta = np_delta(logps)
        key = jax.random.PRNGKey(step) if use_key else None
        gumbel = np.asarray(jax.random.gumbel(key, (10,), jnp.float32), np.float64) if use_key else None
        out = L.get("beta_dpo")(logps, beta=0.1, beta_dpo_alpha=0.6, beta_dpo_rho=0.2, state=state, key=key)
        want_mean, beta_b, kept = ref(delta, 0.1, 0.6, 0.2, gumbel)
        np.testing.assert_allclose(jnp.mean(out.loss), want_mean, rtol=1e-5)
        np.testing.assert_allclose(out.metrics["beta_dpo/beta"], beta_b, rtol=1e-5)
        assert sorted(np.flatnonzero(np.asarray(out.loss) != 0).tolist()) == sorted(kept.tolist())
        np.testing.assert_allclose(out.metrics["beta_dpo/kept"], len(kept) / 10)
        np.testing.assert_allclose([out.state.mean, out.state.std], [ref.mean, ref.std], rtol=1e-5)
        state = out.state


def test_beta_dpo_beta_grows_with_the_batch_margin():
    # A batch whose margins exceed the running M_0 gets a larger β (conservative), and the
    # clamp keeps β positive however far below M_0 the margins are.
    logps = random_pair(13)
    high = L.BetaDPOState(mean=jnp.float32(-50.0), std=jnp.float32(1.0))
    low = L.BetaDPOState(mean=jnp.float32(1e4), std=jnp.float32(1.0))
    hp = {"beta": 0.1, "beta_dpo_filter": False, "beta_dpo_momentum": 1.0}
    assert float(L.get("beta_dpo")(logps, state=high, **hp).metrics["beta_dpo/beta"]) > 0.1
    np.testing.assert_allclose(L.get("beta_dpo")(logps, state=low, **hp).metrics["beta_dpo/beta"], 1e-3)


# --- errors -------------------------------------------------------------------------------------

def test_adaptive_errors():
    logps = random_pair(0)
    with pytest.raises(ValueError, match="loss 'madpo' needs reward_margin"):
        L.get("madpo")(logps)
    with pytest.raises(ValueError, match="madpo needs madpo_c_min < 1 < madpo_c_max"):
        L.get("madpo")(logps, reward_margin=jnp.zeros(B), madpo_c_min=1.5)
    with pytest.raises(ValueError, match=r"loss 'soft_dpo': preference has shape \(3,\), expected \(8,\)"):
        L.get("soft_dpo")(logps, preference=jnp.ones(3))
    for name in NAMES:
        with pytest.raises(ValueError, match=f"loss '{name}' needs reference log-probs"):
            L.get(name)(logps.replace(ref_chosen=None, ref_rejected=None), **EXTRA[name](0))


@pytest.mark.parametrize("name", NAMES)
def test_unknown_hyperparameter_is_a_type_error(name):
    with pytest.raises(TypeError, match="betta"):
        L.get(name)(random_pair(0), betta=0.1, **EXTRA[name](0))


def test_registry_metadata():
    for name in NAMES:
        assert L.input_kind(name) == "pair" and not L.needs_tokens(name) and L.needs_reference(name)
    assert {"preference", "reward_margin", "state", "key"} <= set(L.RUNTIME_ARGS)


# --- transforms ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_jit_equals_eager(name):
    logps, extra = random_pair(3), EXTRA[name](3)
    eager = L.get(name)(logps, **extra)
    jitted = jax.jit(lambda lp, ex: L.get(name)(lp, **ex))(logps, extra)
    assert_same_output(jitted, eager)


def test_beta_dpo_jits_with_state_and_key():
    logps = random_pair(4)
    fn = jax.jit(lambda lp, st, k: L.get("beta_dpo")(lp, state=st, key=k))
    out = fn(logps, L.BetaDPOState(), jax.random.PRNGKey(0))
    again = L.get("beta_dpo")(logps, state=L.BetaDPOState(), key=jax.random.PRNGKey(0))
    assert_same_output(out, again)
    np.testing.assert_allclose([out.state.mean, out.state.std], [again.state.mean, again.state.std], rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_inputs_give_fp32_outputs(name):
    low = jax.tree.map(lambda x: x.astype(jnp.bfloat16), random_pair(5))
    extra = {k: v.astype(jnp.bfloat16) for k, v in EXTRA[name](5).items()}
    out = L.get(name)(low, **extra)
    assert out.loss.dtype == jnp.float32
    assert all(v.dtype == jnp.float32 for v in out.metrics.values())
    up = lambda t: jax.tree.map(lambda x: x.astype(jnp.float32), t)
    np.testing.assert_allclose(out.loss, L.get(name)(up(low), **up(extra)).loss, rtol=1e-6)


def extreme_pairs():
    huge = jnp.full((4,), -1e4)
    same = jnp.array([-3.0, -10.0, -0.5, -50.0])
    yield random_pair(0, b=4).replace(chosen=huge, rejected=huge * 0.5, ref_chosen=huge * 0.5, ref_rejected=huge)
    yield random_pair(0, b=4).replace(chosen=huge * 0.5, rejected=huge, ref_chosen=huge, ref_rejected=huge * 0.5)
    yield random_pair(0, b=4).replace(chosen=same, rejected=same, ref_chosen=same, ref_rejected=same)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_are_finite_at_extreme_inputs(name):
    extras = [{"preference": jnp.array([0.0, 1.0, 0.5, 0.3])} if "preference" in EXTRA[name](0) else {},
              {"reward_margin": jnp.array([-1e4, 1e4, 0.0, -2.0])} if name == "madpo" else {}]
    extra = {k: v for e in extras for k, v in e.items()}
    loss_fn = lambda c, r, lp: jnp.mean(L.get(name)(lp.replace(chosen=c, rejected=r), **extra).loss)
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
    for logps in extreme_pairs():
        loss, grads = grad_fn(logps.chosen, logps.rejected, logps)
        assert np.isfinite(float(loss)), name
        assert all(np.all(np.isfinite(np.asarray(g))) for g in grads), name
