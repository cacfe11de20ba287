"""task=export needs nothing but the workdir: README's command (no model.path, no data.path) on
a run trained from a Hugging Face dir rebuilds the network, the tokenizer and the token settings
from the run's spec (pojax.train.run_spec), and transformers reads back the trained policy."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from pojax.train.run import run_train
from pojax.train.run_spec import spec_dir
from tests.data.tokenizer_fixture import WORDS
from tests.train.helpers import ROOT, recipe, rows

RUN = {"model.dtype": "float32", "train.max_steps": 3, "train.batch_size": 8, "eval.num_examples": 8,
       "data.max_prompt_length": 16, "data.max_completion_length": 8, "logging.progress": False,
       "likelihood.chunk_size": 16, "optimizer.learning_rate": 1e-2, "optimizer.warmup_steps": 0,
       "checkpoint.every_steps": 3}


def _logits(path, ids):
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.numpy()


def test_readme_export_command_needs_only_the_workdir(hf_dir, tmp_path):
    src = tmp_path / "src"  # the starting checkpoint, with a generation_config.json of its own
    shutil.copytree(hf_dir, src)
    GenerationConfig(bos_token_id=1, eos_token_id=[2, WORDS.index("no")], pad_token_id=0, max_new_tokens=7).save_pretrained(src)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows("paired")))
    workdir = tmp_path / "runs" / "dpo"
    run_train(recipe("dpo", **RUN, **{"model.path": str(src), "data.path": str(data)}), str(workdir))
    assert os.path.exists(os.path.join(spec_dir(str(workdir)), "model_config.json"))
    trained = tmp_path / "trained"  # the in-memory policy's export at the end of training
    shutil.copytree(workdir / "final", trained)
    shutil.rmtree(workdir / "final")
    shutil.rmtree(src)  # gone: the export may not read the starting checkpoint, nor the data
    os.remove(data)

    proc = subprocess.run([sys.executable, "-m", "pojax.main", "--config=configs/dpo.py", f"--workdir={workdir}",
                           "--config.task=export"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = workdir / "final"
    ids = np.arange(24).reshape(2, 12) % len(WORDS)
    want = _logits(trained, ids)
    np.testing.assert_allclose(_logits(final, ids), want, rtol=1e-6, atol=1e-6)
    assert np.abs(want - _logits(hf_dir, ids)).max() > 1e-3  # training moved the weights: not the source
    gen = json.loads((final / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, WORDS.index("no")] and gen["max_new_tokens"] == 7
    assert AutoModelForCausalLM.from_pretrained(final).generation_config.eos_token_id == [2, WORDS.index("no")]
    assert AutoTokenizer.from_pretrained(final).get_vocab() == AutoTokenizer.from_pretrained(hf_dir).get_vocab()


def test_export_of_a_workdir_without_spec_names_model_path(hf_dir, tmp_path):
    from pojax.config import ConfigError
    from pojax.train.tasks import run_export

    workdir = tmp_path / "old"  # a run of an older pojax: checkpoints without the spec
    os.makedirs(workdir / "checkpoints" / "train")
    with pytest.raises(ConfigError) as e:
        run_export(recipe("dpo", **{"task": "export"}), str(workdir))
    assert str(e.value) == (f"config key model.path: {workdir}/checkpoints/model is missing (training runs write it "
                            "at start-up), so the network of the checkpoints is unknown: set model.path to the run's "
                            "starting Hugging Face checkpoint dir")
