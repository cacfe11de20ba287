"""task = "eval" on Hugging Face dirs: judged win rates (a policy against itself ties every
prompt: 0.5 raw and length-controlled), task accuracies, results.md, and its config errors."""
import json

import pytest

from pojax.config import ConfigError, validate
from pojax.train.tasks import run_eval
from tests.models.hf_fixtures import tiny_judge
from tests.train.helpers import recipe


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    return tiny_judge(tmp_path_factory.mktemp("judge"),
                      ["<pad>", "<s>", "</s>", "<unk>", "1", "2", "Response", "Better", "response:", "hi", "good", "bad"])


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def eval_config(hf_dir, **overrides):
    return recipe("dpo", **{"task": "eval", "model.path": hf_dir, "reference.path": hf_dir, "model.dtype": "float32",
                            "train.batch_size": 4, "eval.max_new_tokens": 4, "eval.temperature": 0.0,
                            "logging.progress": False, **overrides})


def test_policy_against_itself_ties_and_tasks_are_scored(hf_dir, judge_dir, tmp_path):
    prompts = write(tmp_path / "prompts.jsonl", [{"prompt": p} for p in ["hi", "2+2?", "name a color", "hello hi", "go"]])
    gsm8k = write(tmp_path / "gsm8k.jsonl", [{"question": "2+2?", "answer": "so #### 4"}, {"question": "hi", "answer": "#### 5"}])
    mmlu = write(tmp_path / "mmlu.jsonl", [{"question": "2+2?", "choices": ["4", "5"], "answer": 0}])
    jsonl = write(tmp_path / "t.jsonl", [{"prompt": "hi", "answer": "hello"}])
    config = eval_config(hf_dir, **{"eval.prompts_path": prompts, "eval.judge_path": judge_dir, "eval.gsm8k_path": gsm8k,
                                    "eval.mmlu_path": mmlu, "eval.jsonl_path": jsonl})
    validate(config)
    results = run_eval(config, str(tmp_path / "run"))
    assert results["win_rate"] == 0.5 and results["lc_win_rate"] == pytest.approx(0.5)
    assert results["num_comparisons"] == 5
    for kind in ("gsm8k", "mmlu", "jsonl"):
        assert 0.0 <= results[f"{kind}_accuracy"] <= 1.0
    table = (tmp_path / "run" / "results.md").read_text()
    assert "| win_rate | 0.5 |" in table and "gsm8k_accuracy" in table


def test_eval_config_errors_name_the_key(hf_dir, tmp_path):
    with pytest.raises(ConfigError, match="config key eval: nothing to evaluate"):
        run_eval(eval_config(hf_dir), str(tmp_path))
    with pytest.raises(ConfigError, match="config key eval.judge_template"):
        validate(eval_config(hf_dir, **{"eval.judge_template": "{instruction} only"}))
    prompts = write(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    with pytest.raises(ConfigError, match="config key eval.judge_path"):
        run_eval(eval_config(hf_dir, **{"eval.prompts_path": prompts}), str(tmp_path))
