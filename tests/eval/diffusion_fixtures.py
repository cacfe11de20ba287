"""Fixtures of the diffusion-eval tests: a word-level tokenizer with option letters, digits and a
[MASK] token; a tiny random LLaDA saved as a Hugging Face dir; a stub mask predictor whose
logits spell fixed words at the last positions."""
import jax.numpy as jnp
from flax import nnx
from pojax.models import LLaDA, ModelConfig, save_pretrained
from tests.data.tokenizer_fixture import word_tokenizer

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "A", "B", "C", "D", "A.", "B.", "C.", "D.", "Answer:", "Question:", "what",
         "is", "the", "sky", "color", "blue", "red", "green", "grey", "2+2?", "3", "4", "5", "6", "####", "hi", "go",
         "user", "assistant", ":", "<|mdm_mask|>"]
MASK = WORDS.index("<|mdm_mask|>")
TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant :{% endif %}")


def tokenizer(chat_template: bool = False):
    return word_tokenizer(WORDS, TEMPLATE if chat_template else None)


def llada_config(**kw) -> ModelConfig:
    fields = dict(model_type="llada", vocab_size=len(WORDS), hidden_size=32, intermediate_size=48,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  mask_token_id=MASK, eos_token_id=WORDS.index("</s>"), pad_token_id=0)
    return ModelConfig(**{**fields, **kw})


def save_llada(path, seed: int = 0, chat_template: bool = True) -> str:
    """A random tiny LLaDA and the tokenizer, written as a Hugging Face dir."""
    save_pretrained(LLaDA(llada_config(), rngs=nnx.Rngs(seed)), str(path))
    tokenizer(chat_template).save_pretrained(str(path))
    return str(path)


class WordStub(nnx.Module):
    """A mask predictor (pojax.sampling.diffusion's model interface) whose logits at the j-th of
    the last len(words) positions prefer ``words[j]`` and elsewhere ``other``: LLaDA's sampler
    then generates exactly ``words`` after any prompt."""

    def __init__(self, words: list[str], other: str = "hi"):
        g = len(words)
        self.config = llada_config(hidden_size=g + 1, num_attention_heads=1, num_key_value_heads=1)
        w = jnp.zeros((g + 1, len(WORDS)), jnp.float32)
        for j, word in enumerate(words + [other]):
            w = w.at[j, WORDS.index(word)].set(10.0)
        self.w = nnx.Param(w)
        self.g = g

    def hidden_states(self, input_ids, *, positions=None, segment_ids=None):
        b, t = input_ids.shape
        slot = jnp.clip(jnp.arange(t) - (t - self.g), -1, self.g - 1)  # -1 before the generated span
        slot = jnp.where(slot < 0, self.g, slot)
        return jnp.broadcast_to(jnp.eye(self.g + 1)[slot], (b, t, self.g + 1))

    def lm_head_weight(self):
        return self.w[...]
