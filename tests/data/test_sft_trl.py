"""pojax.data.sft against TRL 1.16's ``SFTTrainer._prepare_dataset``, token for token, on real
tokenizers (tests/data/real_tokenizers.py): conversational language modeling (``messages``,
ShareGPT ``conversations``), plain ``text``, prompt-completion (conversational and standard),
completion-only and assistant-only loss (the template's ``{% generation %}`` markers, or TRL's
training template), and max_length truncation with TRL's drops. Rows go through
pojax.data.formats first (written as JSONL, read back), as a user's file does."""
import json
import types

import numpy as np
import pytest

from pojax.config import ConfigError
from pojax.data import formats, sft, tokenize
from tests.data.real_tokenizers import real_tokenizers  # noqa: F401  (the session fixture)

datasets = pytest.importorskip("datasets")
trl = pytest.importorskip("trl")

CPU = dict(report_to="none", use_cpu=True, bf16=False)


def msg(role, content):
    return {"role": role, "content": content}


MESSAGES = [
    {"messages": [msg("system", "You are terse."), msg("user", "Name a primary color."), msg("assistant", "Blue.")]},
    {"messages": [msg("user", "Hi!"), msg("assistant", "Hello! How can I help?"), msg("user", "What is 2+2?"),
                  msg("assistant", "  4, of course.  ")]},
    {"messages": [msg("user", "東京は日本の首都です。🗼 Traduisez « bonjour »."), msg("assistant", "« Guten Tag ».")]},
    {"messages": [msg("user", "Square x in Python."), msg("assistant", "```python\ndef square(x):\n    return x * x\n```")]},
]
TEXT = [{"text": "The sky is blue."}, {"text": "def square(x):\n    return x * x\n"}, {"text": "  Café ünï 🗼 "}]
PROMPT_COMPLETION = [
    {"prompt": [msg("system", "Be brief."), msg("user", "Capital of France?")], "completion": [msg("assistant", "Paris.")]},
    {"prompt": [msg("user", "Hi!"), msg("assistant", "Hello!"), msg("user", "2+2?")], "completion": [msg("assistant", "4")]},
    {"prompt": [msg("user", "  spaces  ")], "completion": [msg("assistant", "\nkept?\n")]},
]
PROMPT_COMPLETION_TEXT = [{"prompt": "The sky is", "completion": " blue."}, {"prompt": "Q: 2+2?\nA:", "completion": "4"},
                          {"prompt": "def f(x):\n", "completion": "    return x\n"}]


def trl_sft(tok, rows, *, completion_only_loss=None, assistant_only_loss=False, max_length=None,
            mode="keep_start", tmp=None):
    """TRL's prepared rows: [(input_ids, trained mask)] in order, with None for a dropped row."""
    from trl import SFTConfig
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers
    from trl.trainer.sft_trainer import SFTTrainer

    args = SFTConfig(output_dir=str(tmp), max_length=max_length, truncation_mode=mode,
                     assistant_only_loss=assistant_only_loss, completion_only_loss=completion_only_loss, **CPU)
    ds = datasets.Dataset.from_list([dict(r, _i=i) for i, r in enumerate(rows)])
    sample = rows[0]
    only_completion = ("prompt" in sample and "completion" in sample) if completion_only_loss is None else completion_only_loss
    template = (get_training_chat_template(tok) if assistant_only_loss and not has_generation_markers(tok.chat_template)
                else None)  # as SFTTrainer.__init__ picks it
    fake = types.SimpleNamespace(_tokenizer=tok, completion_only_loss=only_completion, chat_template=template,
                                 padding_free=False, _is_vision_dataset=False)
    out = SFTTrainer._prepare_dataset(fake, ds, tok, args, packing=False, formatting_func=None, dataset_name="train")
    got = [None] * len(rows)
    for ex in out:
        got[ex["_i"]] = (list(ex["input_ids"]), [int(label != -100) for label in ex["labels"]])
    return got


