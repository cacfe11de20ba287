"""pojax.data.tokenize against TRL 1.16's own dataset preparation, token for token, on real
tokenizers (tests/data/real_tokenizers.py): DPO's ``DPOTrainer._prepare_dataset`` +
``DataCollatorForPreference`` (paired, ranked and step rows), KTO's ``_prepare_dataset`` +
collator truncation (unpaired rows), SFT's prompt-completion tokenization (completion mask).
Rows go through pojax.data.formats first (written as JSONL, read back), as a user's file does."""
import json
import types

import numpy as np
import pytest

from pojax.data import formats, tokenize
from tests.data.real_tokenizers import real_tokenizers  # noqa: F401  (the session fixture)

datasets = pytest.importorskip("datasets")
trl = pytest.importorskip("trl")


def msg(role, content):
    return {"role": role, "content": content}


def conv(prompt, chosen, rejected, **extra):
    return {"prompt": prompt, "chosen": [msg("assistant", chosen)], "rejected": [msg("assistant", rejected)], **extra}


CONVERSATIONAL = [
    conv([msg("system", "You are terse."), msg("user", "Name a primary color.")], "Blue.", "Seven."),
    conv([msg("user", "Hi!"), msg("assistant", "Hello! How can I help?"), msg("user", "What is 2+2?")],
         "2 + 2 = 4", "  5, obviously.  "),
    conv([msg("user", "Traduisez « bonjour » en allemand. 東京は日本の首都です。🗼")], "« Guten Tag » — ou « Hallo ».",
         "Hola"),
    conv([msg("user", "Write a Python function that squares x.")], "```python\ndef square(x):\n    return x * x\n```",
         "def f(x): pass\n"),
    conv([msg("user", "  Leading and trailing spaces?  ")], "  Kept, or trimmed by the template.  ", "\nno\n"),
]
STANDARD = [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    {"prompt": "def square(x):\n", "chosen": "    return x * x\n", "rejected": "    pass"},
    {"prompt": "  Café ünï 🗼 ", "chosen": "ok  ", "rejected": "non"},
    {"prompt": "Q: 2+2?\nA:", "chosen": "4", "rejected": " 5"},
]
TOOLS = json.dumps([{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                                      "parameters": {"type": "object", "properties": {
                                                          "city": {"type": "string"}}, "required": ["city"]}}}])
CPU = dict(report_to="none", use_cpu=True, bf16=False)  # TrainingArguments on a machine without a GPU
CHAT = ("llama3_1_instruct", "mistral_v0_3", "qwen2_5", "qwen3")
PLAIN = ("llama3_base", "llama3_1_instruct", "mistral_v0_3", "qwen2_5")


