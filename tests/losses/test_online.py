"""The online modes' losses: XPO against a numpy evaluation of its formula, its limits
(α = 0 and no reference sample give sigmoid DPO), jit == no jit; online_dpo is sigmoid DPO."""
import jax
import jax.numpy as jnp
import numpy as np

import pojax.losses as L
from tests.losses.helpers import pair


def _inputs(seed=0, b=6):
    rng = np.random.default_rng(seed)
    c, r, rc, rr = (rng.normal(-10.0, 3.0, b).astype(np.float32) for _ in range(4))
    flag = rng.random(b) < 0.5
    return c, r, rc, rr, flag


def _numpy_xpo(c, r, rc, rr, flag, beta, alpha):
    """-log σ(β[(c - rc) - (r - rr)]) + α · log π(ỹ), ỹ the chosen side where ``flag``; float64."""
    c, r, rc, rr = (np.asarray(x, np.float64) for x in (c, r, rc, rr))
    z = beta * ((c - rc) - (r - rr))
    return np.log1p(np.exp(-z)) + alpha * np.where(flag, c, r)


def test_xpo_matches_numpy_formula():
    c, r, rc, rr, flag = _inputs()
    out = L.get("xpo")(pair(c, r, rc, rr), beta=0.2, alpha=0.05, ref_sample_chosen=jnp.asarray(flag))
    np.testing.assert_allclose(np.asarray(out.loss), _numpy_xpo(c, r, rc, rr, flag, 0.2, 0.05), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.metrics["loss/xpo"]), 0.05 * np.where(flag, c, r), rtol=1e-6)
    assert out.loss.dtype == jnp.float32


def test_xpo_term_follows_the_reference_sample():
    # swapping which side holds ỹ moves the term from log π(chosen) to log π(rejected)
    c, r, rc, rr, _ = _inputs(1)
    fn = L.get("xpo")
    on_chosen = fn(pair(c, r, rc, rr), alpha=1.0, ref_sample_chosen=jnp.ones(6, bool)).loss
    on_rejected = fn(pair(c, r, rc, rr), alpha=1.0, ref_sample_chosen=jnp.zeros(6, bool)).loss
    np.testing.assert_allclose(np.asarray(on_chosen - on_rejected), c - r, rtol=1e-5, atol=1e-4)


def test_xpo_alpha_zero_and_no_reference_sample_are_dpo():
    c, r, rc, rr, flag = _inputs(2)
    logps = pair(c, r, rc, rr)
    dpo = L.get("sigmoid")(logps, beta=0.1).loss
    np.testing.assert_array_equal(np.asarray(L.get("xpo")(logps, beta=0.1, alpha=0.0, ref_sample_chosen=flag).loss),
                                  np.asarray(dpo))
    np.testing.assert_array_equal(np.asarray(L.get("xpo")(logps, beta=0.1, alpha=0.5).loss), np.asarray(dpo))


def test_xpo_gradient_of_the_exploration_term():
    # d/d log π(ỹ) of α log π(ỹ) is α, on top of DPO's gradient
    c, r, rc, rr, flag = _inputs(3)
    loss = lambda cc, alpha: jnp.sum(L.get("xpo")(pair(cc, r, rc, rr), alpha=alpha, ref_sample_chosen=flag).loss)
    g = jax.grad(loss)(jnp.asarray(c), 0.3) - jax.grad(loss)(jnp.asarray(c), 0.0)
    np.testing.assert_allclose(np.asarray(g), np.where(flag, 0.3, 0.0), atol=1e-6)


def test_xpo_jit_equals_eager():
    c, r, rc, rr, flag = _inputs(4)
    fn = lambda lp, f: L.get("xpo")(lp, beta=0.1, alpha=0.05, ref_sample_chosen=f).loss
    np.testing.assert_allclose(np.asarray(jax.jit(fn)(pair(c, r, rc, rr), flag)), np.asarray(fn(pair(c, r, rc, rr), flag)),
                               rtol=1e-6)


def test_online_dpo_is_sigmoid_dpo_and_registered():
    assert L.get("online_dpo") is L.get("sigmoid")
    assert {"online_dpo", "xpo"} <= set(L.names())
    assert L.input_kind("xpo") == "pair" and L.needs_reference("xpo")
    assert "ref_sample_chosen" in L.RUNTIME_ARGS


