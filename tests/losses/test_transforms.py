"""jit, vmap, bf16 inputs and gradients at extreme inputs, for every registered loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pojax.losses as L
from tests.losses.helpers import UNPAIRED, generic_names, inputs_for, pair

NAMES = [n for n in generic_names() if n != "dpo"]


def mean_loss(name, **hp):
    return lambda logps: jnp.mean(L.get(name)(logps, **hp).loss)


@pytest.mark.parametrize("name", NAMES)
def test_jit_equals_eager(name):
    logps = inputs_for(name, seed=3)
    eager = L.get(name)(logps)
    jitted = jax.jit(L.get(name))(logps)
    np.testing.assert_allclose(jitted.loss, eager.loss, rtol=1e-6, atol=1e-7)
    for key, value in eager.metrics.items():
        np.testing.assert_allclose(jitted.metrics[key], value, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_a_stack_of_batches(name):
    batches = [inputs_for(name, seed=s) for s in range(3)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
    got = jax.vmap(lambda lp: L.get(name)(lp).loss)(stacked)
    for i, b in enumerate(batches):
        np.testing.assert_allclose(got[i], L.get(name)(b).loss, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_inputs_give_fp32_losses(name):
    logps = inputs_for(name, seed=4)
    low = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x, logps)
    out = L.get(name)(low)
    assert out.loss.dtype == jnp.float32
    rounded = jax.tree.map(lambda x: x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x, low)
    np.testing.assert_allclose(out.loss, L.get(name)(rounded).loss, rtol=1e-6)


def extreme_pairs():
    b = 4
    huge = jnp.full((b,), -1e4)
    yield "very negative", pair(huge, huge * 0.5, huge * 0.5, huge, jnp.full((b,), 5.0), jnp.full((b,), 5.0), tokens=True)
    yield "reversed extreme", pair(huge * 0.5, huge, huge, huge * 0.5, tokens=True)
    same = jnp.array([-3.0, -10.0, -0.5, -50.0])
    yield "equal chosen and rejected", pair(same, same, same, same, tokens=True)
    yield "zero length", pair(same, same - 1, same, same, jnp.zeros(b), jnp.zeros(b), tokens=True)
    yield "log-prob zero", pair(jnp.zeros(b), jnp.full((b,), -1e-9), jnp.zeros(b), jnp.zeros(b), tokens=True)


def extreme_unpaired():
    b = 4
    huge = jnp.full((b,), -1e4)
    label = jnp.array([True, False, True, False])
    yield "very negative", L.UnpairedLogps(completion=huge, ref_completion=huge * 0.5, label=label, kl=huge * 0.5, ref_kl=huge)
    yield "reversed", L.UnpairedLogps(completion=huge * 0.5, ref_completion=huge, label=label, kl=huge, ref_kl=huge * 0.5)
    same = jnp.array([-3.0, -10.0, -0.5, -50.0])
    yield "at reference", L.UnpairedLogps(completion=same, ref_completion=same, label=label, kl=same, ref_kl=same)


def grad_cases():
    for name in NAMES:
        for label, logps in (extreme_unpaired() if name in UNPAIRED else extreme_pairs()):
            hp = {}
            if name == "sigmoid":
                for extra in ({"f_divergence_type": "forward_kl"}, {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3},
                              {"f_divergence_type": "js_divergence"}, {"ld_alpha": 0.5}, {"use_weighting": True}, {"rpo_alpha": 1.0}):
                    yield name, label, logps, extra
            yield name, label, logps, hp


@pytest.mark.parametrize(("name", "label", "logps", "hp"), list(grad_cases()),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_gradients_are_finite_at_extreme_inputs(name, label, logps, hp):
    leaves, treedef = jax.tree.flatten(logps)
    floating = [i for i, x in enumerate(leaves) if jnp.issubdtype(x.dtype, jnp.floating)]

    def f(float_leaves):
        full = list(leaves)
        for i, x in zip(floating, float_leaves):
            full[i] = x
        return mean_loss(name, **hp)(jax.tree.unflatten(treedef, full))

    loss, grads = jax.value_and_grad(f)([leaves[i] for i in floating])
    assert np.isfinite(float(loss)), (name, label, hp)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g))), (name, label, hp)


@pytest.mark.parametrize("name", ["sigmoid", "ipo", "simpo", "orpo", "asft", "kto", "cpo"])
def test_gradients_match_finite_differences(name):
    from jax.test_util import check_grads

    # The losses compute in float32 by contract, hence the 1e-2 tolerance of the finite differences.
    logps = inputs_for(name, seed=5)
    with jax.enable_x64(True):
        logps = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, logps)
        loss = lambda c: jnp.sum(L.get(name)(logps.replace(**{_field(name): c})).loss)
        check_grads(loss, (getattr(logps, _field(name)),), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


def _field(name):
    return "completion" if name in UNPAIRED else "chosen"