def load(rows, tmp_path, name="sft"):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return formats.load(str(path), "sft")


def assert_rows(got: dict, want: list, tok):
    kept = [w for w in want if w is not None]
    assert len(got["input_ids"]) == len(kept)
    pad = tokenize.pad_id(tok)
    for ids, mask, (w_ids, w_mask) in zip(got["input_ids"], got["completion_mask"], kept):
        n = len(w_ids)
        assert ids[:n].tolist() == w_ids
        assert mask[:n].astype(int).tolist() == w_mask
        assert (ids[n:] == pad).all() and not mask[n:].any()


@pytest.mark.parametrize("family", ["llama3_1_instruct", "mistral_v0_3", "qwen3"])
def test_conversations_equal_trl(real_tokenizers, family, tmp_path):
    """messages rows: the whole rendered conversation, every token trained (TRL's default)."""
    tok = real_tokenizers.get(family)
    rows = MESSAGES[1:] if family == "mistral_v0_3" else MESSAGES  # Mistral's template takes a system turn only last
    got = sft.encode(load(rows, tmp_path), tok, width=256)
    assert_rows(got, trl_sft(tok, rows, tmp=tmp_path), tok)


def test_sharegpt_conversations_equal_trl_messages(real_tokenizers, tmp_path):
    """ShareGPT rows ({from, value}) equal TRL's on TRL's roles, and ShareGPT's own "human" /
    "gpt" are read as user / assistant (TRL passes them to the template unchanged, which drops
    those turns: pojax departs, see pojax.data.formats)."""
    tok = real_tokenizers.get("qwen2_5")
    share = lambda names: [{"conversations": [{"from": names.get(m["role"], m["role"]), "value": m["content"]}
                                              for m in r["messages"]]} for r in MESSAGES]
    got = sft.encode(load(share({}), tmp_path), tok, width=256)
    assert_rows(got, trl_sft(tok, share({}), tmp=tmp_path), tok)
    renamed = sft.encode(load(share({"user": "human", "assistant": "gpt"}), tmp_path, "sharegpt"), tok, width=256)
    assert np.array_equal(renamed["input_ids"], got["input_ids"])
    assert np.array_equal(renamed["input_ids"], sft.encode(load(MESSAGES, tmp_path, "m"), tok, width=256)["input_ids"])


@pytest.mark.parametrize("family", ["llama3_base", "mistral_v0_3", "qwen2_5"])
def test_text_rows_equal_trl(real_tokenizers, family, tmp_path):
    """text rows: raw text with the tokenizer's special tokens and EOS appended as text."""
    tok = real_tokenizers.get(family)
    got = sft.encode(load(TEXT, tmp_path), tok, width=64)
    assert_rows(got, trl_sft(tok, TEXT, tmp=tmp_path), tok)


@pytest.mark.parametrize("family,rows", [("llama3_1_instruct", PROMPT_COMPLETION), ("qwen3", PROMPT_COMPLETION),
                                         ("llama3_base", PROMPT_COMPLETION_TEXT)])
@pytest.mark.parametrize("completion_only", [True, False])
def test_prompt_completion_equal_trl(real_tokenizers, family, rows, completion_only, tmp_path):
    tok = real_tokenizers.get(family)
    got = sft.encode(load(rows, tmp_path), tok, width=128, completion_only_loss=completion_only)
    want = trl_sft(tok, rows, completion_only_loss=completion_only, tmp=tmp_path)
    assert_rows(got, want, tok)
    if completion_only:  # an independent look: the trained tokens decode to the completion as the template writes it
        first = got["input_ids"][0][got["completion_mask"][0]]
        assert "Paris." in tok.decode(first) or " blue." in tok.decode(first)
        assert tokenize.text_of(rows[0]["prompt"]) not in tok.decode(first)


