"""Prompt formatting equals the tokenizer's own apply_chat_template; completions are what the
template renders after the prompt (TRL 1.16; tests/data/test_tokenize_trl.py checks real
tokenizers against TRL's own code); truncation and masks; the plain fallback and the
missing-template error."""
import numpy as np
import pytest

from pojax.data import packing, tokenize
from tests.data.tokenizer_fixture import make_tokenizer

ROW = {"prompt": [{"role": "user", "content": "name a color"}], "chosen": "blue", "rejected": "seven"}


def test_chat_template_prompt_equals_apply_chat_template():
    tok = make_tokenizer()
    want = tok.apply_chat_template(ROW["prompt"], add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
    assert tokenize.prompt_ids(tok, ROW, chat=True) == list(want)


def test_encode_paired_masks_and_padding():
    tok = make_tokenizer()
    out = tokenize.encode([ROW], "paired", tok, max_prompt_length=12, max_completion_length=4)
    p = tokenize.prompt_ids(tok, ROW, chat=True)
    ids, mask = out["chosen_ids"][0], out["chosen_mask"][0]
    assert ids.shape == (16,)
    assert list(ids[: len(p)]) == p
    # what the template writes after the prompt (this one writes no end of turn), not text + EOS
    assert list(ids[mask]) == [tok.convert_tokens_to_ids("blue")]
    assert np.all(ids[len(p) + 1:] == tok.pad_token_id)


def test_truncation_keeps_prompt_end_and_completion_start():
    tok = make_tokenizer()
    row = {"prompt": [{"role": "user", "content": "hi hi hi hi hello"}], "chosen": "good good bad", "rejected": "no"}
    out = tokenize.encode([row], "paired", tok, max_prompt_length=3, max_completion_length=2)
    full_p = tokenize.prompt_ids(tok, row, chat=True)
    assert list(out["chosen_ids"][0][:3]) == full_p[-3:]
    assert list(out["chosen_ids"][0][out["chosen_mask"][0]]) == [tok.convert_tokens_to_ids("good")] * 2


def test_plain_fallback_and_missing_template():
    tok = make_tokenizer(chat_template=False)
    assert not tokenize.use_chat_template(tok, "auto")
    row = dict(ROW, prompt_text="name a color")
    assert tokenize.prompt_ids(tok, row, chat=False) == tok("name a color")["input_ids"]
    with pytest.raises(ValueError, match="'yes', but the tokenizer at .* has no chat template"):
        tokenize.encode([row], "paired", tok, max_prompt_length=8, max_completion_length=4, chat_template="yes")


def test_mismatched_rows_pair_each_prompt_with_the_previous_completion():
    ids = np.array([[1, 2, 10, 11, 0], [3, 4, 5, 20, 0], [6, 30, 31, 32, 0]])
    mask = np.array([[0, 0, 1, 1, 0], [0, 0, 0, 1, 0], [0, 1, 1, 1, 0]], bool)
    kl, kl_mask = tokenize.mismatched(ids, mask)
    assert kl[0].tolist()[:5] == [1, 2, 30, 31, 32] and kl_mask[0].tolist() == [0, 0, 1, 1, 1]
    assert kl[1].tolist()[:5] == [3, 4, 5, 10, 11] and kl_mask[1].tolist() == [0, 0, 0, 1, 1]
    assert kl[2].tolist()[:3] == [6, 20, 0] and kl_mask[2].tolist() == [0, 1, 0, 0, 0]


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_encode_ranked_pads_ragged_k():
    tok = make_tokenizer()
    rows = [{"prompt": ROW["prompt"], "completions": ["blue", "seven", "good bad"], "scores": [2.0, 0.5, 1.0]},
            {"prompt": [{"role": "user", "content": "2+2?"}], "completions": ["4", "5"], "scores": [1.0, 0.0]}]
    out = tokenize.encode(rows, "ranked", tok, max_prompt_length=12, max_completion_length=3)
    assert out["input_ids"].shape == out["completion_mask"].shape == (2, 3, 15)
    assert out["input_ids"].dtype == np.int32 and out["completion_mask"].dtype == bool
    assert out["scores"].dtype == np.float32 and out["scores"].tolist() == [[2.0, 0.5, 1.0], [1.0, 0.0, 0.0]]
    assert out["rank_mask"].tolist() == [[True, True, True], [True, True, False]]
    for i, row in enumerate(rows):
        p = tokenize.prompt_ids(tok, row, chat=True)
        for j, text in enumerate(row["completions"]):
            ids, mask = out["input_ids"][i, j], out["completion_mask"][i, j]
            assert ids[: len(p)].tolist() == p
            assert ids[mask].tolist() == ids_of(tok, text)[:3]  # the template writes no EOS
    # the missing third completion of row 1 is all padding, no completion token
    assert np.all(out["input_ids"][1, 2] == tok.pad_token_id) and not out["completion_mask"][1, 2].any()
    # each completion row equals the paired encoding of the same prompt and completion
    paired = tokenize.encode([dict(prompt=rows[0]["prompt"], chosen="blue", rejected="seven")], "paired", tok,
                             max_prompt_length=12, max_completion_length=3)
    np.testing.assert_array_equal(out["input_ids"][0, 0], paired["chosen_ids"][0])
    np.testing.assert_array_equal(out["completion_mask"][0, 1], paired["rejected_mask"][0])


STEP = {"prompt": [{"role": "user", "content": "2+2?"}], "prefix": "hi hello ", "chosen": "4", "rejected": "5"}


def test_encode_step_puts_the_prefix_after_the_generation_prompt_outside_the_mask():
    tok = make_tokenizer()
    out = tokenize.encode([STEP], "step", tok, max_prompt_length=12, max_completion_length=4)
    p = tokenize.prompt_ids(tok, STEP, chat=True)
    assert tok.decode(p).endswith("assistant :")  # the template's generation prompt comes first
    prefix = ids_of(tok, "hi hello")
    for side in ("chosen", "rejected"):
        ids, mask = out[f"{side}_ids"][0], out[f"{side}_mask"][0]
        assert ids[: len(p) + 2].tolist() == p + prefix
        assert ids[mask].tolist() == ids_of(tok, STEP[side])  # the template's rendering: no EOS
        assert np.flatnonzero(mask)[0] == len(p) + 2  # the prefix is not part of the completion
    # the same row as "paired" (a paired row may carry a prefix too) encodes identically
    paired = tokenize.encode([STEP], "paired", tok, max_prompt_length=12, max_completion_length=4)
    for k in out:
        np.testing.assert_array_equal(out[k], paired[k])


def test_step_prefix_is_truncated_as_prompt_keeping_its_end():
    tok = make_tokenizer()
    out = tokenize.encode([STEP], "step", tok, max_prompt_length=3, max_completion_length=4)
    p = tokenize.prompt_ids(tok, STEP, chat=True)
    assert out["chosen_ids"][0][:3].tolist() == (p + ids_of(tok, "hi hello"))[-3:]
    assert out["chosen_mask"][0].tolist() == [False] * 3 + [True, False, False, False]


def test_pair_token_lists_match_encode():
    tok = make_tokenizer()
    rows = [ROW, STEP, {"prompt": [{"role": "user", "content": "hi hi hi hi hello"}], "chosen": "good good bad",
                        "rejected": "no"}]
    kw = dict(max_prompt_length=6, max_completion_length=2)
    lists = tokenize.pair_token_lists(rows, tok, **kw)
    arrays = tokenize.encode(rows, "paired", tok, **kw)
    for i, (prompt, chosen, rejected) in enumerate(lists):
        for side, comp in (("chosen", chosen), ("rejected", rejected)):
            ids, mask = arrays[f"{side}_ids"][i], arrays[f"{side}_mask"][i]
            assert ids[: len(prompt)].tolist() == prompt and ids[mask].tolist() == comp
            assert len(prompt) + len(comp) == int((ids != tok.pad_token_id).sum())
    assert lists[1][0][-2:] == ids_of(tok, "hi hello") and len(lists[2][0]) == 6 and len(lists[2][1]) == 2
    assert packing.pairs_from_arrays(arrays) == lists  # the two routes into the packer agree


def test_step_rows_from_formats_encode():
    from pojax.data import formats

    tok = make_tokenizer()
    # a conversational prompt: the template, as the hand-built STEP row
    row = formats.normalize({"prompt": STEP["prompt"], "prefix": "hi hello ", "chosen_step": "4", "rejected_step": "5"},
                            "step", "steps.jsonl", 0)
    assert row["conversational"]
    got = tokenize.encode([row], "step", tok, max_prompt_length=12, max_completion_length=4)
    want = tokenize.encode([STEP], "step", tok, max_prompt_length=12, max_completion_length=4)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    # a plain-text prompt is raw text, not the template (the old behaviour wrapped it): prompt +
    # prefix, then the step and EOS, as TRL treats (prompt + prefix, step)
    row = formats.normalize({"prompt": "2+2? ", "prefix": "hi hello ", "chosen_step": "4", "rejected_step": "5"},
                            "step", "steps.jsonl", 0)
    assert not row["conversational"]
    got = tokenize.encode([row], "step", tok, max_prompt_length=12, max_completion_length=4)
    ids, mask = got["chosen_ids"][0], got["chosen_mask"][0]
    assert ids[:5].tolist() == ids_of(tok, "2+2? hi hello 4") + [tok.eos_token_id]
    assert mask[:5].tolist() == [False, False, False, True, True]


# ------------------------------------------------------------------- data.completion_end (ELBO-KTO's window)

LLADA_SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# LLaDA-8B-Instruct's published chat template (its tokenizer_config.json): every render ends with
# the assistant header, whether or not add_generation_prompt is set
LLADA_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                  "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
                  "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                  "{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}")


def llada_like_tokenizer():
    """Word-level, with LLaDA's specials (BOS <|startoftext|>, EOS = PAD = <|endoftext|>) and template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>"] + LLADA_SPECIALS + ["user", "assistant", "name", "a", "color", "blue", "good", "bad", "seven"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>",
                                   additional_special_tokens=LLADA_SPECIALS[2:])
    fast.chat_template = LLADA_TEMPLATE
    return fast


def authors_row(tok, row, max_length):
    """(input_ids [max_length], prompt_length, completion_length) of an unpaired conversational row
    as the ELBO-KTO authors build it (data_utils.DataProcessor.build_example, commit 80dc31e): the
    templated prompt as text + the raw completion text, tokenized without added special tokens,
    cut at max_length, then EOS to max_length; the completion is what lies past the prompt's tokens."""
    prompt_text = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    ids = tok(prompt_text + row["completion"][0]["content"], add_special_tokens=False)["input_ids"]
    n_prompt = len(tok(prompt_text, add_special_tokens=False)["input_ids"])
    n_completion = max(min(max_length, len(ids)) - n_prompt, 0)
    return ids[:max_length] + [tok.eos_token_id] * (max_length - len(ids)), n_prompt, n_completion


KTO_ROWS = [{"prompt": [{"role": "user", "content": "name a color"}], "label": True,
             "completion": [{"role": "assistant", "content": "blue good"}]},
            {"prompt": [{"role": "user", "content": "name a"}], "label": False,
             "completion": [{"role": "assistant", "content": "seven bad seven bad seven bad seven bad seven bad"}]}]


def test_completion_end_none_scores_the_authors_window_exactly():
    tok, width = llada_like_tokenizer(), 18  # row 1 runs past 18 tokens: cut as the authors cut it
    out = tokenize.encode(KTO_ROWS, "unpaired", tok, max_prompt_length=0, max_completion_length=0, max_length=width,
                          completion_end="none")
    for i, row in enumerate(KTO_ROWS):
        ids, n_prompt, n_completion = authors_row(tok, row, width)
        assert out["input_ids"][i].tolist() == ids
        assert out["completion_mask"][i].tolist() == [n_prompt <= t < n_prompt + n_completion for t in range(width)]
    assert out["completion_mask"].sum(-1).tolist() == [2, 8]  # the completion's own tokens (row 1: cut), nothing after


def test_default_completion_end_scores_what_the_template_writes_after_the_completion():
    """TRL's window (data.completion_end=eos) with LLaDA's template: <|eot_id|> and the next assistant
    header (the template always appends it) are scored too — L + 4 tokens here, not L + 1."""
    tok = llada_like_tokenizer()
    out = tokenize.encode(KTO_ROWS[:1], "unpaired", tok, max_prompt_length=16, max_completion_length=8)
    window = tok.convert_ids_to_tokens(out["input_ids"][0][out["completion_mask"][0]].tolist())
    assert window == ["blue", "good", "<|eot_id|>", "<|start_header_id|>", "assistant", "<|end_header_id|>"]


def test_completion_end_none_on_plain_rows_appends_no_eos_and_drops_empty_completions():
    tok = make_tokenizer(chat_template=False)
    rows = [dict(prompt_text="name a color ", prompt=[{"role": "user", "content": "name a color"}], completion="blue",
                 label=True, conversational=False),
            dict(prompt_text="2+2?", prompt=[{"role": "user", "content": "2+2?"}], completion="", label=False,
                 conversational=False)]
    report = {}
    out = tokenize.encode(rows, "unpaired", tok, max_prompt_length=8, max_completion_length=4, completion_end="none",
                          report=report)
    assert report["dropped_rows"] == 1 and report["kept_index"].tolist() == [0]
    assert out["input_ids"][0][out["completion_mask"][0]].tolist() == ids_of(tok, "blue")
    eos = tokenize.encode(rows[:1], "unpaired", tok, max_prompt_length=8, max_completion_length=4)
    assert eos["input_ids"][0][eos["completion_mask"][0]].tolist() == ids_of(tok, "blue") + [tok.eos_token_id]
    with pytest.raises(ValueError, match="config key data.completion_end: 'eot' is not one of eos, none"):
        tokenize.encode(rows, "unpaired", tok, max_prompt_length=8, max_completion_length=4, completion_end="eot")


def test_elbo_draws_score_exactly_the_completion_tokens():
    """ELBO-KTO's L: every draw masks l of the L completion tokens (no EOS among them), weight L / l,
    and some draws mask all L."""
    from pojax.objectives.diffusion import example_draws

    tok = llada_like_tokenizer()
    out = tokenize.encode(KTO_ROWS * 32, "unpaired", tok, max_prompt_length=0, max_completion_length=0,
                          max_length=24, completion_end="none")
    window = out["completion_mask"]
    draws = example_draws(0, np.arange(len(window)), window, n_mc=8, estimator="length")
    mask, weight = np.asarray(draws.mask), np.asarray(draws.weight)
    n = window.sum(-1)[:, None]
    assert not (mask & ~window[:, None]).any()
    np.testing.assert_allclose(weight * mask.sum(-1), np.broadcast_to(n, weight.shape), rtol=1e-6)
    assert {2, 10} == {int(x) for x in n[:, 0]} and (mask.sum(-1) == n).any(axis=1).sum() > 0
