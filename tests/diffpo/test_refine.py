"""refine(): ids and text in, the aligner's refinement out; bad input gives clear errors."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pojax.diffpo import refine
from pojax.diffpo.refine import draw_reserved_prefix
from pojax.models import CausalLM, ModelConfig

V = 40


def _model(seed=0):
    return CausalLM(ModelConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=1), rngs=nnx.Rngs(seed))


_forward = nnx.jit(lambda model, ids: model(ids))


def _greedy(model, prompt, n, width=16):
    """n greedy tokens by full forwards over right-padded rows (one compilation)."""
    out = []
    for _ in range(n):
        seq = list(prompt) + out
        row = np.zeros((1, width), np.int32)
        row[0, :len(seq)] = seq
        out.append(int(jnp.argmax(_forward(model, jnp.asarray(row))[0, len(seq) - 1])))
    return out


class CharTokenizer:
    """a..z → 3..28, id 1 = EOS, id 0 = PAD; enough of the transformers interface for refine."""

    eos_token_id, pad_token_id = 1, 0

    def __init__(self, size=V):
        self.size = size

    def __len__(self):
        return self.size

    def encode(self, text, add_special_tokens=True):
        return ([2] if add_special_tokens else []) + [3 + ord(c) - ord("a") for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i - 3) if 3 <= i < 29 else "" for i in ids)


def test_ids_to_convergence_equal_greedy_across_batches():
    model = _model(0)
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [3]]
    base = [[20, 21, 22, 23, 24], [], [30, 31], [4, 4, 4, 4, 4]]
    out, stats = refine(model, None, prompts, base, max_steps=None, block_size=5, batch_size=3, return_stats=True)
    for p, o in zip(prompts, out):
        assert o == _greedy(model, p, 5)
    assert all(stats["converged"]) and max(stats["forward_passes"]) <= 6
    one = refine(model, None, prompts, base, max_steps=1, block_size=5, batch_size=3)
    assert [o[0] for o in one] == [_greedy(model, p, 1)[0] for p in prompts]  # one step fixes slot 0


def test_text_with_eos():
    model = _model(1)
    tok = CharTokenizer()
    out = refine(model, tok, ["abc", "hello"], ["xyz", ""], max_steps=None, block_size=4, eos_id=5)
    for text, o in zip(["abc", "hello"], out):
        g = _greedy(model, tok.encode(text), 4)
        if 5 in g:
            g = g[:g.index(5)]
        assert o == tok.decode(g)


def test_bad_input_errors():
    model = _model(2)
    with pytest.raises(ValueError, match="base response 0 has 6 tokens, more than block_size=4"):
        refine(model, None, [[3, 4]], [[5] * 6], max_steps=1, block_size=4)
    out = refine(model, None, [[3, 4]], [[5] * 6], max_steps=0, block_size=4, on_overflow="truncate")
    assert out == [[5] * 4]  # k = 0: the truncated base response itself
    with pytest.raises(ValueError, match="tokenizer mismatch: the tokenizer has 50 tokens but the aligner's vocabulary has 40"):
        refine(model, CharTokenizer(50), ["ab"], ["c"], max_steps=1)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        refine(model, None, [[]], [[3]], max_steps=1)
    with pytest.raises(ValueError, match="outside the aligner's vocabulary"):
        refine(model, None, [[3]], [[V]], max_steps=1)
    with pytest.raises(ValueError, match="2 prompts but 1 base responses"):
        refine(model, None, [[3], [4]], [[3]], max_steps=1)
    with pytest.raises(ValueError, match="on_overflow='drop'"):
        refine(model, None, [[3]], [[3]], max_steps=1, on_overflow="drop")
    with pytest.raises(ValueError, match="max_steps must be >= 0"):
        refine(model, None, [[3]], [[3]], max_steps=-1)


def test_blocks_and_reserved_prefix():
    model = _model(3)
    prompts = [[5, 6, 7], [8, 9]]
    base = [list(range(10, 20)), [11, 12, 13]]  # 10 tokens: 3 blocks of 4; 3 tokens: 1 block
    out, stats = refine(model, None, prompts, base, max_steps=None, block_size=4, on_overflow="blocks",
                        return_stats=True)
    assert out[0] == _greedy(model, prompts[0], 12, width=24)  # each block's fixed point continues the last
    assert out[1] == _greedy(model, prompts[1], 4, width=24)
    assert all(stats["converged"]) and stats["forward_passes"][0] >= 3
    kept = refine(model, None, prompts, base, max_steps=None, block_size=4, reserved_prefix=2,
                  on_overflow="truncate")
    for p, b, o in zip(prompts, base, kept):
        assert o[:2] == b[:2] and o[2:] == _greedy(model, p + b[:2], 4, width=24)


def test_sampled_refine_is_reproducible_and_cold_sampling_is_greedy():
    import jax

    model = _model(4)
    prompts, base = [[5, 6, 7], [8, 9]], [[20, 21, 22], [30]]
    kw = {"max_steps": None, "block_size": 4, "batch_size": 2}
    hot = refine(model, None, prompts, base, temperature=2.0, key=jax.random.key(0), **kw)
    assert hot == refine(model, None, prompts, base, temperature=2.0, key=jax.random.key(0), **kw)
    cold = refine(model, None, prompts, base, temperature=1e-6, key=jax.random.key(1), **kw)
    assert cold == refine(model, None, prompts, base, **kw) == [_greedy(model, p, 4) for p in prompts]
    with pytest.raises(ValueError, match="temperature > 0 \\(sampled Jacobi updates\\) needs a PRNG key"):
        refine(model, None, prompts, base, temperature=1.0, **kw)


def test_reserved_prefix_draws_are_uniform_inclusive_and_seeded():
    """The authors' reserve = random.randint(0, reserve_tokens): every count 0 … 12 (both ends), evenly;
    the same seed gives the same draws, another seed others."""
    draws = draw_reserved_prefix(13_000, 12, seed=0)
    counts = np.bincount(draws, minlength=13)
    assert draws.min() == 0 and draws.max() == 12 and counts.size == 13
    expected = 1000.0
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert chi2 < 32.9  # the 0.999 quantile of chi-square with 12 degrees of freedom
    np.testing.assert_array_equal(draws, draw_reserved_prefix(13_000, 12, seed=0))
    assert not np.array_equal(draws[:100], draw_reserved_prefix(100, 12, seed=1))
    assert set(draw_reserved_prefix(50, 0, seed=3).tolist()) == {0}
    with pytest.raises(ValueError, match="reserve_tokens must be >= 0, got -1"):
        draw_reserved_prefix(4, -1, seed=0)


def test_drawn_reserved_prefixes_are_kept_verbatim_and_steer_the_fixed_point():
    """Per-row counts: each row's first r base tokens come back as they are, and the rest is the
    aligner's greedy continuation of prompt + those tokens (to convergence); a base answer shorter than
    its count is kept whole and continued."""
    model = _model(5)
    prompts = [[5, 6, 7], [8, 9], [10, 11], [3, 4, 5]]
    base = [[20, 21, 22, 23, 24, 25], [30, 31, 32, 33], [12, 13, 14, 15, 16], [17]]
    reserved = draw_reserved_prefix(len(prompts), 3, seed=4)
    reserved[3] = 3  # longer than its base answer
    out, stats = refine(model, None, prompts, base, max_steps=None, block_size=4, reserved_prefix=reserved,
                        on_overflow="truncate", batch_size=2, return_stats=True)
    assert all(stats["converged"])
    for p, b, r, o in zip(prompts, base, reserved, out):
        kept = b[:r]
        assert o[:len(kept)] == kept
        assert o[len(kept):] == _greedy(model, p + kept, 4, width=24)
    assert reserved.tolist() != [0] * 4
    cached = refine(model, None, prompts, base, max_steps=None, block_size=4, reserved_prefix=reserved,
                    on_overflow="truncate", batch_size=2, prefix_cache=True)
    assert cached == out
    with pytest.raises(ValueError, match=r"reserved_prefix has shape \(2,\), not \(4,\): one count per base response"):
        refine(model, None, prompts, base, max_steps=1, block_size=4, reserved_prefix=[1, 2], on_overflow="truncate")
    with pytest.raises(ValueError, match="reserved_prefix must be >= 0, got -1"):
        refine(model, None, prompts, base, max_steps=1, block_size=4, reserved_prefix=-1, on_overflow="truncate")
    with pytest.raises(ValueError, match="base response 0 has 5 tokens after its 1 reserved, more than block_size=4"):
        refine(model, None, prompts[:1], base[:1], max_steps=1, block_size=4, reserved_prefix=1)
