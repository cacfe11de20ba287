"""Losses TRL does not ship (ASFT; BCO since TRL 1.16) against numpy written from the papers."""
import jax.numpy as jnp
import numpy as np
import pytest

import pojax.losses as L
from tests.losses.helpers import random_pair, random_unpaired


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def np_asft(chosen, rejected, cl, rl, beta, lam):
    # ASFT (arXiv 2409.10571) with the β of arXiv 2502.01237: p̄ = exp(mean token log-prob),
    # L = -Σ log π(y_w) / Σ|y_w| - λ[log σ(β log(p̄_w/(1-p̄_w))) + log σ(-β log(p̄_l/(1-p̄_l)))].
    pw, pl = np.exp(chosen / cl), np.exp(rejected / rl)
    lo_w, lo_l = np.log(pw / (1 - pw)), np.log(pl / (1 - pl))
    nll = -chosen.sum() / cl.sum()
    return nll - lam * (np_log_sigmoid(beta * lo_w) + np_log_sigmoid(-beta * lo_l))


@pytest.mark.parametrize(("beta", "lam"), [(1.0, 1.0), (0.5, 0.3), (2.0, 1.0)])
def test_asft_matches_numpy(beta, lam):
    logps = random_pair(int(beta * 10), scale=10.0)
    args = [np.asarray(x, np.float64) for x in (logps.chosen, logps.rejected, logps.chosen_len, logps.rejected_len)]
    got = L.get("asft")(logps, beta=beta, asft_lambda=lam).loss
    np.testing.assert_allclose(got, np_asft(*args, beta, lam), rtol=1e-5)


def test_asft_at_beta_one_is_absolute_likelihood():
    # σ(log odds p) = p, so the β = 1 alignment term is -log p̄_w - log(1 - p̄_l).
    logps = random_pair(3, scale=5.0)
    pw = np.exp(np.asarray(logps.chosen / logps.chosen_len, np.float64))
    pl = np.exp(np.asarray(logps.rejected / logps.rejected_len, np.float64))
    nll = -float(jnp.sum(logps.chosen) / jnp.sum(logps.chosen_len))
    got = L.get("asft")(logps, beta=1.0, asft_lambda=1.0).loss
    np.testing.assert_allclose(got, nll - np.log(pw) - np.log1p(-pl), rtol=1e-5)


class NumpyBCO:
    """BCO (arXiv 2404.04656, Eqs. 7–8) with δ the running mean of every reward seen so far,
    updated with the batch before use (TRL's BCOTrainer, RunningMoments)."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def __call__(self, completion, ref, label, beta):
        r = beta * (completion - ref)
        self.total += r.sum()
        self.count += r.size
        delta = self.total / self.count
        return np.where(label, -np_log_sigmoid(r - delta), -np_log_sigmoid(-(r - delta))), delta


def test_bco_matches_numpy_across_batches():
    ref_impl, state = NumpyBCO(), None
    for step in range(4):
        u = random_unpaired(step, b=6 + step)
        out = L.get("bco")(u, beta=0.2, state=state)
        want, delta = ref_impl(*(np.asarray(x, np.float64) for x in (u.completion, u.ref_completion, u.label)), 0.2)
        np.testing.assert_allclose(out.loss, want, rtol=1e-5)
        np.testing.assert_allclose(out.metrics["delta"], delta, rtol=1e-5)
        state = out.state
    assert float(state.count) == sum(6 + s for s in range(4))
