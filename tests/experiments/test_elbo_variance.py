"""experiments.elbo_variance: files and columns, the statistics against numpy on the raw values, the 1/K
decay of iid draws within its sampling error, shared ≪ independent draws, r̂ = 0 exactly when policy =
reference, the draws, ELBOs and gradient against pojax.objectives.diffusion, and the flag errors."""
import csv
import io
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from flax import nnx

from experiments import elbo_variance as ev
from pojax.likelihood import diffusion as dl
from pojax.objectives import diffusion as diff_obj

KS = (1, 4)
ESTIMATORS = ("length", "length_stratified")


@pytest.fixture(scope="module")
def tool(tmp_path_factory):
    """One in-process run of the tool at a small setting (64 repeats for the variance checks)."""
    workdir = tmp_path_factory.mktemp("elbo_variance")
    out = ev.elbo_variance(str(workdir), n_mc=KS, estimators=ESTIMATORS, repeats=64, batch_size=8, sft_steps=10,
                           grads=False, stream=io.StringIO())  # gradients: test_matches_objective_...
    return workdir, out


@pytest.fixture(scope="module")
def small():
    """A random tiny policy, its perturbed reference, a 4-row KTO batch and the K = 2 setting function."""
    pol, ref, mask_id, _ = ev.build_models(checkpoint="", reference="", ref_noise=0.05, sft_steps=0, seed=1,
                                           loss="kto")
    batch = ev.gym_batch("kto", 4, 1)
    fn = ev.make_setting_fn(pol, ref, batch, loss="kto", hparams={"beta": 0.1}, n_mc=2, mask_id=mask_id)
    keys = jax.random.split(jax.random.key(5), 2)
    ref_keys = jax.random.split(jax.random.key(6), 2)
    return pol, ref, mask_id, batch, fn, keys, ref_keys


# ------------------------------------------------------------------------------ files


