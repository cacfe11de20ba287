"""refine(): ids and text in, the aligner's refinement out; bad input gives clear errors."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pojax.diffpo import refine
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
