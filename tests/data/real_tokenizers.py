"""Real tokenizers with their published chat templates, built offline from files that PyPI
packages ship (no hub): the test fixture of pojax.data.tokenize's parity with TRL.

  llama3_base        Meta's Llama 3 BPE (``llama_models/llama3/tokenizer.model``, tiktoken format,
                     converted with transformers' TikTokenConverter; Llama 3.1's 256 special tokens;
                     BOS prepended by the post-processor as Meta's tokenizer.json does), no chat
                     template, eos <|end_of_text|>: the base model, for standard rows
  llama3_1_instruct  the same BPE, eos <|eot_id|>, TRL's copy of the Llama 3.1 Instruct template
  mistral_v0_3       Mistral's SentencePiece v3 (``mistral_common/data/*.model.v3``, converted as
                     ``AutoTokenizer`` converts a tokenizer.model) with the Mistral Instruct v0.3
                     template written below from its published format (tool calls left out)
  qwen2_5            the Llama 3 BPE with Qwen's specials added (<|endoftext|>, <|im_start|>,
                     <|im_end|>, <think>, </think>), no BOS, eos <|im_end|>, TRL's qwen2_5.jinja
  qwen3              as qwen2_5 with TRL's qwen3.jinja (the think block, ``enable_thinking``)
  qwen3_training     as qwen3 with TRL's qwen3_training.jinja ({% generation %} markers)

Package files are found with importlib.util.find_spec (the packages are not imported). Each
tokenizer is built once per test run — in a directory the xdist workers share, under a file lock,
so two workers never convert the same 128k-token vocabulary twice — saved with save_pretrained
and loaded back with AutoTokenizer (so ``name_or_path`` is its directory, as for a user's tokenizer).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil

import pytest

FAMILIES = ("llama3_base", "llama3_1_instruct", "mistral_v0_3", "qwen2_5", "qwen3", "qwen3_training")

# Llama 3.1's special tokens, ids 128000.. (Meta's tokenizer.json for Llama-3.1-8B-Instruct)
LLAMA3_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
                   + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)])
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# Mistral Instruct v0.3 (tokenizer v3): "<s>[INST] user[/INST] answer</s>[INST] next[/INST]"; the
# system message goes before the last user message; assistant contents are trimmed and end in EOS.
MISTRAL_V0_3_TEMPLATE = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set ns = namespace(index=0) %}
{%- for message in loop_messages %}
    {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
        {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif %}
    {%- set ns.index = ns.index + 1 %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""


def package_file(package: str, *parts: str) -> str:
    """A data file of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"package {package} is not installed (pip install -e '.[test]')")
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    if not os.path.exists(path):
        pytest.skip(f"{path} is missing")
    return path


def trl_template(name: str) -> str:
    with open(package_file("trl", "chat_templates", f"{name}.jinja")) as f:
        return f.read()


def _llama3_bpe():
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(vocab_file=package_file("llama_models", "llama3", "tokenizer.model"),
                            pattern=LLAMA3_PATTERN, extra_special_tokens=LLAMA3_SPECIALS).converted()
    bos = LLAMA3_SPECIALS[0]
    tok.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, 128000)])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token="<|end_of_text|>")


def _qwen(base, template: str):
    from tokenizers import processors

    tok = base.backend_tokenizer
    tok.add_special_tokens(QWEN_SPECIALS)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # Qwen adds no BOS
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = trl_template(template)
    return fast


def _mistral(out: str):
    from transformers import AutoTokenizer

    os.makedirs(out, exist_ok=True)
    shutil.copy(package_file("mistral_common", "data", "mistral_instruct_tokenizer_240323.model.v3"),
                os.path.join(out, "tokenizer.model"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                   "add_bos_token": True, "add_eos_token": False, "legacy": False}, f)
    fast = AutoTokenizer.from_pretrained(out)
    fast.chat_template = MISTRAL_V0_3_TEMPLATE
    return fast


class RealTokenizers:
    """``get(name)``: the tokenizer of a family in FAMILIES, built on first use under ``root``."""

    def __init__(self, root: str):
        self.root = root
        self._loaded: dict = {}

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def get(self, name: str):
        if name not in FAMILIES:
            raise KeyError(f"{name!r}; known: {', '.join(FAMILIES)}")
        if name not in self._loaded:
            from transformers import AutoTokenizer

            from filelock import FileLock

            out = self.path(name)
            with FileLock(os.path.join(self.root, "build.lock")):
                if not os.path.exists(os.path.join(out, "tokenizer_config.json")):
                    self._build(name, out)
            self._loaded[name] = AutoTokenizer.from_pretrained(out)
        return self._loaded[name]

    def _build(self, name: str, out: str) -> None:
        if name == "mistral_v0_3":
            tok = _mistral(out + ".src")
        else:
            base_dir = self.path("llama3_base")
            if name != "llama3_base" and not os.path.exists(os.path.join(base_dir, "tokenizer_config.json")):
                self._build("llama3_base", base_dir)
            from transformers import AutoTokenizer

            if name == "llama3_base":
                tok = _llama3_bpe()
            elif name == "llama3_1_instruct":
                tok = AutoTokenizer.from_pretrained(base_dir)
                tok.eos_token = "<|eot_id|>"
                tok.chat_template = trl_template("llama3_1")
            else:
                tmpl = {"qwen2_5": "qwen2_5", "qwen3": "qwen3", "qwen3_training": "qwen3_training"}[name]
                tok = _qwen(AutoTokenizer.from_pretrained(base_dir), tmpl)
        tok.save_pretrained(out)


@pytest.fixture(scope="session")
def real_tokenizers(tmp_path_factory) -> RealTokenizers:
    """The run's RealTokenizers (built lazily, cached in a tmp dir that every xdist worker of the
    run shares: the parent of the workers' base temp dirs)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "real_tokenizers"
    root.mkdir(exist_ok=True)
    return RealTokenizers(str(root))
