"""Parity with TRL 1.16: pojax's per-example losses equal TRL's own loss code to 1e-5 (fp32).

Per-example values come from one TRL call per example (batch of 1); the losses that couple
the batch (aot, aot_unpaired, sft, KTO's z0) are compared on the batch mean TRL returns.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import pojax.losses as L
from tests.losses import trl_driver as trl

B, T = 6, 7
ATOL = RTOL = 1e-5
COUPLED = {"aot", "aot_unpaired", "sft"}


def make_batch(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, T + 1, size=2 * B)
    mask = np.arange(T)[None, :] < lens[:, None]
    policy = np.where(mask, -rng.uniform(0.01, 3.0, (2 * B, T)) * scale, 0.0).astype(np.float32)
    ref = np.where(mask, policy + rng.normal(0, 0.3, (2 * B, T)) * scale, 0.0).astype(np.float32)
    lss = np.where(mask, -rng.uniform(0.01, 2.0, (2 * B, T)), 0.0).astype(np.float32)
    return policy, ref, lss, lens[:B], lens[B:]


def pojax_pair(policy, ref, lss, chosen_len, rejected_len):
    n = len(chosen_len)
    mask = np.arange(T)[None, :] < np.concatenate([chosen_len, rejected_len])[:, None]

    def tokens(sl):
        return L.TokenLogps(policy=jnp.asarray(policy[sl]), ref=jnp.asarray(ref[sl]), mask=jnp.asarray(mask[sl]),
                            extra={"log_sum_sq_probs": jnp.asarray(lss[sl])})

    c, r = slice(0, n), slice(n, 2 * n)
    return L.PairLogps(
        chosen=jnp.asarray(policy[c].sum(1)), rejected=jnp.asarray(policy[r].sum(1)),
        ref_chosen=jnp.asarray(ref[c].sum(1)), ref_rejected=jnp.asarray(ref[r].sum(1)),
        chosen_len=jnp.asarray(chosen_len, jnp.float32), rejected_len=jnp.asarray(rejected_len, jnp.float32),
        chosen_tokens=tokens(c), rejected_tokens=tokens(r),
    )


def select(batch, i):
    policy, ref, lss, cl, rl = batch
    idx = [i, B + i]
    return policy[idx], ref[idx], lss[idx], cl[i:i + 1], rl[i:i + 1]


F_DIV = ["sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"]
OTHERS = ["nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down"]


def cases():
    for name in F_DIV + OTHERS:
        for beta in (0.1, 0.7):
            hp = {"beta": beta}
            if name in ("robust", "aot", "aot_unpaired"):
                yield name, {**hp, "label_smoothing": 0.2}
            if name == "exo_pair":
                hp["label_smoothing"] = 1e-3
            if name == "discopop":
                yield name, {**hp, "discopop_tau": 0.5}
            yield name, hp
            if name in F_DIV:
                for fdiv in ("forward_kl", "js_divergence"):
                    yield name, {**hp, "f_divergence_type": fdiv}
                for a in (0.5, 1.5):
                    yield name, {**hp, "f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": a}
    for name in ("sigmoid", "ipo", "apo_zero", "sft"):
        yield name, {"beta": 0.2, "ld_alpha": 0.5}
        yield name, {"beta": 0.2, "ld_alpha": 0.0}
    # ("sft", use_weighting) is left out: TRL 1.16 raises there (in-place multiply of an
    # expanded tensor in DPOTrainer._compute_loss).
    for name in ("sigmoid", "hinge", "nca_pair", "apo_down"):
        yield name, {"beta": 0.3, "use_weighting": True}
    yield "sigmoid", {"beta": 0.3, "use_weighting": True, "ld_alpha": 0.3}


def _id(case):
    name, hp = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in hp.items())


@pytest.mark.parametrize("case", list(cases()), ids=_id)
def test_dpo_loss_types_match_trl(case):
    name, hp = case
    batch = make_batch(hash(_id(case)) % 2**32)
    out = L.get(name)(pojax_pair(*batch), **hp)
    assert out.loss.shape == (B,) and out.loss.dtype == jnp.float32
    trl_mean, trl_metrics = trl.dpo_loss(*batch, loss_type=name, **hp)
    np.testing.assert_allclose(float(jnp.mean(out.loss)), trl_mean, rtol=RTOL, atol=ATOL)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen"):
        np.testing.assert_allclose(float(jnp.mean(out.metrics[key])), trl_metrics[key], rtol=RTOL, atol=ATOL)
    if name in COUPLED:
        return
    per_example = [trl.dpo_loss(*select(batch, i), loss_type=name, **hp)[0] for i in range(B)]
    np.testing.assert_allclose(np.asarray(out.loss), per_example, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("weights", [[1.0, 1.0], [0.8, 0.2], [1.0, 0.5, 0.25]])
def test_weighted_sum_of_loss_types_matches_trl(weights):
    names = ["sigmoid", "bco_pair", "sft"][: len(weights)]
    batch = make_batch(len(weights) * 7 + int(weights[1] * 10))
    out = L.get(names)(pojax_pair(*batch), loss_weights=weights, beta=0.2)
    trl_mean, _ = trl.dpo_loss(*batch, loss_type=names, loss_weights=weights, beta=0.2)
    np.testing.assert_allclose(float(jnp.mean(out.loss)), trl_mean, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("rpo_alpha", [0.5, 1.0])
def test_rpo_alpha_is_trls_sigmoid_plus_weighted_sft(rpo_alpha):
    # TRL 1.16 dropped rpo_alpha; its RPO term is exactly the "sft" loss type weighted by α.
    batch = make_batch(11)
    out = L.get("sigmoid")(pojax_pair(*batch), beta=0.1, rpo_alpha=rpo_alpha)
    trl_mean, _ = trl.dpo_loss(*batch, loss_type=["sigmoid", "sft"], loss_weights=[1.0, rpo_alpha], beta=0.1)
    np.testing.assert_allclose(float(jnp.mean(out.loss)), trl_mean, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------- KTO


def kto_batch(seed, n_desirable):
    rng = np.random.default_rng(seed)
    policy = -rng.uniform(1, 30, B).astype(np.float32)
    ref = (policy + rng.normal(0, 2, B)).astype(np.float32)
    kl = -rng.uniform(1, 30, B).astype(np.float32)
    ref_kl = (kl + rng.normal(0.5, 2, B)).astype(np.float32)
    label = np.arange(B) < n_desirable
    rng.shuffle(label)
    return policy, ref, kl, ref_kl, label


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
@pytest.mark.parametrize(("beta", "dw", "uw", "n_desirable"), [(0.1, 1.0, 1.0, 3), (0.5, 1.33, 0.7, 2), (0.05, 1.0, 2.0, 5), (0.3, 1.0, 1.0, 0)])
def test_unpaired_losses_match_trl(loss_type, beta, dw, uw, n_desirable):
    policy, ref, kl, ref_kl, label = kto_batch(int(beta * 100) + n_desirable, n_desirable)
    hp = {"beta": beta, "desirable_weight": dw, "undesirable_weight": uw}
    logps = L.UnpairedLogps(completion=jnp.asarray(policy), ref_completion=jnp.asarray(ref), label=jnp.asarray(label),
                            kl=jnp.asarray(kl), ref_kl=jnp.asarray(ref_kl))
    out = L.get(loss_type)(logps, **hp)
    trl_mean, trl_metrics = trl.kto_loss(policy, ref, kl, ref_kl, label, loss_type=loss_type, **hp)
    np.testing.assert_allclose(float(jnp.mean(out.loss)), trl_mean, rtol=RTOL, atol=ATOL)
    if loss_type == "kto":
        np.testing.assert_allclose(float(out.metrics["kl"]), trl_metrics["kl"], rtol=RTOL, atol=ATOL)
        # the estimate before TRL's clamp at 0 (negative for two of the four batches, where kl stays 0)
        raw = np.mean(kl.astype(np.float64) - ref_kl)
        np.testing.assert_allclose(float(out.metrics["kl/unclamped"]), raw, rtol=RTOL, atol=ATOL)
        assert float(out.metrics["kl"]) == pytest.approx(max(raw, 0.0), rel=RTOL, abs=ATOL)
    for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        if key in trl_metrics:
            np.testing.assert_allclose(float(out.metrics[key]), trl_metrics[key], rtol=RTOL, atol=ATOL)
    # Per example: one TRL call per row, its mismatched completion replaced by one whose
    # log-ratio is the batch mean, so TRL's z0 equals the full batch's.
    for i in range(B):
        m_kl, m_ref = np.float32(np.mean(kl - ref_kl)), np.float32(0.0)
        got, _ = trl.kto_loss(policy[i:i + 1], ref[i:i + 1], [m_kl], [m_ref], label[i:i + 1], loss_type=loss_type, **hp)
        np.testing.assert_allclose(float(out.loss[i]), got, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------- CPO / SimPO / ORPO


def rf_batch(seed):
    rng = np.random.default_rng(seed)
    cl, rl = rng.integers(1, 40, B), rng.integers(1, 40, B)
    chosen = (-rng.uniform(0.05, 2.0, B) * cl).astype(np.float32)
    rejected = (-rng.uniform(0.05, 2.0, B) * rl).astype(np.float32)
    return chosen, rejected, cl.astype(np.float32), rl.astype(np.float32)


@pytest.mark.parametrize(
    ("name", "trl_type", "hp"),
    [
        ("cpo", "sigmoid", {"beta": 0.1}), ("cpo", "sigmoid", {"beta": 0.5, "label_smoothing": 0.1}),
        ("cpo", "sigmoid", {"beta": 0.1, "alpha": 0.25}),
        ("cpo_hinge", "hinge", {"beta": 0.1}), ("cpo_hinge", "hinge", {"beta": 0.05}),
        ("cpo_ipo", "ipo", {"beta": 0.1}), ("cpo_ipo", "ipo", {"beta": 0.5, "alpha": -0.3}),
        ("simpo", "simpo", {"beta": 2.0, "simpo_gamma": 0.5}), ("simpo", "simpo", {"beta": 0.1, "simpo_gamma": 1.0, "label_smoothing": 0.05}),
        ("simpo", "simpo", {"beta": 2.5, "simpo_gamma": 1.4, "alpha": 0.5}),
    ],
)
@pytest.mark.parametrize("cpo_alpha", [0.0, 1.0])
def test_cpo_family_matches_trl(name, trl_type, hp, cpo_alpha):
    chosen, rejected, cl, rl = rf_batch(len(name) + int(hp["beta"] * 10))
    logps = L.PairLogps(chosen=jnp.asarray(chosen), rejected=jnp.asarray(rejected),
                        chosen_len=jnp.asarray(cl), rejected_len=jnp.asarray(rl))
    out = L.get(name)(logps, cpo_alpha=cpo_alpha, **hp)
    avg = trl_type in ("ipo", "simpo")  # CPOTrainer averages per token for these two
    c, r = (chosen / cl, rejected / rl) if avg else (chosen, rejected)
    trl_hp = {k: v for k, v in hp.items()}
    losses, cr, rr = trl.cpo_per_example(c, r, loss_type=trl_type, **trl_hp)
    nll = -chosen.sum() / cl.sum()  # TRL's BC term: token-averaged cross-entropy of the chosen batch
    np.testing.assert_allclose(np.asarray(out.loss), losses + cpo_alpha * nll, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(out.metrics["rewards/chosen"]), cr, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(out.metrics["rewards/rejected"]), rr, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("beta", [0.1, 0.25, 1.0])
def test_orpo_matches_trl(beta):
    chosen, rejected, cl, rl = rf_batch(int(beta * 100))
    logps = L.PairLogps(chosen=jnp.asarray(chosen), rejected=jnp.asarray(rejected),
                        chosen_len=jnp.asarray(cl), rejected_len=jnp.asarray(rl))
    out = L.get("orpo")(logps, beta=beta)
    ratio_term, cr, rr = trl.orpo_ratio(chosen / cl, rejected / rl, beta=beta)
    nll = -chosen.sum() / cl.sum()
    np.testing.assert_allclose(np.asarray(out.loss), nll - ratio_term, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(out.metrics["rewards/chosen"]), cr, rtol=RTOL, atol=ATOL)
