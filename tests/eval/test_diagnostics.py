"""Preference-data diagnostics (pojax.eval.diagnostics): CHES against a numpy reference built
from the model's own hidden states (arXiv 2410.08847, Definition 2), its behaviour under DPO on
the gym, the flagging rule, and the implicit- vs explicit-reward accuracy report (arXiv
2409.03650) against numpy references and transformers' reward scores."""
import jax
import numpy as np
import pytest
from flax import nnx

from experiments import diagnostics as study
from pojax.data import gym as gym_lib
from pojax.eval import diagnostics as diag
from pojax.models import CausalLM, ModelConfig
from pojax.models.reward import RewardModel

CFG = ModelConfig(vocab_size=23, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)


def ragged_pairs(seed=0, n=5, t=12):
    """Right-padded pairs of different prompt and completion lengths."""
    rng = np.random.default_rng(seed)
    rows = {k: np.zeros((n, t), np.int32) for k in ("chosen_ids", "rejected_ids")}
    rows.update({k: np.zeros((n, t), bool) for k in ("chosen_mask", "rejected_mask")})
    for i in range(n):
        p = rng.integers(1, 5)
        for side in ("chosen", "rejected"):
            c = rng.integers(1, t - p + 1)
            rows[f"{side}_ids"][i, :p + c] = rng.integers(1, CFG.vocab_size, p + c)
            rows[f"{side}_mask"][i, p:p + c] = True
    return rows


@nnx.jit
def _hidden(model, ids):
    return model.hidden_states(ids)


def numpy_ches(model, rows):
    """Definition 2 row by row in numpy: the hidden states at positions p − 1 .. p + |y| − 2
    (those that predict the completion tokens), read from one forward of the padded rows (causal
    attention: right padding does not change them)."""
    out = {"ches": [], "ln_ches": []}
    h = {s: np.asarray(_hidden(model, rows[f"{s}_ids"]), np.float64) for s in ("chosen", "rejected")}
    for i in range(len(rows["chosen_ids"])):
        sums, lens = [], []
        for side in ("chosen", "rejected"):
            pos = np.flatnonzero(rows[f"{side}_mask"][i])
            sums.append(h[side][i, pos[0] - 1:pos[-1]].sum(0))
            lens.append(len(pos))
        (sp, sn), (lp, ln) = sums, lens
        out["ches"].append(sp @ sn - sp @ sp)
        out["ln_ches"].append(sp @ sn / (lp * ln) - sp @ sp / lp ** 2)
    return {k: np.asarray(v) for k, v in out.items()}


def test_ches_matches_numpy_reference_on_ragged_pairs():
    model = CausalLM(CFG, rngs=nnx.Rngs(0))
    rows = ragged_pairs()
    got = diag.ches_dataset(model, rows, batch_size=2)  # 5 rows: the last batch is padded
    want = numpy_ches(model, rows)
    for k in ("ches", "ln_ches"):
        assert got[k].shape == (5,)
        np.testing.assert_allclose(got[k], want[k], rtol=2e-4, atol=1e-3 * np.abs(want[k]).max())
    # the two scores differ on ragged rows (and so does the ranking a filter would use)
    assert not np.allclose(got["ches"], got["ln_ches"])


def test_ches_from_sums_hand_values_and_errors():
    sp, sn = np.array([[1.0, 2.0]]), np.array([[3.0, -1.0]])
    assert float(diag.ches_from_sums(sp, sn)[0]) == pytest.approx(1.0 - 5.0)
    assert float(diag.ches_from_sums(sp, sn, np.array([2.0]), np.array([4.0]))[0]) == pytest.approx(1 / 8 - 5 / 4)
    assert float(diag.ches_from_sums(sp, sp)[0]) == 0.0  # identical responses: zero
    with pytest.raises(ValueError, match="give both completion lengths"):
        diag.ches_from_sums(sp, sn, np.array([2.0]))


def test_flag_displacement_picks_the_top_fraction():
    scores = np.array([0.3, -2.0, 5.0, 1.0, 5.0, -1.0, 0.0, 2.0])
    flags = diag.flag_displacement(scores, fraction=0.25)
    np.testing.assert_array_equal(np.flatnonzero(flags), [2, 4])
    assert diag.flag_displacement(scores, fraction=0.3).sum() == 3  # ceil(2.4)
    assert not diag.flag_displacement(scores, fraction=0.0).any()
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\], got 1.5"):
        diag.flag_displacement(scores, fraction=1.5)
    with pytest.raises(ValueError, match="NaN or inf"):
        diag.flag_displacement([0.0, np.nan])


