"""Properties of the losses that hold by construction (independent of any implementation)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pojax.losses as L
from tests.losses.helpers import REF_FREE, UNPAIRED, generic_names, inputs_for, pair, random_pair

LOG2 = math.log(2.0)
PAIRWISE_REF = [n for n in generic_names() if n not in REF_FREE + UNPAIRED + ("sft",)]


def at_reference(b=5, tokens=False):
    c = jnp.linspace(-30.0, -3.0, b)
    r = jnp.linspace(-4.0, -40.0, b)
    return pair(c, r, c, r, jnp.arange(1, b + 1), jnp.arange(b, 0, -1), tokens=tokens)


@pytest.mark.parametrize("name", PAIRWISE_REF)
def test_rewards_are_zero_at_policy_equal_reference(name):
    out = L.get(name)(at_reference())
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        np.testing.assert_array_equal(out.metrics[key], 0.0)


@pytest.mark.parametrize(
    ("name", "hp", "expected"),
    [
        ("sigmoid", {}, LOG2), ("dpo", {"beta": 3.0}, LOG2), ("sigmoid", {"label_smoothing": 0.3}, LOG2),
        ("hinge", {}, 1.0), ("robust", {"label_smoothing": 0.2}, LOG2), ("nca_pair", {}, 2 * LOG2),
        ("bco_pair", {}, 2 * LOG2), ("apo_zero", {}, 1.0), ("apo_down", {}, 1.0),
        ("discopop", {}, 0.5 * LOG2 + 0.5), ("aot", {}, LOG2), ("aot_unpaired", {}, LOG2),
        ("sigmoid_norm", {}, LOG2), ("ipo", {"beta": 0.5}, 1.0), ("sppo_hard", {"beta": 0.5}, 2.0),
        # EXO at Δ = 0: ½(log ½ - log(1-ε)) + ½(log ½ - log ε)
        ("exo_pair", {"label_smoothing": 0.1}, 0.5 * (math.log(0.5) - math.log(0.9)) + 0.5 * (math.log(0.5) - math.log(0.1))),
        ("sigmoid", {"f_divergence_type": "js_divergence"}, LOG2),
        ("sigmoid", {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3}, LOG2),
    ],
)
def test_loss_at_policy_equal_reference(name, hp, expected):
    np.testing.assert_allclose(L.get(name)(at_reference(), **hp).loss, expected, rtol=1e-6)


def test_kto_at_reference_is_half_the_weight():
    u = inputs_for("kto")
    u = u.replace(ref_completion=u.completion, ref_kl=u.kl)
    out = L.get("kto")(u, desirable_weight=2.0, undesirable_weight=0.5)
    np.testing.assert_allclose(out.loss, np.where(u.label, 1.0, 0.25), rtol=1e-6)


def test_cdpo_is_a_mixture_of_dpo_on_both_labels():
    logps = random_pair(1)
    flipped = logps.replace(chosen=logps.rejected, rejected=logps.chosen, ref_chosen=logps.ref_rejected, ref_rejected=logps.ref_chosen)
    dpo = L.get("sigmoid")
    mix = 0.8 * dpo(logps, beta=0.3).loss + 0.2 * dpo(flipped, beta=0.3).loss
    np.testing.assert_allclose(dpo(logps, beta=0.3, label_smoothing=0.2).loss, mix, rtol=1e-6)


def test_modifiers_at_their_neutral_values_change_nothing():
    logps = random_pair(2, tokens=True)
    base = L.get("sigmoid")(logps, beta=0.2).loss
    np.testing.assert_allclose(L.get("sigmoid")(logps, beta=0.2, ld_alpha=1.0).loss, base, rtol=1e-6)
    np.testing.assert_allclose(
        L.get("sigmoid")(logps, beta=0.2, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=1.0).loss, base, rtol=1e-6)
    np.testing.assert_allclose(L.get("sigmoid")(logps, beta=0.2, rpo_alpha=0.0).loss, base, rtol=1e-6)
    np.testing.assert_allclose(L.get(["sigmoid"])(logps, beta=0.2).loss, base, rtol=1e-6)


def test_alpha_divergence_tends_to_reverse_kl():
    logps = random_pair(3)
    base = L.get("sigmoid")(logps).loss
    near = L.get("sigmoid")(logps, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=1.0 + 1e-3).loss
    np.testing.assert_allclose(near, base, rtol=5e-3)


def test_ld_alpha_zero_drops_the_tail_beyond_the_shared_length():
    # Hand case: chosen has 2 tokens, rejected 4; with α = 0 only the first 2 of each count.
    mask_c = jnp.array([[True, True, False, False]])
    mask_r = jnp.array([[True, True, True, True]])
    pc, pr = jnp.array([[-1.0, -2.0, 0.0, 0.0]]), jnp.array([[-0.5, -0.5, -7.0, -9.0]])
    tok = lambda p, m: L.TokenLogps(policy=p, ref=jnp.zeros_like(p), mask=m)
    logps = L.PairLogps(chosen=jnp.array([-3.0]), rejected=jnp.array([-17.0]), ref_chosen=jnp.zeros(1), ref_rejected=jnp.zeros(1),
                        chosen_len=jnp.array([2.0]), rejected_len=jnp.array([4.0]),
                        chosen_tokens=tok(pc, mask_c), rejected_tokens=tok(pr, mask_r))
    out = L.get("sigmoid")(logps, beta=1.0, ld_alpha=0.0)
    np.testing.assert_allclose(out.loss, -jax.nn.log_sigmoid(-3.0 - (-1.0)), rtol=1e-6)
    out = L.get("sigmoid")(logps, beta=1.0, ld_alpha=0.5)
    np.testing.assert_allclose(out.loss, -jax.nn.log_sigmoid(-3.0 - (-1.0 - 0.5 * 16.0)), rtol=1e-6)


def test_masked_token_positions_are_ignored():
    logps = random_pair(4, tokens=True)
    garbage = lambda t: t.replace(policy=jnp.where(t.mask, t.policy, 1e6), ref=jnp.where(t.mask, t.ref, -1e6),
                                  extra={"log_sum_sq_probs": jnp.where(t.mask, t.extra["log_sum_sq_probs"], 3e5)})
    dirty = logps.replace(chosen_tokens=garbage(logps.chosen_tokens), rejected_tokens=garbage(logps.rejected_tokens))
    for hp in ({"ld_alpha": 0.4}, {"use_weighting": True}, {"rpo_alpha": 1.0}):
        np.testing.assert_allclose(L.get("sigmoid")(dirty, **hp).loss, L.get("sigmoid")(logps, **hp).loss, rtol=1e-6)


def test_wpo_weight_is_one_when_the_policy_is_sampling_aligned():
    logps = random_pair(5, tokens=True)
    same = lambda t: t.replace(extra={"log_sum_sq_probs": t.policy})
    aligned = logps.replace(chosen_tokens=same(logps.chosen_tokens), rejected_tokens=same(logps.rejected_tokens))
    np.testing.assert_allclose(L.get("ipo")(aligned, use_weighting=True).loss, L.get("ipo")(aligned).loss, rtol=1e-6)


def test_aot_sorts_the_batch():
    logps = random_pair(6)
    perm = jnp.array([3, 1, 7, 0, 2, 6, 5, 4])
    shuffled = jax.tree.map(lambda x: x[perm], logps)
    np.testing.assert_allclose(L.get("aot")(shuffled).loss, L.get("aot")(logps).loss, rtol=1e-6)


def test_simpo_gamma_shifts_the_margin():
    # SimPO with γ equals a β-scaled logistic of the average-log-prob margin minus γ (Eq. 6).
    logps = random_pair(7)
    avg = logps.chosen / logps.chosen_len - logps.rejected / logps.rejected_len
    np.testing.assert_allclose(L.get("simpo")(logps, beta=2.0, simpo_gamma=0.8).loss,
                               -jax.nn.log_sigmoid(2.0 * avg - 0.8), rtol=1e-5)
