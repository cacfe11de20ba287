"""Sampling: greedy equals the argmax of the full forward and transformers' generate (left
padding included), top-k / top-p filtering, stop tokens."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pojax.models import CausalLM, ModelConfig
from pojax.sampling import generate as generate_eagerly
from pojax.sampling.autoregressive import completion_lengths, filter_logits, left_pad

# jitted as the trainer's evaluation runs it (eager dispatch of every op was most of this file's time)
generate = nnx.jit(generate_eagerly, static_argnames=("max_new_tokens", "temperature", "top_k", "top_p", "stop_tokens",
                                                     "pad_id"))
forward = nnx.jit(lambda model, ids: model(ids))


def test_greedy_generation_matches_full_forward_argmax():
    model = CausalLM(ModelConfig(vocab_size=40, num_hidden_layers=2), rngs=nnx.Rngs(3))
    prompts = jax.random.randint(jax.random.key(0), (3, 5), 0, 40)
    with jax.default_matmul_precision("highest"):
        out = generate(model, prompts, jax.random.key(1), max_new_tokens=4, temperature=0.0)
        seq = prompts
        for _ in range(4):
            nxt = jnp.argmax(forward(model, seq)[:, -1], -1).astype(jnp.int32)
            seq = jnp.concatenate([seq, nxt[:, None]], 1)
    np.testing.assert_array_equal(out, seq[:, 5:])


def test_sampling_follows_the_model_distribution():
    model = CausalLM(ModelConfig(vocab_size=8, num_hidden_layers=1), rngs=nnx.Rngs(0))
    prompts = jnp.zeros((4000, 2), jnp.int32)
    out = generate(model, prompts, jax.random.key(2), max_new_tokens=1, temperature=1.0)
    probs = jax.nn.softmax(forward(model, prompts[:1])[0, -1])
    freq = np.bincount(np.asarray(out[:, 0]), minlength=8) / 4000
    np.testing.assert_allclose(freq, probs, atol=0.03)


def _greedy_alone(model, prompt, n):
    return np.asarray(generate(model, jnp.asarray([prompt], jnp.int32), jax.random.key(0), max_new_tokens=n,
                               temperature=0.0))[0]


def test_left_padded_rows_decode_as_they_would_alone():
    model = CausalLM(ModelConfig(vocab_size=40, num_hidden_layers=2), rngs=nnx.Rngs(5))
    prompts = [[3, 4, 5, 6, 7], [9, 2], [11, 12, 13]]
    ids, lengths = left_pad(prompts, pad_id=0)
    with jax.default_matmul_precision("highest"):
        out = np.asarray(generate(model, jnp.asarray(ids), jax.random.key(0), max_new_tokens=4, temperature=0.0,
                                  prompt_lengths=lengths))
        for row, prompt in zip(out, prompts):
            np.testing.assert_array_equal(row, _greedy_alone(model, prompt, 4))


def test_greedy_equals_transformers_generate_with_left_padding(tmp_path):
    import torch

    from pojax.models import from_pretrained
    from tests.models.hf_fixtures import make_checkpoint

    hf = make_checkpoint("llama-gqa", tmp_path)
    model = from_pretrained(str(tmp_path))
    prompts = [[5, 6, 7, 8, 9, 10], [20, 21, 22], [30, 31, 32, 33]]
    ids, lengths = left_pad(prompts, pad_id=0)
    mask = (np.arange(ids.shape[1])[None] >= ids.shape[1] - lengths[:, None]).astype(np.int64)
    hf.generation_config.eos_token_id = None  # no early stop (token 2 is the config's EOS)
    with torch.no_grad():
        want = hf.generate(torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask), do_sample=False,
                           max_new_tokens=6, pad_token_id=0)[:, ids.shape[1]:].numpy()
    with jax.default_matmul_precision("highest"):
        out = generate(model, jnp.asarray(ids), jax.random.key(0), max_new_tokens=6, temperature=0.0,
                       prompt_lengths=lengths)
    np.testing.assert_array_equal(np.asarray(out), want)


def test_top_k_and_top_p_filtering_by_hand():
    logits = jnp.log(jnp.asarray([[0.5, 0.25, 0.15, 0.1]]))
    kept = lambda x: np.isfinite(np.asarray(x))[0].tolist()
    assert kept(filter_logits(logits, top_k=2)) == [True, True, False, False]
    assert kept(filter_logits(logits, top_p=0.5)) == [True, False, False, False]  # 0.5 reached by the first
    assert kept(filter_logits(logits, top_p=0.6)) == [True, True, False, False]
    assert kept(filter_logits(logits, top_p=0.9)) == [True, True, True, False]
    assert kept(filter_logits(logits, top_p=0.01)) == [True, False, False, False]  # the top token always stays
    model = CausalLM(ModelConfig(vocab_size=40, num_hidden_layers=1), rngs=nnx.Rngs(1))
    prompts = jax.random.randint(jax.random.key(3), (4, 3), 0, 40)
    greedy = generate(model, prompts, jax.random.key(1), max_new_tokens=5, temperature=0.0)
    for kw in ({"top_k": 1}, {"top_p": 1e-6}):
        np.testing.assert_array_equal(generate(model, prompts, jax.random.key(7), max_new_tokens=5, temperature=1.0, **kw),
                                      greedy)


def test_stop_tokens_end_rows_with_padding():
    model = CausalLM(ModelConfig(vocab_size=12, num_hidden_layers=1), rngs=nnx.Rngs(2))
    prompts = jax.random.randint(jax.random.key(4), (64, 3), 1, 12)
    free = np.asarray(generate(model, prompts, jax.random.key(5), max_new_tokens=8, temperature=1.0, pad_id=0))
    out = np.asarray(generate(model, prompts, jax.random.key(5), max_new_tokens=8, temperature=1.0, stop_tokens=(3,),
                              pad_id=0))
    lengths = completion_lengths(out, (3,))
    assert (lengths < 8).any()
    for row, f, n in zip(out, free, lengths):
        np.testing.assert_array_equal(row[:n], f[:n])  # the same draws up to the stop
        assert (row[n:] == 0).all()
        assert 3 not in row[: n - 1]
