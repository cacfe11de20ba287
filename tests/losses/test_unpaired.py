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


# KTO's running and grouped reference points (the ELBO-KTO authors' baselines: train.py's
# ``_baseline_z0`` / ``_update_running_baselines`` and their tests/test_baselines.py rules),
# against numpy: b ← d·b + (1 − d)·mean(r), read before the update, one EMA per label for the
# class-conditional kind, a label absent from the batch keeping its EMA.
RUNNING = ("running_global", "running_class_conditional")


def numpy_emas(batches, decay=0.99):
    """(global EMA, desirable EMA, undesirable EMA) after each batch of (r, label), float64."""
    g = d = u = 0.0
    out = []
    for r, label in batches:
        g = decay * g + (1 - decay) * r.mean()
        d = decay * d + (1 - decay) * r[label].mean() if label.any() else d
        u = decay * u + (1 - decay) * r[~label].mean() if (~label).any() else u
        out.append((g, d, u))
    return out


@pytest.mark.parametrize("kind", RUNNING)
def test_running_reference_point_starts_as_zero_then_follows_the_ema(kind):
    (u1, r1, l1, _), (u2, r2, l2, _) = logps(seed=2), logps(seed=3)
    kto = lambda u, **kw: L.get("kto")(u, beta=0.5, undesirable_weight=1.33, **kw)
    first = jax.jit(lambda u: kto(u, kto_reference_point=kind))(u1)  # state None: every EMA at 0
    np.testing.assert_allclose(first.loss, kto(u1, kto_reference_point="zero").loss, rtol=1e-6)
    second = kto(u2, kto_reference_point=kind, state=first.state)
    want = numpy_emas([(r1, l1), (r2, l2)])
    s1, s2 = first.state, second.state
    if kind == "running_global":
        np.testing.assert_allclose([s1.ema, s2.ema], [w[0] for w in want], rtol=1e-5)
        np.testing.assert_allclose(second.metrics["baseline/ema_global"], want[1][0], rtol=1e-5)
        z0 = np.full(len(r2), want[0][0])
    else:
        np.testing.assert_allclose([[s.ema_desirable, s.ema_undesirable] for s in (s1, s2)],
                                   [w[1:] for w in want], rtol=1e-5)
        assert want[0][1] != pytest.approx(want[0][2])  # the two labels' EMAs differ
        z0 = np.where(l2, want[0][1], want[0][2])
    # the second batch is centered on the EMAs of the first (before its own update): the zero
    # baseline on rewards shifted by those values
    shifted = u2.replace(completion=np.float32(u2.completion - z0))
    np.testing.assert_allclose(second.loss, kto(shifted, kto_reference_point="zero").loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(second.metrics["kl"], z0, rtol=1e-5)


def test_an_absent_label_keeps_its_ema():
    u, r, _, _ = logps(seed=4)
    for present in (True, False):
        label = np.full(len(r), present)
        out = L.get("kto")(u.replace(label=label), kto_reference_point="running_class_conditional")
        moved, kept = (out.state.ema_desirable, out.state.ema_undesirable)[::1 if present else -1]
        np.testing.assert_allclose(moved, 0.01 * r.mean(), rtol=1e-5)
        assert float(kept) == 0.0


@pytest.mark.parametrize("kind", RUNNING + ("batch_mean",))
def test_reference_points_carry_no_gradient(kind):
    """d loss / d log π(y) equals the gradient with z0 held fixed at its value (the zero baseline
    on shifted rewards), so no gradient flows through the EMAs or the (grouped) batch mean."""
    u, r, label, _ = logps(seed=5)
    state = L.KTOBaselineState(ema=np.float32(3.0), ema_desirable=np.float32(-7.0), ema_undesirable=np.float32(11.0))
    kw = dict(kto_reference_point=kind, state=state) if kind in RUNNING else dict(kto_reference_point=kind,
                                                                                kto_centering_group_size=4)
    z0 = np.asarray(L.get("kto")(u, **kw).metrics["kl"])
    z0 = np.broadcast_to(z0, r.shape)
    grad = jax.grad(lambda c: L.get("kto")(u.replace(completion=c), **kw).loss.mean())(u.completion)
    fixed = jax.grad(lambda c: L.get("kto")(u.replace(completion=c - z0), kto_reference_point="zero").loss.mean())(
        u.completion)
    np.testing.assert_allclose(grad, fixed, rtol=1e-5, atol=1e-9)
    assert np.abs(grad).max() > 0


def test_centering_groups_take_the_mean_within_contiguous_groups():
    u, r, _, _ = logps(seed=6, b=12)
    out = L.get("kto")(u, kto_reference_point="batch_mean", kto_centering_group_size=4)
    np.testing.assert_allclose(out.metrics["kl"], np.repeat(r.reshape(3, 4).mean(1), 4), rtol=1e-5)
    whole = L.get("kto")(u, kto_reference_point="batch_mean", kto_centering_group_size=12)
    np.testing.assert_allclose(whole.loss, L.get("kto")(u, kto_reference_point="batch_mean").loss, rtol=1e-6)
    partial = L.get("kto")(u, kto_reference_point="batch_mean", kto_centering_group_size=5)  # groups 5, 5, 2
    np.testing.assert_allclose(partial.metrics["kl"], np.repeat([r[:5].mean(), r[5:10].mean(), r[10:].mean()],
                                                                [5, 5, 2]), rtol=1e-5)
    with pytest.raises(ValueError, match="kto_centering_group_size=4 groups the batch mean"):
        L.get("kto")(u, kto_reference_point="zero", kto_centering_group_size=4)


def test_running_emas_are_those_of_the_global_batch_under_a_mesh():
    """The authors' regression (an EMA gated on rank-local counts): on 8 devices each holding
    rows of one label only, both label EMAs still update, equal to the single-device values, and
    the state comes back replicated (the same value on every device, so on every host)."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from pojax.sharding import make_mesh

    u, r, _, _ = logps(seed=7, b=16)
    label = np.repeat(np.arange(8) % 2 == 0, 2)  # device i holds rows 2i, 2i+1: one label each
    u = u.replace(label=label)
    mesh = make_mesh(data=8)
    rows = NamedSharding(mesh, P(("data", "fsdp")))
    sharded = jax.device_put(u, jax.tree.map(lambda _: rows, u))
    fn = jax.jit(lambda u: L.get("kto")(u, kto_reference_point="running_class_conditional").state)
    state = fn(sharded)
    want = numpy_emas([(r, label)])[0]
    np.testing.assert_allclose([state.ema_desirable, state.ema_undesirable], want[1:], rtol=1e-5)
    for leaf in jax.tree.leaves(state):
        assert leaf.sharding.is_fully_replicated
        assert len({float(s.data) for s in leaf.addressable_shards}) == 1


HOST_SCRIPT = r"""
import json, sys
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from pojax.config import base_config
from pojax.distributed import maybe_initialize
import pojax.losses as L
from pojax.sharding import make_mesh

config = base_config()
d = config.distributed
d.initialize, d.coordinator_address, d.num_processes, d.process_id = True, sys.argv[1], 2, int(sys.argv[2])
maybe_initialize(config)
r, label = (np.asarray(json.loads(a), np.float32) for a in sys.argv[3:5])
label = label.astype(bool)
mesh = make_mesh(data=-1)  # 8 devices: 4 on each process
rows = NamedSharding(mesh, P(("data", "fsdp")))
half = slice(jax.process_index() * 8, jax.process_index() * 8 + 8)  # this host's rows: one label only
put = lambda x: jax.make_array_from_process_local_data(rows, x[half], x.shape)
u = L.UnpairedLogps(completion=put(r), ref_completion=put(np.zeros_like(r)), label=put(label))
state = jax.jit(lambda u: L.get("kto")(u, kto_reference_point="running_class_conditional").state)(u)
print("EMAS", json.dumps([float(np.asarray(x.addressable_shards[0].data)) for x in (state.ema_desirable, state.ema_undesirable)]))
"""


def test_running_emas_are_identical_on_two_hosts_holding_one_label_each(tmp_path):
    """The 2-process version of the test above: host 0 holds only desirable rows, host 1 only
    undesirable ones; both hosts compute both EMAs, equal to numpy's over the global batch."""
    import json
    import subprocess
    import sys

    from tests.train.helpers import cpu_env, free_port

    rng = np.random.default_rng(8)
    r = rng.normal(0.0, 3.0, 16).astype(np.float32)
    label = np.arange(16) < 8
    address = f"127.0.0.1:{free_port()}"
    args = [json.dumps(r.tolist()), json.dumps(label.astype(int).tolist())]
    procs = [subprocess.Popen([sys.executable, "-c", HOST_SCRIPT, address, str(i), *args], env=cpu_env(4), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    emas = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        emas.append(json.loads(next(l for l in out.splitlines() if l.startswith("EMAS "))[5:]))
    want = numpy_emas([(r.astype(np.float64), label)])[0][1:]
    assert emas[0] == emas[1]  # bit-identical on both hosts
    np.testing.assert_allclose(emas[0], want, rtol=1e-5)
    assert 0.0 not in emas[0]
