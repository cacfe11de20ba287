"""KTO's ELBO-KTO diagnostics and loss against a numpy reference written from the authors'
``ELBOKTOTrainer.compute_loss`` (github.com/vaibhavjindal/elbo-kto, train.py, commit 80dc31e):
r̂ = B_θ − B_ref, z0 = the batch mean of r̂ (their ``global_mean``), s = β(r̂ − z0), loss =
mean(λ − v) with v = λ_D σ(s) (desirable) or λ_U σ(−s) (undesirable)."""
import jax
import numpy as np
import pytest

import pojax.losses as L


def authors_reference(r_hat, label, length, *, beta, lam_d, lam_u):
    """Their logged means and loss, in numpy float64."""
    z0 = r_hat.mean()
    s = beta * (r_hat - z0)
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))
    v = np.where(label, lam_d * sig(s), lam_u * sig(-s))
    lam = np.where(label, lam_d, lam_u)
    metrics = {
        "abs_beta_r/mean": np.abs(beta * r_hat).mean(),
        "abs_beta_s/mean": np.abs(s).mean(),
        "abs_r_hat_z0/mean": np.abs(r_hat - z0).mean(),
        "abs_beta_s/frac>6": (np.abs(s) > 6).mean(),
        "abs_beta_s/frac>8": (np.abs(s) > 8).mean(),
        "resp_len/mean": length.mean(),
    }
    return (lam - v).mean(), metrics


def logps(seed=0, b=16, scale=40.0):
    rng = np.random.default_rng(seed)
    ref = rng.normal(-120.0, 30.0, b)
    pol = ref + rng.normal(0.0, scale, b)  # wide enough that some |s| exceed 6 and 8 at β = 0.5
    label = rng.random(b) < 0.5
    label[:2] = True, False
    length = rng.integers(1, 400, b).astype(np.float32)
    u = L.UnpairedLogps(completion=np.float32(pol), ref_completion=np.float32(ref), label=label,
                        length=length)
    return u, (pol.astype(np.float32) - ref.astype(np.float32)).astype(np.float64), label, length


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_elbo_kto_diagnostics_and_loss_match_the_authors(beta, jit):
    u, r_hat, label, length = logps()
    fn = lambda u: L.get("kto")(u, beta=beta, desirable_weight=1.0, undesirable_weight=1.33,
                                kto_reference_point="batch_mean")
    out = jax.jit(fn)(u) if jit else fn(u)
    loss, want = authors_reference(r_hat, label, length, beta=beta, lam_d=1.0, lam_u=1.33)
    np.testing.assert_allclose(np.mean(out.loss), loss, rtol=1e-5)
    for name, value in want.items():
        np.testing.assert_allclose(out.metrics[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
    if beta == 0.5:  # the saturation fractions are exercised, not trivially 0
        assert 0 < want["abs_beta_s/frac>6"] < 1 and want["abs_beta_s/frac>8"] > 0


def test_diagnostics_with_other_reference_points_and_without_lengths():
    u, r_hat, _, _ = logps(seed=1)
    out = L.get("kto")(u.replace(length=None), beta=0.2, kto_reference_point="zero")
    assert "resp_len/mean" not in out.metrics
    np.testing.assert_allclose(out.metrics["abs_beta_s/mean"], np.abs(0.2 * r_hat).mean(), rtol=1e-5)
    np.testing.assert_allclose(out.metrics["abs_r_hat_z0/mean"], np.abs(r_hat).mean(), rtol=1e-5)
    np.testing.assert_allclose(out.metrics["abs_beta_r/mean"], np.abs(0.2 * r_hat).mean(), rtol=1e-5)