def trl_dpo(tok, rows, max_length=None, mode="keep_start", tmp=None):
    """TRL's rows: the prepared dataset collated one example at a time → (chosen, rejected) pairs
    of (ids, completion mask), or None for a row TRL dropped."""
    from trl import DPOConfig
    from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer

    args = DPOConfig(output_dir=str(tmp), max_length=max_length, truncation_mode=mode, **CPU)
    ds = datasets.Dataset.from_list([dict(r, _i=i) for i, r in enumerate(rows)])
    out = DPOTrainer._prepare_dataset(types.SimpleNamespace(_tokenizer=tok), ds, tok, args, "train")
    collate = DataCollatorForPreference(pad_token_id=0, max_length=max_length, truncation_mode=mode)
    got = [None] * len(rows)
    for ex in out:
        b = collate([{k: ex[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}])
        got[ex["_i"]] = [(b["input_ids"][s][b["attention_mask"][s] == 1].tolist(),
                          b["completion_mask"][s][b["attention_mask"][s] == 1].tolist()) for s in (0, 1)]
    return got


def load(rows, fmt, tmp_path):
    path = tmp_path / f"{fmt}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return formats.load(str(path), fmt)


def assert_same(ids, mask, want, pad):
    """One pojax row (right-padded) equals TRL's unpadded (ids, completion mask)."""
    w_ids, w_mask = want
    n = len(w_ids)
    assert ids[:n].tolist() == w_ids
    assert mask[:n].astype(int).tolist() == w_mask
    assert not mask[n:].any() and (ids[n:] == pad).all()


def check_paired(tok, rows, tmp_path, *, max_length=0, mode="keep_start", mp=0, mc=0):
    want = trl_dpo(tok, rows, max_length or None, mode, tmp_path)
    report = {}
    width = max_length or 512
    got = tokenize.encode(load(rows, "paired", tmp_path), "paired", tok, max_prompt_length=mp or (0 if max_length else 256),
                          max_completion_length=mc or (0 if max_length else 256), max_length=max_length,
                          truncation_mode=mode, report=report)
    kept = [i for i, w in enumerate(want) if w is not None]
    assert report["kept_index"].tolist() == kept and report["dropped_rows"] == len(rows) - len(kept)
    pad = tokenize.pad_id(tok)
    for j, i in enumerate(kept):
        for s, side in enumerate(("chosen", "rejected")):
            assert got[f"{side}_ids"].shape[1] == width
            assert_same(got[f"{side}_ids"][j], got[f"{side}_mask"][j], want[i][s], pad)
    return want


@pytest.mark.parametrize("family", CHAT)
def test_conversational_pairs_equal_trl(real_tokenizers, family, tmp_path):
    tok = real_tokenizers.get(family)
    want = check_paired(tok, CONVERSATIONAL, tmp_path)
    # the completion carries the template's end of turn, not the plain tokens + eos
    end = {"llama3_1_instruct": "<|eot_id|>", "mistral_v0_3": "</s>", "qwen2_5": "<|im_end|>\n",
           "qwen3": "<|im_end|>\n"}[family]
    ids, mask = want[0][0]
    assert tok.decode([t for t, m in zip(ids, mask) if m]).endswith(end)


@pytest.mark.parametrize("family", PLAIN)
def test_standard_pairs_equal_trl(real_tokenizers, family, tmp_path):
    tok = real_tokenizers.get(family)
    want = check_paired(tok, STANDARD, tmp_path)
    ids, mask = want[0][0]
    assert ids[-1] == tok.eos_token_id and mask[-1] == 1  # EOS appended as text, as TRL appends it
    if tok.bos_token_id is not None:
        assert ids[0] == tok.bos_token_id  # the tokenizer's own special tokens, no template


@pytest.mark.parametrize("family", ("llama3_1_instruct", "qwen2_5", "qwen3"))
def test_tools_and_chat_template_kwargs_equal_trl(real_tokenizers, family, tmp_path):
    tok = real_tokenizers.get(family)
    rows = [dict(r, tools=TOOLS) for r in CONVERSATIONAL[:3]]
    check_paired(tok, rows, tmp_path)
    if family == "qwen3":
        for thinking in (False, True):
            rows = [dict(r, chat_template_kwargs={"enable_thinking": thinking}) for r in CONVERSATIONAL]
            want = check_paired(tok, rows, tmp_path)
            ids, mask = want[0][0]
            completion = tok.decode([t for t, m in zip(ids, mask) if m])
            # enable_thinking=False puts the empty think block in the prompt, else in the completion
            assert completion.startswith("<think>") is thinking


@pytest.mark.parametrize("mode", ("keep_start", "keep_end"))
def test_max_length_truncation_and_drops_equal_trl(real_tokenizers, mode, tmp_path):
    tok = real_tokenizers.get("llama3_1_instruct")
    long_prompt = conv([msg("user", "word " * 80)], "short", "also short")
    rows = CONVERSATIONAL + [long_prompt]
    want = check_paired(tok, rows, tmp_path, max_length=64, mode=mode)
    assert (want[-1] is None) is (mode == "keep_start")  # dropped only with keep_start, as TRL drops it
    want = check_paired(tok, STANDARD, tmp_path, max_length=6, mode=mode)


def test_mistral_system_turn_shifts_the_boundary_as_trl(real_tokenizers, tmp_path):
    """Mistral v0.3 writes the system message only before a *last* user turn, so the prompt alone
    and prompt + completion differ early: TRL's common prefix decides, and so does pojax."""
    tok = real_tokenizers.get("mistral_v0_3")
    want = check_paired(tok, CONVERSATIONAL[:1], tmp_path)
    ids, mask = want[0][0]
    assert "You are terse." not in tok.decode(ids)


def trl_kto(tok, rows, max_length, tmp):
    """TRL's KTO rows: (ids, completion mask) truncated as its collator truncates, by source row
    (None: dropped); paired rows come back in TRL's unpaired order instead."""
    from trl import KTOConfig
    from trl.trainer.kto_trainer import KTOTrainer

    args = KTOConfig(output_dir=str(tmp), max_length=max_length, **CPU)
    ds = datasets.Dataset.from_list([dict(r, _i=i) for i, r in enumerate(rows)])
    fake = types.SimpleNamespace(_tokenizer=tok, calculate_KL=False, desirable_weight=1.0, undesirable_weight=1.0)
    out = KTOTrainer._prepare_dataset(fake, ds, tok, args, "train")
    got = [] if "chosen" in rows[0] else [None] * len(rows)
    for ex in out:
        ids, mask = ex["prompt_ids"] + ex["completion_ids"], [0] * len(ex["prompt_ids"]) + [1] * len(ex["completion_ids"])
        one = (ids[:max_length], mask[:max_length]) if max_length else (ids, mask)
        if "chosen" in rows[0]:
            got.append(one)
        else:
            got[ex["_i"]] = one
    return got


@pytest.mark.parametrize("family,standard", [("qwen3", False), ("mistral_v0_3", False), ("llama3_base", True)])
def test_unpaired_rows_equal_trl_kto(real_tokenizers, family, standard, tmp_path):
    tok = real_tokenizers.get(family)
    src = STANDARD if standard else CONVERSATIONAL
    rows = [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
            for r in src for side in ("chosen", "rejected")]
    rows.append({"prompt": "word " * 60 if standard else [msg("user", "word " * 60)],
                 "completion": "x" if standard else [msg("assistant", "x")], "label": True})
    for max_length in (0, 24):
        want = trl_kto(tok, rows, max_length or None, tmp_path)
        report = {}
        got = tokenize.encode(load(rows, "unpaired", tmp_path), "unpaired", tok, max_prompt_length=0 if max_length else 256,
                              max_completion_length=0 if max_length else 256, max_length=max_length, report=report)
        kept = [i for i, w in enumerate(want) if w is not None]
        assert report["kept_index"].tolist() == kept and (max_length == 0 or len(kept) < len(rows))
        for j, i in enumerate(kept):
            assert_same(got["input_ids"][j], got["completion_mask"][j], want[i], tokenize.pad_id(tok))
            assert bool(got["label"][j]) == rows[i]["label"]


def test_paired_rows_unpaired_equal_trl_kto_in_trls_order(real_tokenizers, tmp_path):
    """KTO on paired rows: pojax's formats.unpair gives TRL's rows (unpair_preference_dataset, then
    KTO's preparation) in TRL's order, so each row's mismatched KL completion (the previous row's,
    tokenize.mismatched) is another prompt's, as in TRL."""
    from trl.data_utils import unpair_preference_dataset

    tok = real_tokenizers.get("qwen2_5")
    ds = unpair_preference_dataset(datasets.Dataset.from_list(CONVERSATIONAL))
    want = trl_kto(tok, [dict(r) for r in ds], None, tmp_path)
    got = tokenize.encode(formats.unpair(load(CONVERSATIONAL, "paired", tmp_path)), "unpaired", tok,
                          max_prompt_length=256, max_completion_length=256)
    assert got["label"].tolist() == ds["label"]
    for j, w in enumerate(want):
        assert_same(got["input_ids"][j], got["completion_mask"][j], w, tokenize.pad_id(tok))
    kl_ids, kl_mask = tokenize.mismatched(got["input_ids"], got["completion_mask"])
    for j in range(len(kl_ids)):  # the twin's completion is another pair's
        twin = kl_ids[j][kl_mask[j]].tolist()
        own = [got["input_ids"][k][got["completion_mask"][k]].tolist() for k in range(len(kl_ids))
               if ds[k]["prompt"] == ds[j]["prompt"]]
        assert twin not in own


@pytest.mark.parametrize("family", ("llama3_1_instruct", "qwen3", "llama3_base"))
def test_ranked_rows_equal_trl_dpo_per_completion(real_tokenizers, family, tmp_path):
    tok = real_tokenizers.get(family)
    src = STANDARD if family == "llama3_base" else CONVERSATIONAL
    rows = [{"prompt": r["prompt"], "completions": [r["chosen"], r["rejected"], r["chosen"]], "scores": [2, 0, 1]}
            for r in src]
    got = tokenize.encode(load(rows, "ranked", tmp_path), "ranked", tok, max_prompt_length=256, max_completion_length=256)
    pairs = trl_dpo(tok, src, None, "keep_start", tmp_path)
    for i in range(len(rows)):
        for j, s in ((0, 0), (1, 1), (2, 0)):
            assert_same(got["input_ids"][i, j], got["completion_mask"][i, j], pairs[i][s], tokenize.pad_id(tok))


def test_step_rows_equal_trl_dpo_on_prompt_plus_prefix(real_tokenizers, tmp_path):
    """A standard step row is DPO on (prompt + prefix, step); a conversational one renders the
    prefix as the start of the assistant turn and the steps as its continuation."""
    tok = real_tokenizers.get("llama3_base")
    rows = [{"prompt": "Q: 12*3?\n", "prefix": "Step 1: 12*3 = 36.\n", "chosen_step": "Answer: 36", "rejected_step":
             "Answer: 38"}]
    want = trl_dpo(tok, [{"prompt": r["prompt"] + r["prefix"], "chosen": r["chosen_step"], "rejected": r["rejected_step"]}
                         for r in rows], None, "keep_start", tmp_path)
    got = tokenize.encode(load(rows, "step", tmp_path), "step", tok, max_prompt_length=64, max_completion_length=64)
    for s, side in enumerate(("chosen", "rejected")):
        assert_same(got[f"{side}_ids"][0], got[f"{side}_mask"][0], want[0][s], tokenize.pad_id(tok))
    tok = real_tokenizers.get("qwen2_5")
    row = dict(rows[0], prompt=[msg("user", "Q: 12*3?")])
    got = tokenize.encode(load([row], "step", tmp_path), "step", tok, max_prompt_length=128, max_completion_length=64)
    for side in ("chosen", "rejected"):
        ids, mask = got[f"{side}_ids"][0], got[f"{side}_mask"][0]
        full = tok.apply_chat_template([msg("user", "Q: 12*3?"), msg("assistant", row["prefix"] + row[f"{side}_step"])])
        full = list(full["input_ids"] if hasattr(full, "keys") else full)
        assert ids[: len(full)].tolist() == full  # the whole conversation, token for token
        assert tok.decode(ids[mask]) == row[f"{side}_step"] + "<|im_end|>\n"  # only the step is trained


def test_sft_completion_mask_equals_trl_sft(real_tokenizers, tmp_path):
    """pojax's SFT rows (the chosen sides) equal SFTTrainer's prompt-completion tokenization with
    completion_only_loss: ids and the completion mask."""
    from trl import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    for family, src in (("llama3_1_instruct", CONVERSATIONAL), ("llama3_base", STANDARD)):
        tok = real_tokenizers.get(family)
        rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in src]
        args = SFTConfig(output_dir=str(tmp_path), max_length=None, **CPU)
        fake = types.SimpleNamespace(_tokenizer=tok, completion_only_loss=True, chat_template=None, padding_free=False,
                                     _is_vision_dataset=False)
        out = SFTTrainer._prepare_dataset(fake, datasets.Dataset.from_list(rows), tok, args, packing=False,
                                          formatting_func=None, dataset_name="train")
        got = tokenize.encode(load(src, "paired", tmp_path), "paired", tok, max_prompt_length=256,
                              max_completion_length=256)
        for i, ex in enumerate(out):
            mask = [int(label != -100) for label in ex["labels"]]
            assert_same(got["chosen_ids"][i], got["chosen_mask"][i], (ex["input_ids"], mask), tokenize.pad_id(tok))


def test_conversational_rows_without_a_template_name_the_key_and_tokenizer(real_tokenizers, tmp_path):
    from pojax.config import ConfigError

    tok = real_tokenizers.get("llama3_base")
    rows = load(CONVERSATIONAL, "paired", tmp_path)
    with pytest.raises(ConfigError, match=r"^config key data.chat_template: conversational rows .* the tokenizer at "
                                          rf"{real_tokenizers.path('llama3_base')} has no chat template"):
        tokenize.encode(rows, "paired", tok, max_prompt_length=64, max_completion_length=64)
    # data.chat_template=no trains on the plain text instead
    out = tokenize.encode(rows, "paired", tok, max_prompt_length=64, max_completion_length=64, chat_template="no")
    assert out["chosen_ids"].shape == (len(rows), 128)


def test_every_row_dropped_is_one_config_error(real_tokenizers, tmp_path):
    from pojax.config import ConfigError

    tok = real_tokenizers.get("llama3_base")
    with pytest.raises(ConfigError, match=r"^config key data.max_length: 2: every one of the 4 rows"):
        tokenize.encode(load(STANDARD, "paired", tmp_path), "paired", tok, max_prompt_length=0,
                        max_completion_length=0, max_length=2)
