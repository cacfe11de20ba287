"""Win rates: bootstrap interval, and the length-controlled rate that removes a pure length
signal but keeps a quality signal."""
import numpy as np
import pytest

from pojax.eval import win_rates
from pojax.eval.win_rates import fit_logistic


def test_length_only_signal_is_controlled_to_about_half():
    rng = np.random.default_rng(0)
    n = 4000
    la = rng.normal(300, 80, n)
    lb = la + rng.choice([-1.0, 1.0], n, p=[0.8, 0.2]) * rng.uniform(20, 200, n)  # a is longer 80% of the time
    pref = (rng.random(n) < 1 / (1 + np.exp(-3 * np.tanh((la - lb) / 100)))).astype(float)  # only length matters
    out = win_rates(pref, la, lb)
    assert out["win_rate"] > 0.7
    assert abs(out["lc_win_rate"] - 0.5) < 0.04, out


def test_quality_signal_survives_length_control():
    rng = np.random.default_rng(1)
    n = 4000
    la, lb = rng.normal(300, 80, n), rng.normal(300, 80, n)  # length unrelated to quality
    pref = (rng.random(n) < 0.7).astype(float)
    out = win_rates(pref, la, lb)
    assert out["lc_win_rate"] == pytest.approx(out["win_rate"], abs=0.02)
    lo, hi = out["win_rate_ci"]
    assert lo < out["win_rate"] < hi and hi - lo < 0.04  # ≈ ±1.96·sqrt(.21/4000) = ±0.014


def test_bootstrap_interval_matches_the_normal_approximation():
    pref = np.r_[np.ones(60), np.zeros(40)]
    lo, hi = win_rates(pref, np.ones(100), np.ones(100), num_bootstrap=4000)["win_rate_ci"]
    half = 1.96 * np.sqrt(0.6 * 0.4 / 100)
    assert lo == pytest.approx(0.6 - half, abs=0.02) and hi == pytest.approx(0.6 + half, abs=0.02)


def test_logistic_fit_recovers_known_weights():
    rng = np.random.default_rng(2)
    x = np.stack([np.ones(20000), rng.normal(size=20000)], 1)
    y = (rng.random(20000) < 1 / (1 + np.exp(-(x @ np.array([0.5, -1.5]))))).astype(float)
    np.testing.assert_allclose(fit_logistic(x, y), [0.5, -1.5], atol=0.06)


def test_ties_count_half_and_bad_input_is_refused():
    assert win_rates([1, 0.5, 0], [1, 1, 1], [1, 1, 1])["win_rate"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same non-zero length"):
        win_rates([1, 0], [1], [1, 2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        win_rates([2.0], [1], [1])
