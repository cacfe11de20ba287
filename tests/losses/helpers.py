"""Small builders of loss inputs shared by the loss tests, and a jit cache for running losses."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

import pojax.losses as L

REF_FREE = ("cpo", "cpo_hinge", "cpo_ipo", "simpo", "orpo", "asft")
UNPAIRED = ("kto", "apo_zero_unpaired", "bco")


def generic(name: str) -> bool:
    """Losses the generic tests can build inputs for: not listwise, not token-level, and not
    madpo (it needs reward-model margins); their own test files cover the others."""
    import pojax.losses as L

    return L.input_kind(name) != "ranked" and not L.needs_tokens(name) and name != "madpo"


def generic_names():
    import pojax.losses as L

    return [n for n in L.names() if generic(n)]


def pair(chosen, rejected, ref_chosen=None, ref_rejected=None, chosen_len=None, rejected_len=None, tokens=False, T=6):
    """A PairLogps from [B] arrays; ``tokens=True`` adds TokenLogps holding the same sums."""
    chosen = jnp.asarray(chosen, jnp.float32)
    b = chosen.shape[0]
    cl = jnp.full((b,), 4.0) if chosen_len is None else jnp.asarray(chosen_len, jnp.float32)
    rl = jnp.full((b,), 5.0) if rejected_len is None else jnp.asarray(rejected_len, jnp.float32)
    out = L.PairLogps(chosen=chosen, rejected=jnp.asarray(rejected, jnp.float32),
                      ref_chosen=None if ref_chosen is None else jnp.asarray(ref_chosen, jnp.float32),
                      ref_rejected=None if ref_rejected is None else jnp.asarray(ref_rejected, jnp.float32),
                      chosen_len=cl, rejected_len=rl)
    if not tokens:
        return out

    def tok(total, ref_total, length):
        mask = jnp.arange(T)[None, :] < length[:, None]
        n = jnp.maximum(length, 1.0)[:, None]
        ref = None if ref_total is None else jnp.where(mask, ref_total[:, None] / n, 0.0)
        return L.TokenLogps(policy=jnp.where(mask, total[:, None] / n, 0.0), ref=ref, mask=mask,
                            extra={"log_sum_sq_probs": jnp.where(mask, total[:, None] / n - 0.1, 0.0)})

    return out.replace(chosen_tokens=tok(out.chosen, out.ref_chosen, cl), rejected_tokens=tok(out.rejected, out.ref_rejected, rl))


def random_pair(seed, b=8, scale=20.0, tokens=False):
    rng = np.random.default_rng(seed)
    c, r = -rng.uniform(1, scale, b), -rng.uniform(1, scale, b)
    return pair(c, r, c + rng.normal(0, 2, b), r + rng.normal(0, 2, b),
                rng.integers(1, 6, b), rng.integers(1, 6, b), tokens=tokens)


def random_unpaired(seed, b=8):
    rng = np.random.default_rng(seed)
    c = -rng.uniform(1, 20, b)
    kl = -rng.uniform(1, 20, b)
    return L.UnpairedLogps(completion=jnp.asarray(c, jnp.float32), ref_completion=jnp.asarray(c + rng.normal(0, 2, b), jnp.float32),
                           label=jnp.asarray(np.arange(b) % 2 == 0), kl=jnp.asarray(kl, jnp.float32),
                           ref_kl=jnp.asarray(kl + rng.normal(0, 1, b), jnp.float32), length=jnp.full((b,), 5.0))


def inputs_for(name, seed=0, **kw):
    if name in UNPAIRED:
        return random_unpaired(seed)
    return random_pair(seed, **kw)


@functools.cache
def _jitted(name, hp):
    return jax.jit(functools.partial(L.get(name), **dict(hp)))


def run(name, logps, **hp):
    """The loss ``name`` under jit (one compilation per name, hyperparameters and shapes: much
    faster on CPU than op-by-op)."""
    return _jitted(name, tuple(sorted(hp.items())))(logps)


def assert_bf16_inputs_give_fp32_outputs(name, logps):
    """The loss of bf16 inputs is float32 (loss and metrics) and equals the loss of the same
    values upcast to float32."""
    low = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x, logps)
    out = run(name, low)
    assert out.loss.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in out.metrics.values())
    up = jax.tree.map(lambda x: x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x, low)
    np.testing.assert_allclose(out.loss, run(name, up).loss, rtol=1e-6)
