"""Every pairwise / unpaired loss on diffusion ELBOs (pojax.objectives.diffusion): policy and
reference share their per-example Monte Carlo draws exactly; ELBO-KTO's reference points; the
analytic gradient; sharded == single device; precomputed reference == frozen copy; errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pojax.losses as L
from pojax import sharding
from pojax.likelihood import diffusion as dl
from pojax.models import LLaDA, ModelConfig
from pojax.objectives import diffusion as D
from pojax.objectives import initial_loss_state
from tests.losses.helpers import generic_names

V, MASK, PAD, T, B, M = 32, 31, 0, 10, 4, 2
CFG = ModelConfig(model_type="llada", vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, mask_token_id=MASK)
KW = dict(n_mc=M, mask_id=MASK, estimator="length_stratified", chunk_size=T)


def tiny(seed=0, noise=0.0, scale=3.0):
    """A tiny random LLaDA with its parameters scaled by ``scale`` (peaked predictions, so the
    ELBO has Monte Carlo noise), each perturbed by ``noise`` relative Gaussian noise."""
    g, p, rest = nnx.split(LLaDA(CFG, rngs=nnx.Rngs(seed)), nnx.Param, ...)
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    leaves = [scale * x * (1 + noise * jax.random.normal(k, x.shape)) for x, k in zip(leaves, keys)]
    return nnx.merge(g, jax.tree.unflatten(tree, leaves), rest)


def rows(rng, comp_lens, prompt_len=3):
    """[B, T] ids (prompt, completion, PAD padding) and the completion mask."""
    ids = rng.integers(1, V - 1, (len(comp_lens), T)).astype(np.int32)
    mask = np.zeros((len(comp_lens), T), bool)
    for b, n in enumerate(comp_lens):
        mask[b, prompt_len:prompt_len + n] = True
        ids[b, prompt_len + n:] = PAD
    return jnp.asarray(ids), jnp.asarray(mask)


def paired(seed=0):
    rng = np.random.default_rng(seed)
    c, cm = rows(rng, [2, 5, 4, 7])
    r, rm = rows(rng, [3, 1, 6, 4])
    return {"chosen_ids": c, "rejected_ids": r, "chosen_mask": cm, "rejected_mask": rm,
            "example_id": jnp.asarray([11, 3, 7, 20], jnp.int32)}


def unpaired(seed=0, label=(True, False, True, False)):
    rng = np.random.default_rng(seed)
    x, xm = rows(rng, [2, 5, 4, 7])
    k, km = rows(rng, [7, 2, 5, 4])
    return {"input_ids": x, "completion_mask": xm, "label": jnp.asarray(label), "kl_ids": k, "kl_mask": km,
            "example_id": jnp.asarray([11, 3, 7, 20], jnp.int32)}


@pytest.fixture(scope="module")
def policy():
    return tiny(0)


@pytest.fixture(scope="module")
def reference():
    return tiny(0, noise=0.02)  # a reference some updates away from the policy (2% relative)


KEY = jax.random.key(42)
REF_KEY = jax.random.key(43)


def _split(m):
    return nnx.split(m, nnx.Param, ...)


# ------------------------------------------------------------------- draws


def test_draws_depend_on_the_example_not_its_batch_position():
    _, mask = rows(np.random.default_rng(0), [3, 5, 2])
    key, ids, perm = jax.random.key(7), jnp.asarray([4, 9, 1]), jnp.asarray([2, 0, 1])

    @jax.jit
    def run(key):
        draws = lambda **kw: D.example_draws(key, kw.pop("ids", ids), kw.pop("mask", mask), n_mc=3, **kw)
        return (draws(), draws(ids=ids[perm], mask=mask[perm]), draws(step=1), draws(step=2),
                draws(role=D.ROLE_REJECTED), D.example_draws(7, ids, mask, n_mc=3))

    a, b, s1, s2, rejected, from_seed = run(key)
    np.testing.assert_array_equal(b.mask, a.mask[perm])  # per example, not per batch position
    np.testing.assert_array_equal(b.weight, a.weight[perm])
    assert not (a.mask & ~mask[:, None]).any() and (a.mask.sum(-1) > 0).all()
    assert (s1.mask != a.mask).any() and (s1.mask != s2.mask).any()  # fresh per step when asked
    assert (rejected.mask != a.mask).any()
    np.testing.assert_array_equal(from_seed.mask, a.mask)  # an int seed is jax.random.key(seed)


# ------------------------------------------------------------------- ELBO-KTO at policy = reference


def test_shared_draws_give_zero_reward_and_half_weight(policy):
    batch = unpaired()
    lam = np.where(np.asarray(batch["label"]), 2.0, 0.5)

    @jax.jit
    def run(batch):
        out = {"shared": D.unpaired_elbos(policy, policy, batch, KEY, **KW),
               "independent": D.unpaired_elbos(policy, policy, batch, KEY, ref_key=REF_KEY, **KW)}
        for z0 in ("zero", "batch_mean"):
            hp = dict(beta=0.1, desirable_weight=2.0, undesirable_weight=0.5, kto_reference_point=z0)
            out[z0] = D.diffusion_preference_loss(policy, policy, batch, loss_name="kto", hparams=hp, key=KEY, **KW)
        return out

    out = run(batch)
    u, ind = out["shared"], out["independent"]
    np.testing.assert_array_equal(u.completion - u.ref_completion, 0.0)  # exactly
    for z0 in ("zero", "batch_mean"):
        hp = dict(beta=0.1, desirable_weight=2.0, undesirable_weight=0.5, kto_reference_point=z0)
        np.testing.assert_array_equal(L.get("kto")(u, **hp).loss, lam / 2)
        loss, metrics, _ = out[z0]
        np.testing.assert_allclose(loss, lam.mean() / 2, rtol=1e-6)
        assert metrics["kl"] == 0.0 and metrics["abs_beta_s/frac>6"] == 0.0 and metrics["abs_beta_s/frac>8"] == 0.0
        # independent draws for the reference: the noise no longer cancels
        assert np.abs(L.get("kto")(ind, **hp).loss - lam / 2).max() > 1e-3
    assert np.abs(ind.completion - ind.ref_completion).max() > 0.1


N_VAR = 32


def test_variance_of_reward_shared_vs_independent(policy, reference):
    """Var over draws of r̂ = B_θ - B_ref: shared draws cancel most of the Monte Carlo noise."""
    batch = unpaired()

    def r_hat(key, ref_key):
        u = D.unpaired_elbos(policy, reference, batch, key, ref_key=ref_key, **KW)
        return u.completion - u.ref_completion

    keys = jax.random.split(jax.random.key(0), N_VAR)
    shared, indep = jax.jit(jax.vmap(r_hat))(jnp.stack([keys, keys]).reshape(-1), jnp.concatenate(
        [keys, jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)])).reshape(2, N_VAR, B)
    ratio = float(shared.var(0).sum() / indep.var(0).sum())
    print(f"Var(B_θ - B_ref) shared / independent = {ratio:.3g} (n_mc={M}, {N_VAR} draws, B={B})")
    assert ratio < 0.2


N_SE, K_SE = 32, 64


def test_half_budget_stderr_matches_the_spread_over_full_budget_draws(policy, reference):
    """eval_loss_mc_stderr's estimate, sqrt(Σ_b (a_b − c_b)² / 4) / N from ONE pair of half
    budgets, against the empirical std of the full-budget batch-mean loss over K_SE global draw
    keys (measured over 20 estimate keys: mean ratio 0.93–1.09 for n_mc 2, 4, 8, β 0.1 and 1,
    stratified or not; single estimates 0.7–1.5×)."""
    rng = np.random.default_rng(1)
    lens = rng.integers(1, 7, (2, N_SE))
    c, cm = rows(rng, list(lens[0]))
    r, rm = rows(rng, list(lens[1]))
    batch = {"chosen_ids": c, "rejected_ids": r, "chosen_mask": cm, "rejected_mask": rm,
             "example_id": jnp.arange(N_SE, dtype=jnp.int32)}
    kw = dict(loss_name="sigmoid", hparams={"beta": 1.0}, mask_id=MASK, n_mc=4, estimator="length_stratified",
              chunk_size=T)

    @jax.jit
    def run(keys):
        full = jax.vmap(lambda k: D.diffusion_preference_loss(policy, reference, batch, key=k, **kw)[0])(keys)
        a, c = D.half_budget_losses(policy, reference, batch, key=KEY, **kw)
        same = D.half_budget_losses(policy, policy, batch, key=KEY, **kw)
        return full, a, c, same

    full, a, c, same = run(jax.random.split(jax.random.key(7), K_SE))
    empirical = float(np.std(np.asarray(full), ddof=1))
    estimate = D.mc_stderr(float(jnp.sum(jnp.square(a - c))), N_SE)
    print(f"MC stderr of the mean loss: half-budget estimate {estimate:.4g}, empirical {empirical:.4g} "
          f"({K_SE} full-budget keys), ratio {estimate / empirical:.3f}")
    assert empirical > 1e-4 and 0.5 < estimate / empirical < 2.0
    # policy = reference: shared draws within each half cancel exactly, every half says log 2
    np.testing.assert_array_equal(same[0], same[1])
    assert D.mc_stderr(float(jnp.sum(jnp.square(same[0] - same[1]))), N_SE) == 0.0


def test_half_budget_needs_an_even_n_mc(policy):
    for n_mc in (1, 3):
        with pytest.raises(ValueError, match=f"the half-budget standard error needs an even n_mc >= 2, got {n_mc}"):
            D.half_budget_losses(policy, policy, paired(), loss_name="sigmoid", hparams={}, key=KEY, mask_id=MASK,
                                 n_mc=n_mc)


# ------------------------------------------------------------------- gradients


def test_gradient_all_desirable_is_analytic_and_misses_the_reference(policy, reference):
    """−β σ′(s) ∇B_θ / B per row, z0 and the reference without gradient."""
    beta, batch = 0.5, unpaired(label=(True,) * B)
    g, p, rest = _split(policy)
    gr, pr, rest_r = _split(reference)

    def loss(p, pr, z0):
        return D.diffusion_preference_loss(nnx.merge(g, p, rest), nnx.merge(gr, pr, rest_r), batch, loss_name="kto",
                                           key=KEY, hparams=dict(beta=beta, kto_reference_point=z0), **KW)[0]

    def weighted_elbo(p, weight_B):  # Σ_b w_b B_θ,b with the same draws
        return jnp.sum(weight_B * D.unpaired_elbos(nnx.merge(g, p, rest), None, batch, KEY, **KW).completion)

    @jax.jit
    def run(p, pr):
        u = D.unpaired_elbos(policy, reference, batch, KEY, **KW)
        r = u.completion - u.ref_completion
        out = {}
        for z0, shift in (("zero", 0.0), ("batch_mean", jnp.mean(r))):
            s = beta * (r - shift)
            w = -beta * jax.nn.sigmoid(s) * (1 - jax.nn.sigmoid(s)) / B
            out[z0] = jax.grad(loss, argnums=(0, 1))(p, pr, z0), jax.grad(weighted_elbo)(p, w)
        return out

    for (got, got_ref), want in run(p, pr).values():
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(got)) > 1e-4
        for leaf in jax.tree.leaves(got_ref):
            np.testing.assert_array_equal(leaf, 0.0)


# ------------------------------------------------------------------- any loss × diffusion


ANY_LOSS = generic_names()  # every pairwise / unpaired loss without extra inputs


@pytest.fixture(scope="module")
def jacobians(policy, reference):
    """Per kind: (the ELBO structs, d policy ELBOs / d params [R, ...]); a loss's gradient is then
    exactly Σ_r ∂L/∂B_r ∇B_r, without compiling one model gradient per loss."""
    g, p, rest = _split(policy)

    def pair_fn(p, ref):
        return D.pair_elbos(nnx.merge(g, p, rest), ref, paired(), KEY, **KW)

    def unpaired_fn(p, ref):
        return D.unpaired_elbos(nnx.merge(g, p, rest), ref, unpaired(), KEY, **KW)

    @jax.jit
    def run(p):
        pl, ul = pair_fn(p, reference), unpaired_fn(p, reference)
        jac_pair = jax.jacrev(lambda p: jnp.concatenate([(x := pair_fn(p, None)).chosen, x.rejected]))(p)
        jac_unp = jax.jacrev(lambda p: unpaired_fn(p, None).completion)(p)
        at_ref = D.pair_elbos(policy, policy, paired(), KEY, **KW)
        return pl, ul, jac_pair, jac_unp, at_ref

    return run(p)


@pytest.mark.parametrize("name", ANY_LOSS)
def test_any_loss_runs_on_diffusion_elbos(name, jacobians):
    pl, ul, jac_pair, jac_unp, at_ref = jacobians
    ref_free = not L.needs_reference(name)
    state = initial_loss_state(name)
    extra = {} if state is None else {"state": state}
    if L.input_kind(name) == "unpaired":
        logps, jac = ul, jac_unp
        if ref_free:
            logps = logps.replace(ref_completion=None, ref_kl=None)
        f = lambda c: jnp.mean(L.get(name)(logps.replace(completion=c), **extra).loss)
        loss, cot = jax.value_and_grad(f)(logps.completion)
    else:
        logps, jac = pl, jac_pair
        if ref_free:
            logps = logps.replace(ref_chosen=None, ref_rejected=None)
        f = lambda c, r: jnp.mean(L.get(name)(logps.replace(chosen=c, rejected=r), **extra).loss)
        loss, (dc, dr) = jax.value_and_grad(f, argnums=(0, 1))(logps.chosen, logps.rejected)
        cot = jnp.concatenate([dc, dr])
    grads = jax.tree.map(lambda j: jnp.tensordot(cot, j, axes=1), jac)
    assert np.isfinite(float(loss))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(grads))
    assert sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(grads)) > 0
    if name == "sigmoid":  # DPO at policy = reference with shared draws: exactly log 2
        np.testing.assert_allclose(jnp.mean(L.get(name)(at_ref).loss), np.log(2), rtol=1e-6)


def test_objective_threads_loss_state(policy, reference):
    """diffusion_preference_loss end to end with a stateful loss (BCO's δ) and a paired one."""

    @jax.jit
    def run(state):
        bco = D.diffusion_preference_loss(policy, reference, unpaired(), loss_name="bco", hparams={}, key=KEY,
                                          state=state, **KW)
        dpo = D.diffusion_preference_loss(policy, policy, paired(), loss_name="sigmoid", hparams={"beta": 0.1},
                                          key=KEY, **KW)
        return bco, dpo

    (loss, metrics, new), (dpo, dpo_metrics, _) = run(initial_loss_state("bco"))
    assert np.isfinite(loss) and float(new.count) == B and metrics["elbo/n_mc"] == M
    np.testing.assert_allclose(dpo, np.log(2), rtol=1e-6)
    assert dpo_metrics["rewards/margins"] == 0.0


def test_kto_kl_moves_with_the_policy_and_is_clamped_at_zero(policy, reference):
    """ELBO-KTO's KL term: 0 exactly at policy = reference (shared draws); with a policy that
    differs, kl/unclamped is the batch mean of the KL rows' policy − reference ELBOs, computed
    here from those rows' own draws (role ROLE_KL) outside the fused objective, and kl (z0) is
    max(0, that). Swapping the models negates the estimate, so exactly one order has kl > 0:
    neither ELBO draws nor the stop-gradient nor the clamp make it identically 0."""
    batch = unpaired()
    hp = dict(beta=0.1, kto_reference_point="kl")

    @jax.jit
    def run(batch):
        kto = lambda pol, ref: D.diffusion_preference_loss(pol, ref, batch, loss_name="kto", hparams=hp, key=KEY,
                                                           **KW)[1]
        draws = D.example_draws(KEY, batch["example_id"], batch["kl_mask"], n_mc=M, role=D.ROLE_KL)
        elbo = lambda m: jnp.mean(dl.elbo_per_draw(m, batch["kl_ids"], draws, mask_id=MASK, chunk_size=T), -1)
        return kto(policy, policy), kto(policy, reference), kto(reference, policy), elbo(policy), elbo(reference)

    same, moved, swapped, pol_kl, ref_kl = run(batch)
    assert same["kl"] == 0.0 and same["kl/unclamped"] == 0.0
    want = np.mean(np.asarray(pol_kl, np.float64) - np.asarray(ref_kl, np.float64))
    assert abs(want) > 1e-3
    tol = dict(rtol=1e-4, atol=2e-5)  # float32 ELBOs of about -30 nats, differences of about 5e-3
    np.testing.assert_allclose(moved["kl/unclamped"], want, **tol)
    np.testing.assert_allclose(swapped["kl/unclamped"], -want, **tol)
    np.testing.assert_allclose(moved["kl"], max(want, 0.0), **tol)
    np.testing.assert_allclose(swapped["kl"], max(-want, 0.0), **tol)
    assert max(moved["kl"], swapped["kl"]) > 1e-3


# ------------------------------------------------------------------- sharded, precomputed


def test_sharded_kto_equals_single_device(policy, reference):
    assert jax.device_count() == 8
    batch = unpaired()
    hp = dict(beta=0.5, kto_reference_point="batch_mean")

    def step(pol, ref, batch):
        g, p, rest = _split(pol)

        def f(p):
            loss, metrics, _ = D.diffusion_preference_loss(nnx.merge(g, p, rest), ref, batch, loss_name="kto",
                                                           hparams=hp, key=KEY, **KW)
            return loss, metrics

        (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(p)
        return loss, metrics["kl"], grads

    with jax.default_matmul_precision("highest"):
        want = jax.jit(step)(policy, reference, batch)
        mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
        pol, ref = sharding.shard_module(policy, mesh), sharding.shard_module(reference, mesh)
        with sharding.use_mesh(mesh):
            rows_ = sharding.logical_to_sharding(("batch", "length"), mesh)
            vec = sharding.logical_to_sharding(("batch",), mesh)
            sb = {k: jax.device_put(v, rows_ if v.ndim == 2 else vec) for k, v in batch.items()}
            got = jax.jit(step)(pol, ref, sb)
    assert len(sb["input_ids"].sharding.device_set) > 1
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)  # the global-batch z0
    for a, b in zip(jax.tree.leaves(got[2]), jax.tree.leaves(want[2])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_precomputed_reference_equals_frozen_copy(policy, reference):
    @jax.jit
    def run():
        out = {}
        for kind, batch, name in (("paired", paired(), "sigmoid"), ("unpaired", unpaired(), "kto")):
            pre = D.precompute_reference(reference, batch, KEY, n_mc=M, mask_id=MASK, chunk_size=T)
            out[kind] = (
                D.diffusion_preference_loss(policy, reference, batch, loss_name=name, hparams={}, key=KEY, **KW)[:2],
                D.diffusion_preference_loss(policy, None, {**batch, **pre}, loss_name=name, hparams={}, key=KEY,
                                            **KW)[:2])
        return out

    for (copy_loss, copy_m), (pre_loss, pre_m) in run().values():
        np.testing.assert_allclose(pre_loss, copy_loss, rtol=1e-6)
        for k in copy_m:
            np.testing.assert_allclose(pre_m[k], copy_m[k], rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------- SFT and errors


def test_sft_loss_masks_only_the_answer(policy):
    batch = unpaired()
    g, p, rest = _split(policy)

    @jax.jit
    def run(p):
        f = lambda p: D.diffusion_sft_loss(nnx.merge(g, p, rest), batch, KEY, mask_id=MASK, chunk_size=T)
        (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(p)
        prompt = jnp.arange(T)[None, :] < 3
        want = jnp.mean(dl.sft_loss(policy, batch["input_ids"], jnp.broadcast_to(prompt, (B, T)), KEY, mask_id=MASK))
        return loss, metrics, grads, want

    loss, metrics, grads, want = run(p)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert metrics["nll"] == loss and all(np.isfinite(x).all() for x in jax.tree.leaves(grads))


def test_errors(policy):
    batch = unpaired()
    with pytest.raises(ValueError, match="n_mc must be an int >= 1, got 0"):
        D.diffusion_preference_loss(policy, policy, batch, loss_name="kto", hparams={}, key=KEY,
                                    **{**KW, "n_mc": 0})
    empty = {**batch, "completion_mask": batch["completion_mask"].at[2].set(False)}
    with pytest.raises(ValueError, match=r"completion_mask: rows \[2\] have an empty response \(0 completion tokens"):
        D.diffusion_preference_loss(policy, policy, empty, loss_name="kto", hparams={}, key=KEY, **KW)
    pb = paired()
    with pytest.raises(ValueError, match=r"rejected_mask: rows \[0, 3\] have an empty response"):
        D.pair_elbos(policy, None, {**pb, "rejected_mask": pb["rejected_mask"].at[jnp.asarray([0, 3])].set(False)},
                     KEY, **KW)
    with pytest.raises(ValueError, match="loss 'tdpo' needs per-token log-probs"):
        D.diffusion_preference_loss(policy, policy, pb, loss_name="tdpo", hparams={}, key=KEY, **KW)
    with pytest.raises(ValueError, match="unknown kto_reference_point 'global'; known: kl, batch_mean, zero"):
        L.get("kto")(L.UnpairedLogps(completion=jnp.zeros(2), ref_completion=jnp.zeros(2), label=jnp.ones(2, bool)),
                     kto_reference_point="global")
