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