@pytest.mark.parametrize("family", ["qwen2_5", "qwen3", "qwen3_training"])
def test_assistant_only_loss_equals_trl(real_tokenizers, family, tmp_path):
    """assistant_only_loss: the template's own generation markers (qwen3_training) or TRL's
    training template for the tokenizer's (qwen2_5, qwen3); multi-turn rows train every
    assistant turn and nothing else."""
    tok = real_tokenizers.get(family)
    got = sft.encode(load(MESSAGES, tmp_path), tok, width=256, assistant_only_loss=True)
    assert_rows(got, trl_sft(tok, MESSAGES, assistant_only_loss=True, tmp=tmp_path), tok)
    trained = tok.decode(got["input_ids"][1][got["completion_mask"][1]])
    assert "Hello! How can I help?" in trained and "4, of course." in trained and "What is 2+2?" not in trained
    both = sft.encode(load(PROMPT_COMPLETION, tmp_path, "pc"), tok, width=256, assistant_only_loss=True)
    assert_rows(both, trl_sft(tok, PROMPT_COMPLETION, assistant_only_loss=True, tmp=tmp_path), tok)


@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_max_length_truncation_and_drops_equal_trl(real_tokenizers, mode, tmp_path):
    tok = real_tokenizers.get("qwen3")
    rows = PROMPT_COMPLETION + [{"prompt": [msg("user", "word " * 40)], "completion": [msg("assistant", "ok")]}]
    report = {}
    got = sft.encode(load(rows, tmp_path), tok, width=24, truncation_mode=mode, report=report)
    want = trl_sft(tok, rows, max_length=24, mode=mode, tmp=tmp_path)
    assert_rows(got, want, tok)
    assert report["dropped_rows"] == sum(w is None for w in want)
    assert (want[-1] is None) == (mode == "keep_start") and want[0] is not None  # the long prompt fills 24 tokens
    assert report["kept_index"].tolist() == [i for i, w in enumerate(want) if w is not None]


def test_assistant_only_loss_refusals_name_the_key(real_tokenizers, tmp_path):
    mistral = real_tokenizers.get("mistral_v0_3")  # a template TRL has no training version of
    with pytest.raises(ConfigError, match=r"^config key data.assistant_only_loss: True, but the chat template of the "
                                          rf"tokenizer at {real_tokenizers.path('mistral_v0_3')} has no \{{% generation"):
        sft.encode(load(MESSAGES[1:], tmp_path), mistral, width=64, assistant_only_loss=True)
    with pytest.raises(ConfigError, match=r"^config key data.assistant_only_loss: True needs conversational rows .* "
                                          r"row 0 is plain text"):
        sft.encode(load(TEXT, tmp_path), real_tokenizers.get("qwen3_training"), width=64, assistant_only_loss=True,
                   path="x.jsonl")
    no_turn = [{"messages": [msg("user", "only a question")]}]
    with pytest.raises(formats.DataError, match=r"^x.jsonl: row 0: field 'messages': no assistant tokens"):
        sft.encode(load(no_turn, tmp_path), real_tokenizers.get("qwen3_training"), width=64, assistant_only_loss=True,
                   path="x.jsonl")


def test_bad_sft_rows_name_file_row_and_field(tmp_path):
    cases = [({"messages": "hi"}, "messages", "expected a list of messages, got a string"),
             ({"conversations": [{"from": "bot", "value": "x"}]}, "conversations", "every turn needs 'from'"),
             ({"prompt": "p"}, "completion", "missing"),
             ({"text": ""}, "text", "expected a non-empty string"),
             ({"chosen": "a"}, None, "an SFT row needs 'messages'")]
    for row, field, message in cases:
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps(row) + "\n")
        where = f"row 1: field {field!r}" if field else "row 1"
        with pytest.raises(formats.DataError, match=rf"bad.jsonl: {where}: {message}"):
            formats.load(str(path), "sft")
    assert np.array_equal([r.get("text") for r in formats.load(str(path), "sft", skip_bad_rows=True)], ["fine"])
