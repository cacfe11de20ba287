"""Evaluation of masked-diffusion LMs: generate_ids goes through LLaDA's reverse process and gives
exactly the tokens of pojax.sampling.diffusion.generate on the padded batch; MMLU is generative
(the first option letter of the generated text); task = "eval" runs end to end on a tiny LLaDA
checkpoint with the per-task settings, and its diffusion settings' errors name the key."""
import json

import jax
import numpy as np
import pytest

from pojax.config import ConfigError, validate
from pojax.eval.generation import (
    DiffusionSampling,
    diffusion_mask_id,
    generate_ids,
    next_token_logits,
    padded_batch,
)
from pojax.eval.tasks import option_letter, run_task
from pojax.models import from_pretrained
from pojax.sampling import diffusion
from pojax.sampling.autoregressive import completion_lengths
from pojax.train.tasks import run_eval
from tests.eval.diffusion_fixtures import MASK, WordStub, save_llada, tokenizer
from tests.train.helpers import recipe


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    return save_llada(tmp_path_factory.mktemp("llada"))


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(("temperature", "cfg_scale", "remasking", "batch_size"), [
    (0.0, 0.0, "low_confidence", 4), (0.8, 0.5, "random", 2)])
def test_generate_ids_equals_the_sampler_on_the_padded_batch(llada_dir, temperature, cfg_scale, remasking, batch_size):
    model = from_pretrained(llada_dir)
    assert diffusion_mask_id(model) == MASK
    prompts = [[1, 14, 15, 16, 17], [1, 23], [1, 29, 30, 14]]
    stops = (2,)
    sampling = DiffusionSampling(steps=4, block_length=4, cfg_scale=cfg_scale, remasking=remasking)
    got = generate_ids(model, prompts, max_new_tokens=8, batch_size=batch_size, temperature=temperature,
                       stop_tokens=stops, pad_id=0, seed=3, diffusion_sampling=sampling)
    want = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids, _ = padded_batch(chunk + [chunk[-1]] * (batch_size - len(chunk)), 0)
        tokens = np.asarray(diffusion.generate(
            model, ids, jax.random.key(3 + start), gen_length=8, steps=4, block_length=4, temperature=temperature,
            cfg_scale=cfg_scale, remasking=remasking, mask_id=MASK, pad_id=0))[:len(chunk)]
        want += [row[:n].tolist() for row, n in zip(tokens, completion_lengths(tokens, stops))]
    assert got == want
    assert all(MASK not in row for row in got)


def test_diffusion_model_has_no_next_token_logits(llada_dir):
    with pytest.raises(ValueError, match="masked-diffusion LM"):
        next_token_logits(from_pretrained(llada_dir), tokenizer(), ["hi"])


@pytest.mark.parametrize(("text", "k", "want"), [
    ("C A B", 4, 2), (" B.", 4, 1), ("(D)", 4, 3), ("the sky is A", 4, 0), ("C then A", 2, 0), ("Answer: red", 4, None),
    ("ABC", 4, None)])
def test_option_letter(text, k, want):
    assert option_letter(text, k) == want


def mmlu_rows(answer):
    return [{"question": q, "choices": ["blue", "red", "green", "grey"], "answer": answer}
            for q in ("what is the sky color", "2+2?", "what color")]


def test_diffusion_mmlu_reads_the_first_generated_letter(tmp_path):
    stub = WordStub(["C", "A", "B"])  # generates "C A B" after any prompt
    tok = tokenizer()
    sampling = DiffusionSampling(steps=3, block_length=3)
    right = run_task("mmlu", write(tmp_path / "right.jsonl", mmlu_rows("C")), stub, tok, max_new_tokens=3,
                     batch_size=2, diffusion_sampling=sampling)
    assert right == {"mmlu_accuracy": 1.0, "mmlu_num_examples": 3}
    for wrong in ("A", 1):  # A is generated too, but after C
        out = run_task("mmlu", write(tmp_path / "wrong.jsonl", mmlu_rows(wrong)), stub, tok, max_new_tokens=3,
                       batch_size=2, diffusion_sampling=sampling)
        assert out["mmlu_accuracy"] == 0.0
    # two options: C is no option, the first that is (A) counts
    rows = [{"question": "2+2?", "choices": ["4", "5"], "answer": 0}]
    assert run_task("mmlu", write(tmp_path / "two.jsonl", rows), stub, tok, max_new_tokens=3,
                    diffusion_sampling=sampling)["mmlu_accuracy"] == 1.0


