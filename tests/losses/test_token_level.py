"""Token- and step-level losses (tdpo, tgdpo, rto, step_dpo) against numpy written from the
papers, their reductions to sigmoid DPO, masking, errors and the transforms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pojax.losses as L
from tests.losses.helpers import assert_bf16_inputs_give_fp32_outputs, run

B, T = 6, 7
NAMES = ["tdpo", "tgdpo", "rto", "step_dpo"]


def token_pair(seed, garbage=False):
    """PairLogps whose sums are the sums of its TokenLogps, which carry the per-token KL
    (KL(π_ref ‖ π) ≥ 0) and guide-model token rewards; ``garbage`` fills padded positions."""
    rng = np.random.default_rng(seed)

    def side(lens):
        mask = np.arange(T)[None, :] < lens[:, None]
        policy = -rng.uniform(0.05, 3.0, (B, T))
        ref = policy + rng.normal(0, 0.4, (B, T))
        kl = rng.uniform(0, 0.5, (B, T))
        rew = rng.normal(0, 1.0, (B, T))
        if garbage:
            policy, ref, kl, rew = (np.where(mask, x, v) for x, v in ((policy, 1e6), (ref, -1e6), (kl, np.nan), (rew, 1e9)))
        f = lambda x: jnp.asarray(x, jnp.float32)
        tokens = L.TokenLogps(policy=f(policy), ref=f(ref), mask=jnp.asarray(mask),
                              extra={L.TOKEN_KL: f(kl), L.TOKEN_REWARDS: f(rew)})
        total = lambda x: f(np.where(mask, x, 0).sum(-1))
        return tokens, total(policy), total(ref), f(lens)

    ct, c, rc, cl = side(rng.integers(1, T + 1, B))
    rt, r, rr, rl = side(rng.integers(1, T + 1, B))
    return L.PairLogps(chosen=c, rejected=r, ref_chosen=rc, ref_rejected=rr, chosen_len=cl, rejected_len=rl,
                       chosen_tokens=ct, rejected_tokens=rt)


def np_tokens(tokens, key=None):
    """(Σ policy, Σ ref, Σ extra[key]) or the per-token arrays, float64, zero off the mask."""
    m = np.asarray(tokens.mask)
    get = lambda x: np.where(m, np.asarray(x, np.float64), 0.0)
    return get(tokens.policy), get(tokens.ref), (get(tokens.extra[key]) if key else None)


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def assert_same_output(got, want, keys=None, rtol=1e-6):
    np.testing.assert_allclose(got.loss, want.loss, rtol=rtol, atol=1e-7)
    for key in keys or want.metrics:
        np.testing.assert_allclose(got.metrics[key], want.metrics[key], rtol=rtol, atol=1e-7)


# --- reductions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_tdpo_with_alpha_zero_is_sigmoid_dpo(beta):
    logps = token_pair(0)
    assert_same_output(run("tdpo", logps, beta=beta, tdpo_alpha=0.0), run("sigmoid", logps, beta=beta))


def test_tgdpo_with_alpha_zero_is_sigmoid_dpo():
    logps = token_pair(1)
    assert_same_output(run("tgdpo", logps, beta=0.2, tgdpo_alpha=0.0), run("sigmoid", logps, beta=0.2), rtol=2e-6)


@pytest.mark.parametrize("name", ["rto", "step_dpo"])
def test_rto_and_step_dpo_are_sigmoid_dpo(name):
    logps = token_pair(2)
    hp = {"beta": 0.3, "label_smoothing": 0.1}
    assert_same_output(run(name, logps, **hp), run("sigmoid", logps, **hp))


# --- numpy references from the papers ------------------------------------------------------------

@pytest.mark.parametrize(("beta", "alpha"), [(0.1, 0.5), (0.5, 1.0)])
def test_tdpo2_matches_numpy(beta, alpha):
    # TDPO2 (arXiv 2404.11999): -log σ(β[(u_w - u_l) - α(D_l - D_w)]), D = Σ_t KL(π_ref ‖ π).
    logps = token_pair(3)
    pw, rw, kw = np_tokens(logps.chosen_tokens, L.TOKEN_KL)
    pl, rl, kl = np_tokens(logps.rejected_tokens, L.TOKEN_KL)
    u = (pw.sum(-1) - rw.sum(-1)) - (pl.sum(-1) - rl.sum(-1))
    want = -np_log_sigmoid(beta * (u - alpha * (kl.sum(-1) - kw.sum(-1))))
    got = run("tdpo", logps, beta=beta, tdpo_alpha=alpha)
    np.testing.assert_allclose(got.loss, want, rtol=1e-5)
    np.testing.assert_allclose(got.metrics["kl/chosen"], kw.sum(-1), rtol=1e-5)
    np.testing.assert_allclose(got.metrics["kl/rejected"], kl.sum(-1), rtol=1e-5)


def test_tdpo2_stops_the_gradient_of_the_chosen_kl():
    logps = token_pair(4)

    def f(kl_w, kl_l):
        lp = logps.replace(chosen_tokens=logps.chosen_tokens.replace(extra={L.TOKEN_KL: kl_w}),
                           rejected_tokens=logps.rejected_tokens.replace(extra={L.TOKEN_KL: kl_l}))
        return jnp.sum(L.get("tdpo")(lp, tdpo_alpha=0.5).loss)

    g_w, g_l = jax.jit(jax.grad(f, argnums=(0, 1)))(logps.chosen_tokens.extra[L.TOKEN_KL], logps.rejected_tokens.extra[L.TOKEN_KL])
    np.testing.assert_array_equal(g_w, 0.0)
    assert np.all(np.asarray(g_l)[np.asarray(logps.rejected_tokens.mask)] > 0)


@pytest.mark.parametrize(("beta", "alpha"), [(0.1, 0.5), (0.4, 2.0)])
def test_tgdpo_matches_numpy(beta, alpha):
    # TGDPO (arXiv 2506.14574): -log σ(Σ_t β(1 + α r̂^w_t) u^w_t - Σ_t β(1 - α r̂^l_t) u^l_t).
    logps = token_pair(5)
    pw, rw, gw = np_tokens(logps.chosen_tokens, L.TOKEN_REWARDS)
    pl, rl, gl = np_tokens(logps.rejected_tokens, L.TOKEN_REWARDS)
    z = np.sum(beta * (1 + alpha * gw) * (pw - rw), -1) - np.sum(beta * (1 - alpha * gl) * (pl - rl), -1)
    got = run("tgdpo", logps, beta=beta, tgdpo_alpha=alpha)
    np.testing.assert_allclose(got.loss, -np_log_sigmoid(z), rtol=1e-5)
    n_w = np.asarray(logps.chosen_tokens.mask).sum(-1)
    np.testing.assert_allclose(got.metrics["tgdpo/token_reward_chosen"], gw.sum(-1) / n_w, rtol=1e-5)


def test_rto_token_rewards_match_numpy():
    # RTO (arXiv 2404.18922): r_t = β log π_dpo/π_ref - β₂ log π/π_ref, plus β₃ r(x, y) on the last token.
    rng = np.random.default_rng(6)
    dpo, ref, pol = (-rng.uniform(0.1, 3, (B, T)) for _ in range(3))
    lens = rng.integers(1, T + 1, B)
    mask = np.arange(T)[None, :] < lens[:, None]
    seq = rng.normal(0, 1, B)
    f = lambda x: jnp.asarray(x, jnp.float32)
    got = L.rto_token_rewards(f(dpo), f(ref), jnp.asarray(mask), beta=0.1, policy_token_logps=f(pol), rto_kl_coef=0.05,
                              sequence_reward=f(seq), rto_seq_coef=2.0)
    want = 0.1 * (dpo - ref) - 0.05 * (pol - ref)
    want[np.arange(B), lens - 1] += 2.0 * seq
    np.testing.assert_allclose(got, np.where(mask, want, 0), rtol=1e-5, atol=1e-6)
    plain = L.rto_token_rewards(f(dpo), f(ref), jnp.asarray(mask), beta=0.1)
    np.testing.assert_allclose(plain, np.where(mask, 0.1 * (dpo - ref), 0), rtol=1e-5, atol=1e-6)
    # Summed over a completion, the DPO token rewards are the sequence-level DPO reward.
    np.testing.assert_allclose(jnp.sum(plain, -1), 0.1 * np.where(mask, dpo - ref, 0).sum(-1), rtol=1e-5)


def test_rto_reports_token_rewards():
    logps = token_pair(7)
    out = run("rto", logps, beta=0.1)
    pw, rw, _ = np_tokens(logps.chosen_tokens)
    n = np.asarray(logps.chosen_tokens.mask).sum(-1)
    np.testing.assert_allclose(out.metrics["rto/token_reward_chosen"], 0.1 * (pw - rw).sum(-1) / n, rtol=1e-5)
    assert "rto/token_reward_chosen" not in run("rto", logps.replace(chosen_tokens=None, rejected_tokens=None)).metrics


# --- masking and errors --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tdpo", "tgdpo", "rto"])
def test_padded_token_positions_are_ignored(name):
    clean, dirty = token_pair(8), token_pair(8, garbage=True)
    assert_same_output(run(name, dirty, beta=0.2), run(name, clean, beta=0.2))


def test_token_level_errors():
    logps = token_pair(9)
    for name in ("tdpo", "tgdpo"):
        with pytest.raises(ValueError, match=f"loss '{name}' needs PairLogps.chosen_tokens and rejected_tokens"):
            L.get(name)(logps.replace(chosen_tokens=None))
        assert L.needs_tokens(name) and L.input_kind(name) == "pair"
    with pytest.raises(ValueError, match=r"loss 'tdpo' needs PairLogps.chosen_tokens.extra\['token_kl'\]"):
        L.get("tdpo")(logps.replace(chosen_tokens=logps.chosen_tokens.replace(extra={})))
    with pytest.raises(ValueError, match=r"loss 'tgdpo' needs PairLogps.rejected_tokens.extra\['token_rewards'\]"):
        L.get("tgdpo")(logps.replace(rejected_tokens=logps.rejected_tokens.replace(extra={})))
    with pytest.raises(ValueError, match="loss 'tgdpo' needs the reference's per-token log-probs"):
        L.get("tgdpo")(logps.replace(chosen_tokens=logps.chosen_tokens.replace(ref=None)))
    for name in NAMES:
        if name != "tgdpo":  # reads the reference per token only (checked above)
            with pytest.raises(ValueError, match=f"loss '{name}' needs reference log-probs"):
                L.get(name)(logps.replace(ref_chosen=None, ref_rejected=None))
        with pytest.raises(TypeError, match="betta"):
            L.get(name)(logps, betta=0.1)
    assert not L.needs_tokens("rto") and not L.needs_tokens("step_dpo")


# --- transforms ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_jit_equals_eager(name):
    logps = token_pair(10)
    assert_same_output(jax.jit(L.get(name))(logps), L.get(name)(logps))


@pytest.mark.parametrize("name", NAMES)
def test_bf16_inputs_give_fp32_outputs(name):
    assert_bf16_inputs_give_fp32_outputs(name, token_pair(11))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_are_finite_at_extreme_inputs(name):
    base = token_pair(12)

    def scaled(lp, s):
        tok = lambda t, k: t.replace(policy=t.policy * s, ref=t.ref * k)
        ct, rt = tok(lp.chosen_tokens, 1.0), tok(lp.rejected_tokens, s)
        total = lambda t, x: jnp.sum(jnp.where(t.mask, x, 0.0), -1)
        return lp.replace(chosen_tokens=ct, rejected_tokens=rt, chosen=total(ct, ct.policy), rejected=total(rt, rt.policy),
                          ref_chosen=total(ct, ct.ref), ref_rejected=total(rt, rt.ref))

    def loss_fn(policy_w, policy_l, lp):
        ct, rt = lp.chosen_tokens.replace(policy=policy_w), lp.rejected_tokens.replace(policy=policy_l)
        lp = lp.replace(chosen_tokens=ct, rejected_tokens=rt, chosen=jnp.sum(jnp.where(ct.mask, policy_w, 0.0), -1),
                        rejected=jnp.sum(jnp.where(rt.mask, policy_l, 0.0), -1))
        return jnp.mean(L.get(name)(lp).loss)

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
    for lp in (base, scaled(base, 1e3), scaled(base, -1e3)):
        loss, grads = grad_fn(lp.chosen_tokens.policy, lp.rejected_tokens.policy, lp)
        assert np.isfinite(float(loss)), name
        assert all(np.all(np.isfinite(np.asarray(g))) for g in grads), name
