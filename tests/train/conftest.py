"""Fixtures of the trainer tests: a tiny random Llama in the Hugging Face layout with a
word-level tokenizer."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.data.tokenizer_fixture import WORDS, make_tokenizer


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_llama")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(path)
    make_tokenizer(path)
    return str(path)
