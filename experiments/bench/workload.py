"""The benchmark's fixed work, identical for every framework: a random Llama saved with
transformers, a word-level tokenizer (one token per word, so lengths are exact), and a paired
JSONL file of prompt / chosen / rejected texts.

Every framework reads the same files: pojax through ``--config.model.path`` and
``--config.data.path``, TRL / Tunix / EasyDeL through transformers' loaders. A step is one
optimizer step of sigmoid DPO (β = 0.1) on ``pairs`` pairs of ``prompt_len`` prompt tokens and
``completion_len`` completion tokens (the EOS the trainers append counts in the completion),
with a frozen reference, AdamW at a constant learning rate, fp32.

The data holds exactly one batch of pairs: every framework trains on the same pairs every step,
so the loss at step 1 (log 2: policy = reference) and at step 20 are comparable across
frameworks whatever their data order.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    pairs: int  # pairs per optimizer step
    prompt_len: int  # tokens
    completion_len: int  # tokens, the appended EOS included
    learning_rate: float = 1e-5
    beta: float = 0.1
    tied: bool = False  # the LM head is the embedding matrix


    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.completion_len

    def params(self) -> int:
        """Parameters of the Llama."""
        d, f, v = self.hidden, self.intermediate, self.vocab
        head = d // self.heads
        attn = d * d * 2 + 2 * d * self.kv_heads * head
        return self.layers * (attn + 3 * d * f + 2 * d) + (1 if self.tied else 2) * v * d + d


WORKLOADS = {
    "tiny": Workload("tiny", hidden=256, layers=4, heads=4, kv_heads=4, intermediate=688, vocab=2048, pairs=8,
                     prompt_len=64, completion_len=64),
    "small": Workload("small", hidden=512, layers=8, heads=8, kv_heads=8, intermediate=1376, vocab=32768, pairs=4,
                      prompt_len=256, completion_len=256),
    # Qwen2.5-0.5B's shape in Llama blocks (no q/k/v bias): 494M parameters, tied embeddings
    "medium": Workload("medium", hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=151936,
                       pairs=2, prompt_len=256, completion_len=256, tied=True),
}


def with_vocab(w: Workload, vocab: int) -> Workload:
    return dataclasses.replace(w, vocab=vocab, name=f"{w.name}_v{vocab // 1024}k")


def words(vocab: int) -> list[str]:
    return [PAD, BOS, EOS, UNK] + [f"w{i}" for i in range(vocab - 4)]


def make_tokenizer(vocab: int, path: str):
    """A word-level PreTrainedTokenizerFast of ``vocab`` tokens saved to ``path``: whitespace
    splits words, BOS is never added (prompts carry no special tokens in any framework)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words(vocab))}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK)
    fast.save_pretrained(path)
    return fast


def make_model(w: Workload, path: str, seed: int = 0) -> None:
    """A random-init LlamaForCausalLM (fp32) saved with save_pretrained."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=w.vocab, hidden_size=w.hidden, intermediate_size=w.intermediate,
                         num_hidden_layers=w.layers, num_attention_heads=w.heads, num_key_value_heads=w.kv_heads,
                         max_position_embeddings=max(2048, w.seq_len), tie_word_embeddings=w.tied, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0, torch_dtype="float32")
    LlamaForCausalLM(config).save_pretrained(path)


def make_data(w: Workload, path: str, seed: int = 0) -> None:
    """``pairs`` JSONL rows {prompt, chosen, rejected}: prompt_len words, completions of
    completion_len − 1 words (the trainers append EOS)."""
    rng = np.random.default_rng(seed)
    text = lambda n: " ".join(f"w{i}" for i in rng.integers(0, w.vocab - 4, n))
    with open(path, "w") as f:
        for _ in range(w.pairs):
            row = {"prompt": text(w.prompt_len), "chosen": " " + text(w.completion_len - 1),
                   "rejected": " " + text(w.completion_len - 1)}
            f.write(json.dumps(row) + "\n")


def prepare(w: Workload, root: str) -> dict:
    """Writes model/, tokenizer (into model/) and data.jsonl under root/<name> once; returns paths."""
    base = os.path.join(root, w.name)
    model, data = os.path.join(base, "model"), os.path.join(base, "data.jsonl")
    if not os.path.exists(os.path.join(model, "config.json")):
        make_model(w, model)
        make_tokenizer(w.vocab, model)
    if not os.path.exists(data):
        make_data(w, data)
    return {"model": model, "data": data}
