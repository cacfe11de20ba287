"""Prompt formatting equals the tokenizer's own apply_chat_template; truncation and masks follow
TRL; the plain fallback and the missing-template error."""
import numpy as np
import pytest

from pojax.data import tokenize
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
    assert list(ids[mask]) == [tok.convert_tokens_to_ids("blue"), tok.eos_token_id]
    assert np.all(ids[len(p) + 2:] == tok.pad_token_id)


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
    with pytest.raises(ValueError, match="'yes', but the tokenizer has no chat template"):
        tokenize.encode([row], "paired", tok, max_prompt_length=8, max_completion_length=4, chat_template="yes")


def test_mismatched_rows_pair_each_prompt_with_the_previous_completion():
    ids = np.array([[1, 2, 10, 11, 0], [3, 4, 5, 20, 0], [6, 30, 31, 32, 0]])
    mask = np.array([[0, 0, 1, 1, 0], [0, 0, 0, 1, 0], [0, 1, 1, 1, 0]], bool)
    kl, kl_mask = tokenize.mismatched(ids, mask)
    assert kl[0].tolist()[:5] == [1, 2, 30, 31, 32] and kl_mask[0].tolist() == [0, 0, 1, 1, 1]
    assert kl[1].tolist()[:5] == [3, 4, 5, 10, 11] and kl_mask[1].tolist() == [0, 0, 0, 1, 1]
    assert kl[2].tolist()[:3] == [6, 20, 0] and kl_mask[2].tolist() == [0, 1, 0, 0, 0]
