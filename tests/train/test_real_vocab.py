"""End to end on a real vocabulary: ``python -m pojax.main --config=configs/dpo.py`` on a random
Llama with Meta's Llama 3 vocabulary (128,256 tokens) and tokenizer (Llama 3.1 Instruct chat
template), trained for 2 DPO steps on UltraFeedback-binarized rows in the upstream layout."""
import json
import math
import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.data.real_tokenizers import real_tokenizers  # noqa: F401 (the session's tokenizers fixture)
from tests.train.helpers import ROOT, read_jsonl

LLAMA3_VOCAB = 128_256


def msg(role, content):
    return {"role": role, "content": content}


def uf_row(i, prompt, good, bad, score_chosen, score_rejected):
    """One row of HuggingFaceH4/ultrafeedback_binarized's train_prefs / test_prefs splits."""
    return {"prompt": prompt, "prompt_id": f"{i:064x}", "chosen": [msg("user", prompt), msg("assistant", good)],
            "rejected": [msg("user", prompt), msg("assistant", bad)], "messages": [msg("user", prompt),
                                                                                   msg("assistant", good)],
            "score_chosen": score_chosen, "score_rejected": score_rejected}


TRAIN = [
    uf_row(0, "Name a primary color.", "Blue is a primary color.", "Seven.", 8.5, 2.0),
    uf_row(1, "What is 2+2?", "2 + 2 = 4", "It is 5, obviously.", 10.0, 1.0),
    uf_row(2, "Write a Python function that squares x.", "```python\ndef square(x):\n    return x * x\n```",
           "def f(x): pass", 9.0, 3.5),
    uf_row(3, "Traduisez « bonjour » en allemand.", "« Guten Tag » — ou simplement « Hallo ».", "Hola", 7.0, 1.5),
    uf_row(4, "  Leading and trailing spaces?  ", "  Kept in the message, trimmed by the template.  ", "no", 6.0, 5.0),
    uf_row(5, "Summarize: 東京は日本の首都です。", "Tokyo is Japan's capital. 🗼", "Kyoto.", 8.0, 4.0),
]
TEST = [uf_row(6, "Capital of France?", "Paris.", "Lyon.", 9.0, 2.0),
        uf_row(7, "Say hi.", "Hi!", "Go away.", 8.0, 1.0)]


def write_upstream(root):
    """The dataset repository's layout: data/{train,test}_prefs-00000-of-00001.parquet."""
    for split, rows in (("train_prefs", TRAIN), ("test_prefs", TEST)):
        path = os.path.join(root, "data", f"{split}-00000-of-00001.parquet")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory, real_tokenizers):
    """A random 2-layer, 64-wide Llama with the Llama 3 vocabulary, saved by transformers with
    Meta's tokenizer (Llama 3.1 Instruct chat template, eos <|eot_id|>) beside it."""
    path = str(tmp_path_factory.mktemp("llama3_tiny"))
    tokenizer = real_tokenizers.get("llama3_1_instruct")
    assert len(tokenizer) == LLAMA3_VOCAB
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=LLAMA3_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_dpo_two_steps_on_llama3_vocabulary(llama3_dir, tmp_path):
    data = str(tmp_path / "ultrafeedback_binarized")
    write_upstream(data)
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "pojax.main", "--config=configs/dpo.py", f"--workdir={workdir}",
           f"--config.model.path={llama3_dir}", f"--config.data.path={data}",
           "--config.data.format=ultrafeedback_binarized", f"--config.data.tfds_dir={tmp_path / 'tfds'}",
           "--config.data.max_prompt_length=48", "--config.data.max_completion_length=24",
           "--config.train.batch_size=2", "--config.train.max_steps=2", "--config.eval.num_examples=2",
           "--config.likelihood.chunk_size=32", "--config.logging.progress=False", "--config.logging.plots=False",
           "--config.optimizer.warmup_steps=0", "--config.optimizer.schedule=constant",
           "--config.optimizer.learning_rate=1e-3"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"pojax.main DPO, 2 steps on the Llama 3 vocabulary: {seconds:.1f} s")
    metrics = read_jsonl(workdir / "metrics.jsonl")
    train = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in train] == [1, 2]
    # policy = reference at step 1: every margin is 0, so −log σ(0) = log 2 (bfloat16 compute as the recipe has it)
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert train[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert train[1]["loss"] != pytest.approx(math.log(2), abs=1e-6)  # the first update moved the policy
    results = json.loads((workdir / "results.json").read_text())
    assert results["eval_num_examples"] == 2 and math.isfinite(results["eval_loss"])
    assert "pojax: outputs in" in proc.stdout


def test_sft_on_conversations_with_the_llama3_vocabulary(llama3_dir, tmp_path):
    """task=sft on a file of TRL SFT rows (messages), in-process: the trained tokens are the
    rendered conversations (pojax.data.sft, tested against TRL in tests/data/test_sft_trl.py),
    and a random model's first NLL is log V (every token about equally likely at init)."""
    from pojax.train.tasks import run_sft
    from tests.train.helpers import quick_config

    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in TRAIN))
    config = quick_config(**{
        "task": "sft", "model.path": llama3_dir, "data.path": str(path), "data.format": "sft", "data.max_length": 96,
        "train.batch_size": 2, "train.max_steps": 2, "likelihood.chunk_size": 32, "logging.plots": False,
        "optimizer.warmup_steps": 0, "optimizer.learning_rate": 1e-3, "eval.num_examples": 0})
    results = run_sft(config, str(tmp_path / "run"))
    assert results["sft_examples"] == len(TRAIN)
    rows = read_jsonl(tmp_path / "run" / "metrics_sft.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["nll"] == pytest.approx(math.log(LLAMA3_VOCAB), abs=0.05)
