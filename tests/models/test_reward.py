"""The sequence-classification reward model against transformers: random-init tiny
LlamaForSequenceClassification / Qwen2ForSequenceClassification, saved with save_pretrained and
read by pojax.models.reward.from_pretrained, score right-padded rows as transformers' logits
(fp32, highest matmul precision, ≤ 1e-5); checkpoints that are not one-label sequence
classifiers are refused in one error naming file and key."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
)

from pojax.models import CheckpointError
from pojax.models.reward import from_pretrained as load_reward
from pojax.models.reward import last_token_index, reward_scores
from tests.models.hf_fixtures import randomize_

VOCAB, PAD = 61, 0


def make_classifier(path, model_type: str = "llama", *, seed: int = 0, num_labels: int = 1, pad_token_id=PAD, **kw):
    """A random-init transformers sequence classifier saved to ``path`` (norms and biases
    randomized too: their ones / zeros init would hide a misplaced parameter)."""
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=64, num_labels=num_labels, pad_token_id=pad_token_id, **kw)
    torch.manual_seed(seed)
    model = randomize_(AutoModelForSequenceClassification.from_config(config, dtype=torch.float32).eval())
    model.save_pretrained(path)
    return model


def right_padded(rows, pad=PAD):
    ids = np.full((len(rows), max(map(len, rows)) + 2), pad, np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    return ids


ROWS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 13, 14, 15], [16, 17, 18, 19, 20, 21, 22, 23, 24]]


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_scores_equal_transformers_logits(tmp_path, model_type):
    hf = make_classifier(tmp_path, model_type)
    ids = right_padded(ROWS)
    with torch.no_grad():
        want = hf(torch.as_tensor(ids), attention_mask=torch.as_tensor((ids != PAD).astype(np.int64))).logits.numpy()
    rm = load_reward(str(tmp_path))
    assert rm.pad_token_id == PAD
    with jax.default_matmul_precision("highest"):
        got = np.asarray(rm(jnp.asarray(ids, jnp.int32)))
        jitted = np.asarray(reward_scores(rm, jnp.asarray(ids, jnp.int32)))
        by_length = np.asarray(reward_scores(rm, jnp.asarray(ids, jnp.int32), jnp.asarray([len(r) for r in ROWS])))
    assert got.shape == (len(ROWS), 1)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(jitted, want[:, 0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(by_length, want[:, 0], atol=1e-5, rtol=0)
    # each row alone (no padding) scores the same: padding is invisible
    for i, r in enumerate(ROWS):
        with torch.no_grad():
            alone = hf(torch.as_tensor([r])).logits.numpy()[0, 0]
        assert abs(alone - got[i, 0]) <= 1e-5


def test_last_token_index_is_transformers_rule():
    ids = jnp.asarray([[4, 5, 0, 0], [0, 0, 4, 5], [4, 0, 5, 0], [0, 0, 0, 0], [4, 5, 6, 7]])
    np.testing.assert_array_equal(last_token_index(ids, 0), [1, 3, 2, 0, 3])
    np.testing.assert_array_equal(last_token_index(ids, None), [3, 3, 3, 3, 3])


def test_not_a_one_label_classifier_is_refused(tmp_path):
    causal = tmp_path / "causal"
    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(causal)
    file = os.path.join(str(causal), "model.safetensors")
    with pytest.raises(CheckpointError, match=f"{file}: tensor 'score.weight' is missing"):
        load_reward(str(causal))
    two = tmp_path / "two"
    make_classifier(two, num_labels=2)
    with pytest.raises(CheckpointError) as err:
        load_reward(str(two))
    msg = str(err.value)
    assert f"{os.path.join(str(two), 'config.json')}: key 'id2label' gives 2 labels" in msg
    assert f"{os.path.join(str(two), 'model.safetensors')}: tensor 'score.weight' has shape (2, 32)" in msg
    with open(two / "config.json") as f:
        d = json.load(f)
    d["num_labels"] = 3
    (two / "config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="key 'num_labels' gives 3 labels"):
        load_reward(str(two))
