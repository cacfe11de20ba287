"""Jacobi refinement: converges to the aligner's greedy decode from any guess, a perfect guess
needs no update, the prompt never changes, the converged prefix only grows, EOS ends a row."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pojax.diffpo.jacobi import jacobi_refine
from pojax.models import CausalLM, ModelConfig
from pojax.sampling.autoregressive import generate

V, N, PAD = 23, 7, 0
WIDTH = 16  # reference rows: prompt + N tokens fit
_forward = nnx.jit(lambda model, ids: model(ids))  # one compilation for every reference call


def _model(seed=0):
    return CausalLM(ModelConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=1), rngs=nnx.Rngs(seed))


def _layout(prompts, guesses, width):
    """Rows [prompt | guess (N slots) | PAD...] and their slot masks."""
    ids = np.full((len(prompts), width), PAD, np.int32)
    slots = np.zeros((len(prompts), width), bool)
    for i, (p, g) in enumerate(zip(prompts, guesses)):
        ids[i, :len(p)] = p
        ids[i, len(p):len(p) + N] = g
        slots[i, len(p):len(p) + N] = True
    return ids, slots


def _greedy_reference(model, prompt, eos_id=None):
    """N greedy tokens by repeated full forwards (no cache), PAD after the first EOS."""
    out = []
    for _ in range(N):
        seq = list(prompt) + out
        row = np.full((1, WIDTH), PAD, np.int32)  # right padding: invisible to a causal model
        row[0, :len(seq)] = seq
        out.append(int(jnp.argmax(_forward(model, jnp.asarray(row))[0, len(seq) - 1])))
    if eos_id is not None and eos_id in out:
        k = out.index(eos_id)
        out = out[:k + 1] + [PAD] * (N - k - 1)
    return np.asarray(out, np.int32)


def _prompts(seed, lengths):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, V, n).astype(np.int32) for n in lengths]


def test_no_cap_equals_greedy_decode_from_any_initial_guess():
    model = _model(0)
    prompts = _prompts(0, [4, 6, 3])
    greedy = [_greedy_reference(model, p) for p in prompts]
    # The KV-cache sampler agrees (same-length prompts, temperature 0).
    same = np.stack([p[:3] for p in prompts])
    gen = generate(model, jnp.asarray(same), jax.random.key(0), max_new_tokens=N, temperature=0.0)
    np.testing.assert_array_equal(gen, np.stack([_greedy_reference(model, p) for p in same]))

    rng = np.random.default_rng(1)
    guesses = {
        "random": [rng.integers(1, V, N) for _ in prompts],
        "target": [np.roll(g, 1) for g in greedy],          # a different, plausible response
        "greedy": greedy,
        "empty": [np.full(N, PAD) for _ in prompts],
    }
    width = 6 + N + 2
    for name, guess in guesses.items():
        ids, slots = _layout(prompts, guess, width)
        res = jacobi_refine(model, jnp.asarray(ids), jnp.asarray(slots), max_steps=None)
        out = np.asarray(res.ids)
        for i, p in enumerate(prompts):
            np.testing.assert_array_equal(out[i, len(p):len(p) + N], greedy[i], err_msg=name)
            np.testing.assert_array_equal(out[i, :len(p)], p, err_msg=f"{name}: prompt changed")
            np.testing.assert_array_equal(out[i, len(p) + N:], PAD, err_msg=f"{name}: padding changed")
        assert np.all(res.converged), name
        assert np.all(np.asarray(res.updates) <= N), name  # N slots: at most N changing steps
        np.testing.assert_array_equal(res.forward_passes, np.asarray(res.updates) + 1)


def test_perfect_initial_guess_needs_zero_updates():
    model = _model(1)
    prompts = _prompts(2, [5, 5])
    greedy = [_greedy_reference(model, p) for p in prompts]
    ids, slots = _layout(prompts, greedy, 5 + N)
    res = jacobi_refine(model, jnp.asarray(ids), jnp.asarray(slots), max_steps=None)
    np.testing.assert_array_equal(res.updates, 0)
    np.testing.assert_array_equal(res.forward_passes, 1)  # one pass confirms the fixed point
    assert int(res.iterations) == 1
    np.testing.assert_array_equal(res.ids, ids)


def test_converged_prefix_only_grows_and_prompt_is_fixed():
    model = _model(2)
    prompts = _prompts(3, [4, 5, 6, 4])
    greedy = [_greedy_reference(model, p) for p in prompts]
    rng = np.random.default_rng(4)
    ids, slots = _layout(prompts, [rng.integers(1, V, N) for _ in prompts], 6 + N)
    prev = np.zeros(len(prompts), int)
    for k in range(N + 2):
        out = np.asarray(jacobi_refine(model, jnp.asarray(ids), jnp.asarray(slots), max_steps=k).ids)
        for i, p in enumerate(prompts):
            np.testing.assert_array_equal(out[i, :len(p)], p)
            wrong = np.flatnonzero(out[i, len(p):len(p) + N] != greedy[i])
            prefix = int(wrong[0]) if wrong.size else N
            assert prefix >= min(k, N), (k, i, prefix)  # after k steps, k slots are exact
            assert prefix >= prev[i], (k, i, prefix, prev[i])
            prev[i] = prefix
    assert np.all(prev == N)


def test_step_budget_zero_returns_the_input():
    model = _model(3)
    prompts = _prompts(5, [3])
    ids, slots = _layout(prompts, [np.arange(1, N + 1)], 3 + N)
    res = jacobi_refine(model, jnp.asarray(ids), jnp.asarray(slots), max_steps=0)
    np.testing.assert_array_equal(res.ids, ids)
    assert int(res.iterations) == 0 and not bool(res.converged[0])


def test_eos_ends_the_response_like_the_sampler():
    model = _model(4)
    prompts = _prompts(6, [5, 5, 5])
    plain = [_greedy_reference(model, p) for p in prompts]
    eos = int(plain[0][2])  # a token the first row emits at slot 2
    expected = [_greedy_reference(model, p, eos_id=eos) for p in prompts]
    gen = generate(model, jnp.asarray(np.stack(prompts)), jax.random.key(0), max_new_tokens=N, temperature=0.0,
                   stop_tokens=(eos,), pad_id=PAD)
    np.testing.assert_array_equal(gen, np.stack(expected))
    rng = np.random.default_rng(7)
    ids, slots = _layout(prompts, [rng.integers(1, V, N) for _ in prompts], 5 + N)
    res = jacobi_refine(model, jnp.asarray(ids), jnp.asarray(slots), max_steps=None, eos_id=eos, pad_id=PAD)
    np.testing.assert_array_equal(np.asarray(res.ids)[:, 5:], np.stack(expected))
    assert np.all(res.converged)


def test_sampled_updates_converge_to_the_sample_under_the_same_noise():
    from pojax.diffpo.jacobi import position_noise

    model = _model(5)
    prompts = _prompts(8, [4, 6, 5])
    width = 6 + N
    rng = np.random.default_rng(9)
    ids, slots = _layout(prompts, [rng.integers(1, V, N) for _ in prompts], width)
    key, tau = jax.random.key(3), 1.5
    res = jacobi_refine(model, jnp.asarray(ids), jnp.asarray(slots), max_steps=None, temperature=tau, key=key)
    out = np.asarray(res.ids)
    # independent reference: token by token, full forwards, Gumbel-max with the position's noise
    noise = np.asarray(position_noise(key, len(prompts), width, V))
    for i, p in enumerate(prompts):
        seq = list(p)
        for _ in range(N):
            row = np.full((1, WIDTH), PAD, np.int32)
            row[0, :len(seq)] = seq
            z = np.asarray(_forward(model, jnp.asarray(row))[0, len(seq) - 1], np.float64)
            seq.append(int(np.argmax(z / tau + noise[i, len(seq) - 1])))
        np.testing.assert_array_equal(out[i, len(p):len(p) + N], seq[len(p):])
        np.testing.assert_array_equal(out[i, :len(p)], p)  # the prompt never changes
    assert np.all(res.converged) and np.all(np.asarray(res.forward_passes) <= N + 1)
    again = jacobi_refine(model, jnp.asarray(ids), jnp.asarray(slots), max_steps=2, temperature=tau, key=key)
    np.testing.assert_array_equal(again.ids, jacobi_refine(model, jnp.asarray(ids), jnp.asarray(slots), max_steps=2,
                                                           temperature=tau, key=jax.random.key(3)).ids)  # same seed
    other = jacobi_refine(model, jnp.asarray(ids), jnp.asarray(slots), max_steps=None, temperature=tau,
                          key=jax.random.key(4))
    assert np.any(np.asarray(other.ids) != out)  # another seed, another sample
    # τ → 0: the greedy update (each step, and at convergence)
    for k in (1, None):
        cold = jacobi_refine(model, jnp.asarray(ids), jnp.asarray(slots), max_steps=k, temperature=1e-6, key=key)
        greedy = jacobi_refine(model, jnp.asarray(ids), jnp.asarray(slots), max_steps=k)
        np.testing.assert_array_equal(cold.ids, greedy.ids)


def test_sampled_updates_need_a_key_and_a_valid_temperature():
    import pytest

    model = _model(0)
    ids, slots = _layout(_prompts(0, [3]), [np.arange(1, N + 1)], 3 + N)
    with pytest.raises(ValueError, match="need a PRNG key"):
        jacobi_refine(model, jnp.asarray(ids), jnp.asarray(slots), temperature=0.7)
    with pytest.raises(ValueError, match="temperature must be >= 0, got -1"):
        jacobi_refine(model, jnp.asarray(ids), jnp.asarray(slots), temperature=-1.0, key=jax.random.key(0))


def test_prefix_cache_gives_the_same_refinement():
    model = _model(6)
    prompts = _prompts(10, [4, 6, 1, 5])
    rng = np.random.default_rng(11)
    ids, slots = _layout(prompts, [rng.integers(1, V, N) for _ in prompts], 6 + N + 2)
    slots[1, 6 + N - 2:] = False  # a row with fewer slots
    eos = int(_greedy_reference(model, prompts[0])[3])
    for k, tau in ((2, 0.0), (None, 0.0), (None, 1.3)):  # max_steps is traced: 2 compilations per path
        kw = {"max_steps": k, "eos_id": eos, "pad_id": PAD, "temperature": tau, "key": jax.random.key(5), "chunk_size": 4}
        plain = jacobi_refine(model, jnp.asarray(ids), jnp.asarray(slots), **kw)
        cached = jacobi_refine(model, jnp.asarray(ids), jnp.asarray(slots), prefix_cache=True, **kw)
        np.testing.assert_array_equal(cached.ids, plain.ids, err_msg=f"k={k}, tau={tau}")
        np.testing.assert_array_equal(cached.forward_passes, plain.forward_passes)