def _numpy_ofs(c, r, sc, sr, rc, rr, beta, alpha):
    """OFS-DPO from its formula in float64: -log σ(β h_F) + α·(-log σ(β(h_F - h_S))) - log σ(β h_S),
    h = (log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l)) for the fast (c, r) and the
    slow (sc, sr) module; returns (loss, fast DPO, slow DPO, regularizer)."""
    c, r, sc, sr, rc, rr = (np.asarray(x, np.float64) for x in (c, r, sc, sr, rc, rr))
    nls = lambda z: np.log1p(np.exp(-z))  # -log σ(z)
    h_f, h_s = (c - rc) - (r - rr), (sc - rc) - (sr - rr)
    fast, slow, reg = nls(beta * h_f), nls(beta * h_s), nls(beta * (h_f - h_s))
    return fast + alpha * reg + slow, fast, slow, reg


def _ofs_inputs(seed=2, b=6):
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(-10.0, 3.0, b).astype(np.float32) for _ in range(6))


def test_ofs_dpo_matches_numpy_formula():
    c, r, sc, sr, rc, rr = _ofs_inputs()
    out = L.get("ofs_dpo")(pair(c, r, rc, rr), beta=0.3, ofs_alpha=0.7, slow_logps=pair(sc, sr))
    loss, fast, slow, reg = _numpy_ofs(c, r, sc, sr, rc, rr, 0.3, 0.7)
    np.testing.assert_allclose(np.asarray(out.loss), loss, rtol=1e-5, atol=1e-6)
    for key, want in (("loss/fast_dpo", fast), ("loss/slow_dpo", slow), ("loss/ofs_reg", reg)):
        np.testing.assert_allclose(np.asarray(out.metrics[key]), want, rtol=1e-5, atol=1e-6)
    assert out.loss.dtype == jnp.float32
    # the reference cancels in the regularizer: it is the fast module's DPO loss against the slow one
    np.testing.assert_allclose(np.asarray(out.metrics["loss/ofs_reg"]),
                               np.asarray(L.get("sigmoid")(pair(c, r, sc, sr), beta=0.3).loss), rtol=1e-5, atol=1e-6)


def test_ofs_dpo_reduces_to_sigmoid_dpo():
    c, r, sc, sr, rc, rr = _ofs_inputs(3)
    dpo = L.get("sigmoid")(pair(c, r, rc, rr), beta=0.2).loss
    fn = L.get("ofs_dpo")
    np.testing.assert_array_equal(np.asarray(fn(pair(c, r, rc, rr), beta=0.2).loss), np.asarray(dpo))  # no slow module
    out = fn(pair(c, r, rc, rr), beta=0.2, ofs_alpha=0.0, slow_logps=pair(sc, sr))  # α = 0: fast module's loss is DPO
    np.testing.assert_allclose(np.asarray(out.loss - out.metrics["loss/slow_dpo"]), np.asarray(dpo), rtol=1e-6, atol=1e-6)


def test_ofs_dpo_gradients_fast_chases_slow_learns_by_dpo():
    # d/d(slow logps) is the slow module's DPO gradient whatever α (the regularizer's stop-gradient);
    # d/d(fast logps) is DPO's plus α β σ(-β(h_F - h_S)) (the chasing term)
    c, r, sc, sr, rc, rr = _ofs_inputs(4)
    beta, alpha = 0.25, 2.0

    def total(fast_c, slow_c, a):
        return L.get("ofs_dpo")(pair(fast_c, r, rc, rr), beta=beta, ofs_alpha=a, slow_logps=pair(slow_c, sr)).loss.sum()

    g_fast, g_slow = jax.grad(total, argnums=(0, 1))(jnp.asarray(c), jnp.asarray(sc), alpha)
    _, g_slow0 = jax.grad(total, argnums=(0, 1))(jnp.asarray(c), jnp.asarray(sc), 0.0)
    np.testing.assert_allclose(np.asarray(g_slow), np.asarray(g_slow0), rtol=1e-6)
    sig = lambda z: 1 / (1 + np.exp(-z))
    h_f, h_s = (c - rc) - (r - rr), (sc - rc) - (sr - rr)
    want = -beta * sig(-beta * h_f) - alpha * beta * sig(-beta * (h_f - h_s))
    np.testing.assert_allclose(np.asarray(g_fast), want, rtol=1e-5, atol=1e-7)


def test_ofs_dpo_jit_matches_eager_and_slow_logps_is_runtime():
    c, r, sc, sr, rc, rr = _ofs_inputs(5)
    fn = L.get("ofs_dpo")
    eager = fn(pair(c, r, rc, rr), ofs_alpha=0.5, slow_logps=pair(sc, sr)).loss
    jitted = jax.jit(lambda f, s: fn(f, ofs_alpha=0.5, slow_logps=s).loss)(pair(c, r, rc, rr), pair(sc, sr))
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6)
    assert set(L.hparam_names(fn)) - set(L.RUNTIME_ARGS) == {"beta", "ofs_alpha"}