def test_diffusion_gsm8k_and_fewshot(tmp_path):
    stub = WordStub(["4", "Question:", "####", "5"])  # "4 Question: #### 5"
    tok = tokenizer()
    rows = [{"question": "2+2?", "answer": "#### 4"}, {"question": "what is 2+2?", "answer": "#### 4"},
            {"question": "2+2?", "answer": "#### 5"}]
    path = write(tmp_path / "g.jsonl", rows)
    kw = dict(batch_size=2)
    kw["max_new_tokens"] = 4
    kw["diffusion_sampling"] = DiffusionSampling(steps=4, block_length=2)
    # zero-shot: the number after #### (5) is the answer
    assert run_task("gsm8k", path, stub, tok, **kw)["gsm8k_accuracy"] == pytest.approx(1 / 3)
    # few-shot: the text is cut at the model's own next "Question:", leaving 4
    out = run_task("gsm8k", path, stub, tok, num_fewshot=1, **kw)
    assert out == {"gsm8k_accuracy": 0.5, "gsm8k_num_examples": 2}  # row 0 became the example
    shots = write(tmp_path / "shots.jsonl", rows[:1])
    out = run_task("gsm8k", path, stub, tok, num_fewshot=1, fewshot_path=shots, **kw)
    assert out == {"gsm8k_accuracy": pytest.approx(2 / 3), "gsm8k_num_examples": 3}
    with pytest.raises(ValueError, match="too few for 2 few-shot examples"):
        run_task("gsm8k", path, stub, tok, num_fewshot=2, fewshot_path=shots, **kw)


def eval_config(llada_dir, **overrides):
    return recipe("elbo_kto", **{
        "task": "eval", "model.path": llada_dir, "reference.path": llada_dir, "model.dtype": "float32",
        "model.scan_layers": False, "model.remat": "none", "mesh.fsdp": 1, "mesh.data": -1,
        "train.batch_size": 4, "train.grad_accum_steps": 1, "eval.max_new_tokens": 4, "eval.temperature": 0.0,
        "eval.gsm8k_gen_length": 8, "eval.gsm8k_steps": 4, "eval.gsm8k_block_length": 4, "logging.progress": False,
        **overrides})


def test_eval_task_on_a_llada_checkpoint(llada_dir, tmp_path, monkeypatch):
    calls = []
    real = diffusion.generate

    def spy(model, prompts, key, **kw):
        calls.append((prompts.shape[1], kw["gen_length"], kw["steps"], kw["block_length"]))
        return real(model, prompts, key, **kw)

    monkeypatch.setattr(diffusion, "generate", spy)
    prompts = write(tmp_path / "prompts.jsonl", [{"prompt": p} for p in ["hi", "2+2?", "what color", "go hi"]])
    gsm8k = write(tmp_path / "gsm8k.jsonl", [{"question": "2+2?", "answer": "#### 4"}, {"question": "hi", "answer": "#### 5"},
                                            {"question": "what is the sky", "answer": "#### 3"}])
    mmlu = write(tmp_path / "mmlu.jsonl", mmlu_rows(0) + mmlu_rows("B"))
    jsonl = write(tmp_path / "t.jsonl", [{"prompt": "hi", "answer": "go"}])
    judge = _judge(tmp_path / "judge")
    config = eval_config(llada_dir, **{"eval.prompts_path": prompts, "eval.judge_path": judge, "eval.gsm8k_path": gsm8k,
                                       "eval.mmlu_path": mmlu, "eval.jsonl_path": jsonl, "eval.num_fewshot": 1})
    validate(config)
    results = run_eval(config, str(tmp_path / "run"))
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["mmlu_num_examples"] == 5 and saved["gsm8k_num_examples"] == 2  # one row each became the example
    for kind in ("gsm8k", "mmlu", "jsonl"):
        assert 0.0 <= results[f"{kind}_accuracy"] <= 1.0
    assert results["win_rate"] == 0.5  # the policy against itself: same tokens, every pair tied
    # (gen, steps, block): win rates and JSONL from eval.max_new_tokens, the tasks their own
    settings = {c[1:] for c in calls}
    assert settings == {(4, 4, 4), (8, 4, 4), (3, 3, 3)}


def _judge(path):
    """A tiny random Llama judge with a word-level tokenizer that has "1" and "2"."""
    from tests.models.hf_fixtures import tiny_judge

    return tiny_judge(path, ["<pad>", "<s>", "</s>", "<unk>", "1", "2", "Response", "Better", "response:", "hi",
                             "go", "4"])


@pytest.mark.parametrize(("overrides", "key"), [
    ({"eval.gsm8k_block_length": 3}, "eval.gsm8k_block_length"),
    ({"eval.mmlu_steps": 2, "eval.mmlu_block_length": 1}, "eval.mmlu_steps"),
    ({"eval.diffusion_block_length": 3}, "eval.diffusion_block_length"),
    ({"eval.remasking": "lowest"}, "eval.remasking"),
    ({"eval.cfg_scale": -1.0}, "eval.cfg_scale"),
    ({"eval.num_fewshot": 9}, "eval.num_fewshot"),
])
def test_diffusion_settings_errors_name_the_key(llada_dir, tmp_path, overrides, key):
    gsm8k = write(tmp_path / "gsm8k.jsonl", [{"question": "2+2?", "answer": "#### 4"}])
    mmlu = write(tmp_path / "mmlu.jsonl", mmlu_rows(0))
    config = eval_config(llada_dir, **{"eval.gsm8k_path": gsm8k, "eval.mmlu_path": mmlu, **overrides})
    with pytest.raises(ConfigError, match=f"config key {key}: "):
        run_eval(config, str(tmp_path / "run"))