def test_high_ches_pairs_gain_less_chosen_likelihood_under_dpo():
    """Each gym pair, alone, a few DPO steps on a tiny random model: the higher its CHES, the less
    its chosen log-likelihood rises (the direction of likelihood displacement). Pairs of graded
    similarity (rejected = chosen with its last m tokens redrawn), fixed seeds."""
    gym = gym_lib.Gym()
    model = study.tiny_model(gym.vocab_size, seed=0)
    rows = study.edited_pairs(gym, seed=2, n=48)
    scores = diag.ches_dataset(model, rows, batch_size=48)
    d_chosen, _ = study.per_pair_dpo_change(model, rows, lr=0.05, steps=5)
    rho = study.spearman(scores["ches"], d_chosen)
    assert rho < -0.5, rho  # measured -0.71 .. -0.83 over seeds 0-3 (experiments/diagnostics.py)
    flags = diag.flag_displacement(scores["ches"], fraction=0.25)
    assert d_chosen[flags].mean() < 0.6 * d_chosen[~flags].mean()


def test_preference_accuracy_and_report_against_numpy():
    rng = np.random.default_rng(0)
    ic, ir, ec, er = rng.normal(size=(4, 40))
    ir[:4] = ic[:4]  # ties count ½
    domain = np.array(["in", "out"] * 20)

    def acc(c, r):
        return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(c, r)) / len(c)

    report = diag.generalization_report((ic, ir), (ec, er), domain=domain)
    assert report["implicit_reward_accuracy"] == pytest.approx(acc(ic, ir))
    assert report["explicit_reward_accuracy"] == pytest.approx(acc(ec, er))
    assert report["reward_accuracy_gap"] == pytest.approx(acc(ec, er) - acc(ic, ir))
    for d in ("in", "out"):
        s = domain == d
        assert report[f"implicit_reward_accuracy/{d}"] == pytest.approx(acc(ic[s], ir[s]))
        assert report[f"explicit_reward_accuracy/{d}"] == pytest.approx(acc(ec[s], er[s]))
        assert report[f"num_pairs/{d}"] == 20
    assert diag.preference_accuracy(np.zeros(3), np.zeros(3)) == 0.5
    with pytest.raises(ValueError, match="need two"):
        diag.preference_accuracy(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="domain must be"):
        diag.generalization_report((ic, ir), (ec, er), domain=domain[:3])


def test_implicit_and_explicit_rewards_end_to_end():
    """Tiny random policy, reference and reward model on ragged rows: implicit rewards equal
    β(log π − log π_ref) from per-token log-probs of unpadded rows; reward-model scores equal the
    model read at each row's last completion token; precomputed reference values give the same."""
    policy, reference = CausalLM(CFG, rngs=nnx.Rngs(1)), CausalLM(CFG, rngs=nnx.Rngs(2))
    rm = RewardModel(CFG, rngs=nnx.Rngs(3))
    rows = ragged_pairs(seed=1, n=6)
    beta = 0.2

    @nnx.jit
    def logits(model, ids):
        return model(ids)

    def seq_logp(model, ids, mask):  # [N] from full logits in numpy: Σ over completion tokens
        logp = np.asarray(jax.nn.log_softmax(logits(model, ids)), np.float64)
        picked = np.take_along_axis(logp[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]
        return np.sum(np.where(mask[:, 1:], picked, 0.0), axis=1)

    want, want_rm = {}, {}
    for s in ("chosen", "rejected"):
        ids, mask = rows[f"{s}_ids"], rows[f"{s}_mask"]
        want[s] = beta * (seq_logp(policy, ids, mask) - seq_logp(reference, ids, mask))
        last = np.asarray([np.flatnonzero(m)[-1] for m in mask])
        h = np.asarray(_hidden(rm.model, ids), np.float64)[np.arange(len(ids)), last]
        want_rm[s] = h @ np.asarray(rm.score[...], np.float64)[:, 0]
    ic, ir = diag.implicit_rewards(policy, reference, rows, beta=beta, batch_size=4)
    np.testing.assert_allclose(ic, want["chosen"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ir, want["rejected"], rtol=1e-4, atol=1e-5)
    ec, er = diag.reward_model_rewards(rm, rows, batch_size=4)
    np.testing.assert_allclose(ec, want_rm["chosen"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(er, want_rm["rejected"], rtol=1e-4, atol=1e-5)

    ref_c, ref_r = diag.pair_sequence_logps(reference, rows)
    pre = diag.implicit_rewards(policy, None, dict(rows, ref_chosen=ref_c, ref_rejected=ref_r), beta=beta)
    np.testing.assert_allclose(pre[0], ic, rtol=1e-5, atol=1e-6)
    report = diag.generalization_report((ic, ir), (ec, er))
    assert report["num_pairs"] == 6 and 0.0 <= report["implicit_reward_accuracy"] <= 1.0

    with pytest.raises(ValueError, match="no reference model and no precomputed"):
        diag.implicit_rewards(policy, None, rows, beta=beta)
    with pytest.raises(ValueError, match="beta must be > 0"):
        diag.implicit_rewards(policy, reference, rows, beta=0.0)
    with pytest.raises(ValueError, match="missing rejected_mask"):
        diag.ches_dataset(policy, {k: v for k, v in rows.items() if k != "rejected_mask"})
    big = dict(rows, chosen_ids=rows["chosen_ids"] + CFG.vocab_size)
    with pytest.raises(ValueError, match="tokenize the rows with the reward model's tokenizer"):
        diag.reward_model_rewards(rm, big)