def test_files_and_columns(tool):
    workdir, _ = tool
    with open(workdir / "elbo_variance.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(ev.COLUMNS)
    assert [(r["estimator"], int(r["n_mc"]), r["draws"]) for r in rows] == [
        (e, k, d) for e in ESTIMATORS for k in KS for d in ("shared", "independent")]
    assert all(r["grad_norm_mean"] == r["grad_cos"] == "" for r in rows)  # grads=False
    md = (workdir / "elbo_variance.md").read_text()
    assert "| " + " | ".join(ev.COLUMNS) + " |" in md and "## Headline" in md
    summary = json.loads((workdir / "elbo_variance.json").read_text())
    assert set(summary["headline"]["estimators"]) == set(ESTIMATORS) and summary["headline"]["ratio_k"] == 4
    assert len(summary["rows"]) == len(rows)
    raw = np.load(workdir / "elbo_values.npz")
    assert raw["length/K4/elbo"].shape == (64, 8)  # [R, N]: 8 scored rows (KTO's kl rows are not scored)
    for name in ("elbo_var_vs_k.png", "reward_var_vs_k.png", "loss_grad_vs_k.png"):
        assert (workdir / "plots" / name).stat().st_size > 1000


# ------------------------------------------------------------------------------ statistics


def test_statistics_match_numpy(tool):
    _, out = tool
    raw = out["raw"]
    for r in out["rows"]:
        key = f"{r['estimator']}/K{r['n_mc']}"
        b = raw[f"{key}/elbo"].astype(np.float64)
        ref = raw[f"{key}/ref_{r['draws']}"].astype(np.float64)
        loss = raw[f"{key}/loss_{r['draws']}"].astype(np.float64)
        var = np.mean([np.var(b[:, n], ddof=1) for n in range(b.shape[1])])
        assert r["elbo_var"] == pytest.approx(var, rel=1e-9)
        assert r["reward_var"] == pytest.approx(np.mean(np.var(b - ref, axis=0, ddof=1)), rel=1e-9)
        assert r["loss_std"] == pytest.approx(np.std(loss, ddof=1), rel=1e-9)
        assert r["elbo_var"] > 0


def test_grad_stats_hand_values():
    g = np.array([[3.0, 4.0], [3.0, -4.0], [6.0, 0.0]])  # leave-one-out means: [4.5, -2], [4.5, 2], [3, 0]
    s = ev.grad_stats(g)
    assert s["grad_norm_mean"] == pytest.approx(16 / 3) and s["grad_norm_std"] == pytest.approx(np.std([5, 5, 6], ddof=1))
    cos = [(13.5 - 8) / (5 * math.hypot(4.5, 2)), (13.5 - 8) / (5 * math.hypot(4.5, 2)), 1.0]
    assert s["grad_cos"] == pytest.approx(np.mean(cos))


def _var_and_se(x_RN):
    """The mean over rows of the per-row variance, and its standard error (rows independent)."""
    d = (x_RN - x_RN.mean(axis=0)) ** 2
    r, n = x_RN.shape
    var = d.mean() * r / (r - 1)
    se = math.sqrt(np.sum(np.var(d, axis=0, ddof=1) / r)) / n * r / (r - 1)
    return var, se


def test_iid_draws_decay_as_one_over_k(tool):
    """Var(B, K=1) / Var(B, K=4) = 4 for iid draws ("length"), within 4 standard errors of the log ratio."""
    _, out = tool
    v1, se1 = _var_and_se(out["raw"]["length/K1/elbo"].astype(np.float64))
    v4, se4 = _var_and_se(out["raw"]["length/K4/elbo"].astype(np.float64))
    se_log = math.hypot(se1 / v1, se4 / v4)
    assert se_log < 0.3  # enough repeats for the check to mean something
    assert abs(math.log(v1 / v4) - math.log(4)) < 4 * se_log
    slope = out["headline"]["estimators"]["length"]["elbo_var_slope"]
    assert slope == pytest.approx(math.log(v4 / v1) / math.log(4), rel=1e-6)
    assert -1.3 < slope < -0.7


def test_shared_draws_cancel_noise(tool):
    _, out = tool
    for e, h in out["headline"]["estimators"].items():
        assert h["reward_var_ratio_shared_over_independent"] < 0.1, e


# ------------------------------------------------------------------------------ against the objective


def test_equal_reference_gives_zero_reward_with_shared_draws(small):
    pol, _, _, _, fn, keys, ref_keys = small
    params = nnx.state(pol, nnx.Param)
    for i in range(len(dl.ESTIMATORS)):
        out = jax.device_get(fn(params, params, keys, ref_keys, jnp.int32(i)))
        assert np.array_equal(out["elbo"], out["ref_shared"])  # r̂ = 0 exactly
        assert not np.allclose(out["elbo"], out["ref_independent"])


def test_matches_objective_elbos_and_gradient(small):
    """B_θ, B_ref (shared and independent) equal unpaired_elbos' with the same keys, and the shared-draw
    gradient equals the gradient of diffusion_preference_loss (what training differentiates)."""
    pol, ref, mask_id, batch, fn, keys, ref_keys = small
    est = "length_stratified"
    out = jax.device_get(fn(nnx.state(pol, nnx.Param), nnx.state(ref, nnx.Param), keys, ref_keys,
                            jnp.int32(dl.ESTIMATORS.index(est))))
    kw = dict(n_mc=2, mask_id=mask_id, estimator=est)
    u = diff_obj.unpaired_elbos(pol, ref, batch, keys[1], **kw)
    u_ind = diff_obj.unpaired_elbos(pol, ref, batch, keys[1], ref_key=ref_keys[1], **kw)
    np.testing.assert_allclose(out["elbo"][1], u.completion, rtol=1e-5)
    np.testing.assert_allclose(out["ref_shared"][1], u.ref_completion, rtol=1e-5)
    np.testing.assert_allclose(out["ref_independent"][1], u_ind.ref_completion, rtol=1e-5)

    def loss(model):
        return diff_obj.diffusion_preference_loss(model, ref, batch, loss_name="kto", hparams={"beta": 0.1},
                                                  key=keys[1], **kw)[0]

    value, grads = nnx.value_and_grad(loss)(pol)
    assert out["loss_shared"][1] == pytest.approx(float(value), rel=1e-5)
    flat = jax.flatten_util.ravel_pytree(nnx.state(grads, nnx.Param))[0]
    np.testing.assert_allclose(out["grad_shared"][1], flat, rtol=1e-4, atol=1e-7 * float(jnp.max(jnp.abs(flat))))
    assert float(jnp.linalg.norm(flat)) > 0


# ------------------------------------------------------------------------------ errors


OK = dict(n_mc=[1, 2], estimators=["length"], loss="kto", repeats=4, batch_size=2, ref_noise=0.0, sft_steps=0,
          checkpoint="", reference="")


@pytest.mark.parametrize("bad, flag", [
    ({"n_mc": [1, 0]}, "--n_mc"), ({"n_mc": []}, "--n_mc"), ({"n_mc": [2, 2]}, "--n_mc"),
    ({"estimators": ["length", "bogus"]}, "--estimators"), ({"loss": "nope"}, "--loss"), ({"loss": "lipo"}, "--loss"),
    ({"loss": "tdpo"}, "--loss"), ({"repeats": 1}, "--repeats"), ({"batch_size": 0}, "--batch_size"),
    ({"ref_noise": -0.1}, "--ref_noise"), ({"reference": "/x"}, "--reference"),
])
def test_bad_options_name_the_flag(bad, flag):
    with pytest.raises(ValueError, match=flag):
        ev.check_options(**{**OK, **bad})
    with pytest.raises(ValueError, match=flag):  # before anything is built or written
        ev.elbo_variance("/nonexistent/never_written", **{k: v for k, v in {**OK, **bad}.items()
                                                             if k in ("n_mc", "estimators", "loss", "repeats",
                                                                      "batch_size", "ref_noise", "reference")})


@pytest.mark.parametrize("argv, flag", [(["--n_mc=1,0"], "--n_mc"), (["--n_mc=1,x"], "--n_mc"),
                                        (["--estimators=tick"], "--estimators"), (["--loss=nope"], "--loss"),
                                        ([], "--workdir")])
def test_main_exits_2_with_one_line(argv, flag, tmp_path, capsys):
    fv = flags.FlagValues()
    f = ev.define_flags(fv)
    workdir = tmp_path / "w"
    fv(["elbo_variance", *([f"--workdir={workdir}"] if argv else []), *argv])
    assert ev.main([], f) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0]
    assert not workdir.exists()
