"""Dream (pojax.models.dream) through the trainer on the gym: masked-diffusion SFT of a tiny random
Dream raises the gold reward of responses sampled with the diffusion sampler, as it does for
LLaDA (tests/train/test_diffusion_sft.py); ELBO-KTO's first step: tests/train/test_diffusion_train.py."""
import numpy as np

from pojax.config import validate
from pojax.models import Dream, from_pretrained
from pojax.train.tasks import run_sft
from tests.train.helpers import override, read_jsonl, recipe


def test_dream_sft_samples_gain_gold_reward(tmp_path):
    c = override(recipe("quickstart_diffusion"), {
        "model.family": "dream", "task": "sft", "logging.progress": False, "logging.plots": False,
        "train.max_steps": 150, "optimizer.learning_rate": 2e-3, "optimizer.warmup_steps": 10, "train.batch_size": 32,
        "data.gym.num_eval": 64, "eval.num_samples": 2})
    validate(c)
    results = run_sft(c, str(tmp_path))
    losses = [r["loss"] for r in read_jsonl(tmp_path / "metrics_sft.jsonl")]
    assert np.mean(losses[-15:]) < np.mean(losses[:15]) - 0.2
    assert results["gold_reward_after"] > results["gold_reward_before"] + 0.2, results
    exported = from_pretrained(str(tmp_path / "final"))
    assert isinstance(exported, Dream) and exported.config.mask_token_id == exported.config.vocab_size - 1
