"""Win rates with bootstrap confidence intervals and the length-controlled win rate.

The length-controlled (LC) win rate follows AlpacaEval 2 (Dubois et al., arXiv 2404.04475): fit
a logistic regression of the preference on the length difference,

    P(a beats b) = σ(θ + φ · tanh((len_a − len_b) / sd(len_a − len_b))),

and report σ(θ), the win rate the model would have if both outputs had the same length.
AlpacaEval's GLM also has a per-instruction difficulty term, which needs the baseline's outputs
on many instructions across models; pojax fits the two-parameter form above (say so when
comparing with AlpacaEval's leaderboard numbers). The fit is a few Newton (IRLS) steps in numpy
with fractional targets (ties = ½), written by hand because scikit-learn / statsmodels are not
dependencies.
"""
from __future__ import annotations

import numpy as np


def _check(preference, length_a, length_b):
    pref = np.asarray(preference, np.float64).reshape(-1)
    la, lb = np.asarray(length_a, np.float64).reshape(-1), np.asarray(length_b, np.float64).reshape(-1)
    if not (len(pref) == len(la) == len(lb)) or not len(pref):
        raise ValueError(f"win_rates: preference, length_a and length_b need the same non-zero length, got "
                         f"{len(pref)}, {len(la)}, {len(lb)}")
    if np.any((pref < 0) | (pref > 1)) or not np.all(np.isfinite(pref)):
        raise ValueError("win_rates: preference values must lie in [0, 1] (1 = a wins, 0.5 = tie)")
    return pref, la, lb


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def fit_logistic(features, targets, *, l2: float = 1e-6, steps: int = 50):
    """Weights w of P(y = 1) = σ(X w) maximizing the Bernoulli likelihood of fractional
    targets in [0, 1] (Newton's method; X [N, F] should include a constant column)."""
    x, y = np.asarray(features, np.float64), np.asarray(targets, np.float64)
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = _sigmoid(x @ w)
        grad = x.T @ (p - y) + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w


def lc_win_rate(preference, length_a, length_b) -> float:
    """σ(θ) of the length-controlled fit (module docstring)."""
    pref, la, lb = _check(preference, length_a, length_b)
    diff = la - lb
    sd = diff.std()
    feature = np.tanh(diff / sd) if sd > 0 else np.zeros_like(diff)
    x = np.stack([np.ones_like(diff), feature], axis=1)
    theta = fit_logistic(x, pref)[0]
    return float(_sigmoid(theta))


def win_rates(preference, length_a, length_b, *, num_bootstrap: int = 1000, seed: int = 0) -> dict:
    """{win_rate, win_rate_ci (95% bootstrap percentile interval), lc_win_rate, num_comparisons}.

    Args:
      preference: [N] in [0, 1]: 1 = a wins, 0 = b wins, 0.5 = tie.
      length_a, length_b: [N] lengths of the two outputs (tokens or characters).
    """
    pref, la, lb = _check(preference, length_a, length_b)
    rng = np.random.default_rng(seed)
    means = pref[rng.integers(0, len(pref), (num_bootstrap, len(pref)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"win_rate": float(pref.mean()), "win_rate_ci": (float(lo), float(hi)),
            "lc_win_rate": lc_win_rate(pref, la, lb), "num_comparisons": int(len(pref))}
