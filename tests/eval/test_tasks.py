"""Task scoring: GSM8K answer extraction by hand, MMLU letter choice and JSONL exact match against
the transformers model's own predictions on the same weights, and bad task files."""
import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from pojax.data.formats import DataError
from pojax.eval.tasks import gsm8k_answer, load_task, mmlu_prompt, run_task
from pojax.models import from_pretrained
from tests.models.hf_fixtures import VOCAB, make_checkpoint

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "A", "B", "C", "D", "A.", "B.", "C.", "D.", "Answer:", "what", "is", "the",
         "sky", "color", "blue", "red", "green", "grey", "2+2?", "3", "4", "5", "6", "yes", "no", "1", "2", "1:", "2:"]


def tokenizer():
    words = WORDS + [f"w{i}" for i in range(VOCAB - len(WORDS))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


@pytest.fixture(scope="module")
def models_(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    hf = make_checkpoint("llama-gqa", path)
    return hf, from_pretrained(str(path))


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(("text", "want"), [
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"), ("so the total is $1,250.", "1250"),
    ("#### 3.50", "3.5"), ("first 3 then 7.0", "7"), ("no numbers here", None), ("x = -4 #### -4", "-4"),
])
def test_gsm8k_answer(text, want):
    assert gsm8k_answer(text) == want


def test_mmlu_picks_the_letter_transformers_prefers(models_, tmp_path):
    hf, model = models_
    tok = tokenizer()
    questions = [("what is the sky color", ["blue", "red", "green", "grey"]), ("2+2?", ["3", "4", "5", "6"]),
                 ("is the sky blue", ["yes", "no"]), ("what color", ["red", "blue", "grey"])]
    rows = []
    for k, (q, choices) in enumerate(questions):
        ids = tok(mmlu_prompt({"question": q, "choices": choices}))["input_ids"]
        with torch.no_grad():
            logits = hf(torch.as_tensor([ids])).logits[0, -1].numpy()
        best = int(np.argmax(logits[[tok.convert_tokens_to_ids(c) for c in "ABCD"[:len(choices)]]]))
        answer = best if k % 2 == 0 else (best + 1) % len(choices)  # half right, half wrong
        rows.append({"question": q, "choices": choices, "answer": "ABCD"[answer] if k == 2 else answer})
    out = run_task("mmlu", write(tmp_path / "mmlu.jsonl", rows), model, tok, batch_size=3)
    assert out == {"mmlu_accuracy": 0.5, "mmlu_num_examples": 4}


def test_jsonl_exact_match_against_transformers_greedy(models_, tmp_path):
    hf, model = models_
    tok = tokenizer()
    hf.generation_config.eos_token_id = None
    rows = []
    for k, prompt in enumerate(["what is the sky color", "2+2?", "is the sky"]):
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            cont = hf.generate(torch.as_tensor([ids]), do_sample=False, max_new_tokens=3, pad_token_id=0)[0, len(ids):]
        text = tok.decode([t for t in cont.tolist() if t != tok.eos_token_id], skip_special_tokens=True)
        rows.append({"prompt": prompt, "answer": text if k < 2 else "certainly not this"})
    out = run_task("jsonl", write(tmp_path / "t.jsonl", rows), model, tok, max_new_tokens=3, chat_template="no")
    assert out["jsonl_accuracy"] == pytest.approx(2 / 3)


def test_bad_task_rows_name_file_row_and_field(tmp_path):
    path = write(tmp_path / "g.jsonl", [{"question": "q", "answer": "#### 1"}, {"question": "q"}])
    with pytest.raises(DataError, match=r"g.jsonl: row 1: field 'answer': missing"):
        load_task(path, "gsm8k")
    path = write(tmp_path / "m.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 5}])
    with pytest.raises(DataError, match="field 'answer'"):
        load_task(path, "mmlu")
    with pytest.raises(ValueError, match="unknown task"):
        load_task(path, "trivia")
