"""Greedy sampling equals the argmax of the full forward, token by token."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pojax.models import CausalLM, ModelConfig
from pojax.sampling import generate


def test_greedy_generation_matches_full_forward_argmax():
    model = CausalLM(ModelConfig(vocab_size=40, num_hidden_layers=2), rngs=nnx.Rngs(3))
    prompts = jax.random.randint(jax.random.key(0), (3, 5), 0, 40)
    with jax.default_matmul_precision("highest"):
        out = generate(model, prompts, jax.random.key(1), max_new_tokens=4, temperature=0.0)
        seq = prompts
        for _ in range(4):
            nxt = jnp.argmax(model(seq)[:, -1], -1).astype(jnp.int32)
            seq = jnp.concatenate([seq, nxt[:, None]], 1)
    np.testing.assert_array_equal(out, seq[:, 5:])


def test_sampling_follows_the_model_distribution():
    model = CausalLM(ModelConfig(vocab_size=8, num_hidden_layers=1), rngs=nnx.Rngs(0))
    prompts = jnp.zeros((4000, 2), jnp.int32)
    out = generate(model, prompts, jax.random.key(2), max_new_tokens=1, temperature=1.0)
    probs = jax.nn.softmax(model(prompts[:1])[0, -1])
    freq = np.bincount(np.asarray(out[:, 0]), minlength=8) / 4000
    np.testing.assert_allclose(freq, probs, atol=0.03)
