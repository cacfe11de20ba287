"""Same config and seed on the same device count → bit-identical metrics.jsonl. What is
compared: every metric except wall-clock ones (step_time_s, tokens_per_s)."""
from pojax.train.run import run_train
from tests.train.helpers import quick_config, read_jsonl

WALL_CLOCK = ("step_time_s", "tokens_per_s")


def _run(workdir):
    config = quick_config(**{"train.sft_steps": 0, "train.max_steps": 4, "train.batch_size": 8, "logging.plots": False,
                             "train.export_final": False, "data.gym.num_eval": 8, "eval.num_samples": 1,
                             "eval.num_examples": 8, "eval.every_steps": 2, "checkpoint.every_steps": 2})
    run_train(config, str(workdir))
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK}
            for r in read_jsonl(workdir / "metrics.jsonl")]


def test_same_seed_same_metrics_bit_for_bit(tmp_path):
    first, second = _run(tmp_path / "a"), _run(tmp_path / "b")
    assert len(first) == 4 and "eval_loss" in first[1]
    assert first == second  # exact float equality, NaN-free (json floats compare by value)
