"""task=eval on a paired file scores the rows a training run on the same file and seed holds out
(eval.split=held_out, the default) or every row (eval.split=all), says which in results.json, and
its eval_loss is DPO's loss on exactly those rows computed here with transformers."""
import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pojax.config import ConfigError
from pojax.data import tokenize
from pojax.train.run import load_tokenizer
from pojax.train.data import file_data
from pojax.train.tasks import run_eval
from tests.data.tokenizer_fixture import WORDS, make_tokenizer
from tests.models.hf_fixtures import randomize_
from tests.train.helpers import recipe

N, HELD, SEED = 24, 8, 3
WORDLIST = ["hi", "hello", "go", "away", "2+2?", "4", "5", "name", "a", "color", "blue", "seven"]
ANSWERS = ["good yes", "bad no", "blue", "seven", "4", "no go away", "hello"]


def _rows():
    rng = np.random.default_rng(0)
    return [{"prompt": [{"role": "user", "content": f"{WORDLIST[i % 12]} {WORDLIST[(i * 5 + 1) % 12]}"}],
             "chosen": ANSWERS[rng.integers(7)], "rejected": ANSWERS[rng.integers(7)]} for i in range(N)]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """A second random Llama on the trainer tests' tokenizer: a policy that differs from hf_dir."""
    path = tmp_path_factory.mktemp("policy")
    torch.manual_seed(1)
    randomize_(LlamaForCausalLM(LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
               ).save_pretrained(path)
    make_tokenizer(path)
    return str(path)


def _config(policy, reference, data, **overrides):
    return recipe("dpo", **{"task": "eval", "model.path": policy, "reference.path": reference, "data.path": data,
                            "model.dtype": "float32", "train.batch_size": 4, "train.seed": SEED,
                            "eval.num_examples": HELD, "data.max_prompt_length": 16, "data.max_completion_length": 8,
                            "logging.progress": False, **overrides})


def _logps(path, ids, mask) -> np.ndarray:
    """[N] summed log-probs of the masked (completion) tokens, by transformers."""
    model = LlamaForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        logits = model(torch.as_tensor(ids, dtype=torch.long)).logits.double()
    token = torch.log_softmax(logits[:, :-1], -1).gather(-1, torch.as_tensor(ids[:, 1:], dtype=torch.long)[..., None])[..., 0]
    return (token.numpy() * mask[:, 1:]).sum(-1)


def _dpo_loss(policy, reference, rows, beta) -> float:
    pc, pr = (_logps(policy, rows[f"{s}_ids"], rows[f"{s}_mask"]) for s in ("chosen", "rejected"))
    rc, rr = (_logps(reference, rows[f"{s}_ids"], rows[f"{s}_mask"]) for s in ("chosen", "rejected"))
    z = beta * ((pc - rc) - (pr - rr))
    return float(np.mean(np.logaddexp(0.0, -z)))  # −log σ(z)


def test_eval_scores_the_rows_training_held_out(hf_dir, policy_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    rows = _rows()
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = _config(policy_dir, hf_dir, str(data))
    tok = load_tokenizer(config)
    # the rows a training run holds out: the last HELD of the file in the order of rng [seed, 5]
    held_idx = np.random.default_rng([SEED, 5]).permutation(N)[-HELD:]
    encode = lambda rs: tokenize.encode(rs, "paired", tok, max_prompt_length=16, max_completion_length=8)
    expected = encode([rows[i] for i in held_idx])
    train_held = file_data(config, tok).held_out  # what run_train evaluates on
    np.testing.assert_array_equal(train_held["chosen_ids"], expected["chosen_ids"])
    np.testing.assert_array_equal(train_held["rejected_ids"], expected["rejected_ids"])

    results = run_eval(config, str(tmp_path / "held"))
    assert results["eval_split"] == "held_out" and results["eval_source"] == "file"
    assert results["eval_source_rows"] == N and results["eval_num_examples"] == HELD
    beta = float(config.loss.beta)
    want = _dpo_loss(policy_dir, hf_dir, expected, beta)
    assert results["eval_loss"] == pytest.approx(want, rel=1e-4)
    on_disk = json.loads((tmp_path / "held" / "results.json").read_text())
    assert on_disk["eval_split"] == "held_out" and on_disk["eval_num_examples"] == HELD

    everything = run_eval(_config(policy_dir, hf_dir, str(data), **{"eval.split": "all"}), str(tmp_path / "all"))
    assert everything["eval_split"] == "all" and everything["eval_num_examples"] == N
    assert everything["eval_loss"] == pytest.approx(_dpo_loss(policy_dir, hf_dir, encode(rows), beta), rel=1e-4)
    assert abs(everything["eval_loss"] - results["eval_loss"]) > 1e-4  # the two splits are told apart


def test_eval_split_errors_name_the_key(hf_dir, tmp_path):
    data = tmp_path / "few.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()[:10]))
    with pytest.raises(ConfigError) as e:
        run_eval(_config(hf_dir, hf_dir, str(data)), str(tmp_path))
    assert str(e.value) == (f"config key eval.split: 'held_out': {data} has 10 rows, too few for training to hold out "
                            f"eval.num_examples={HELD} (it needs more than {2 * HELD} and eval.num_examples > 0); set "
                            "eval.split=all to score every row")
    with pytest.raises(ConfigError, match="config key eval.split: 'test' is not one of held_out, all"):
        run_eval(_config(hf_dir, hf_dir, str(data), **{"eval.split": "test"}), str(tmp_path))
