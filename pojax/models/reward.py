"""A sequence-classification reward model: the causal decoder of pojax.models.transformer with a
linear ``score`` head read at the last non-padding token (transformers'
``LlamaForSequenceClassification`` / ``Qwen2ForSequenceClassification``, which share
``GenericForSequenceClassification``).

    r(x) = W_score · h_i,   i = the rightmost position whose token is not pad_token_id

(transformers' convention, for left and right padding alike: ``argmax_t t · [x_t ≠ pad]``, so a
row of nothing but padding reads position 0, and without a pad_token_id the last position). The
backbone is a CausalLM built with tied embeddings, i.e. without an LM head, which such
checkpoints do not have; its parameters are the checkpoint's ``model.*`` tensors under the
causal decoders' name map (pojax.models.hf_io), the head is ``score.weight`` [num_labels, D],
no bias. Attention is causal, so right padding never changes the scored hidden state; left
padding would shift positions (as it does in transformers without position_ids): pad right.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
from flax import nnx

from pojax import sharding
from pojax.models.config import ModelConfig
from pojax.models.hf_io import CheckpointError, load_decoder, read_tensor
from pojax.models.layers import dtype_of, param
from pojax.models.transformer import CausalLM

SCORE = "score.weight"  # the head's tensor name in transformers' sequence classifiers


def last_token_index(input_ids_BT, pad_token_id: int | None):
    """[B] int32: the rightmost position whose token is not ``pad_token_id`` (0 for a row of
    padding; T − 1 for every row without a pad id), as transformers' sequence classifiers."""
    b, t = input_ids_BT.shape
    if pad_token_id is None:
        return jnp.full((b,), t - 1, jnp.int32)
    positions = jnp.arange(t, dtype=jnp.int32)
    return jnp.argmax(positions * (input_ids_BT != pad_token_id).astype(jnp.int32), axis=-1).astype(jnp.int32)


class RewardModel(nnx.Module):
    """``rm(input_ids [B, T]) -> scores [B, num_labels] float32`` (module docstring)."""

    def __init__(self, config: ModelConfig, *, num_labels: int = 1, pad_token_id: int | None = None,
                 rngs: nnx.Rngs):
        if config.model_type == "llada":
            raise ValueError("RewardModel: a sequence classifier is a causal decoder, not a llada model")
        self.config = dataclasses.replace(config, tie_word_embeddings=True)  # no LM head in the backbone
        self.model = CausalLM(self.config, rngs=rngs)
        self.score = param(rngs, (config.hidden_size, num_labels), ("embed", None), dtype_of(config.param_dtype))
        self.pad_token_id = pad_token_id

    def __call__(self, input_ids_BT, *, lengths_B=None):
        """Scores [B, num_labels] float32 of right-padded input_ids [B, T] int32, read at the last
        non-pad token, or at ``lengths_B`` − 1 when the row lengths [B] are given."""
        h_BTD = self.model.hidden_states(input_ids_BT)
        if lengths_B is None:
            index_B = last_token_index(input_ids_BT, self.pad_token_id)
        else:
            index_B = jnp.asarray(lengths_B, jnp.int32) - 1
        h_BD = jnp.take_along_axis(h_BTD, index_B[:, None, None], axis=1)[:, 0]
        w_DL = self.score[...].astype(h_BD.dtype)
        return jnp.einsum("bd,dl->bl", h_BD, w_DL, preferred_element_type=jnp.float32)


@nnx.jit
def reward_scores(rm: RewardModel, input_ids_BT, lengths_B=None):
    """``rm(input_ids, lengths_B=...)[:, 0]``, jitted: [B] float32 scores of a one-label model."""
    return rm(input_ids_BT, lengths_B=lengths_B)[:, 0]


def _num_labels(config_json: dict) -> int:
    if "num_labels" in config_json:
        return int(config_json["num_labels"])
    return len(config_json.get("id2label") or {"0": "LABEL_0", "1": "LABEL_1"})  # transformers' default: 2


def from_pretrained(path: str, *, dtype=jnp.float32, mesh=None, rules=None, **config_overrides) -> RewardModel:
    """Loads a transformers sequence-classification checkpoint dir (``model.*`` + ``score.weight``,
    one label) as a RewardModel.

    Raises:
      CheckpointError: no config.json; no ``score.weight`` (naming the safetensors file) or a
        head / config.json (``id2label``, ``num_labels``) with other than one label, every problem
        in one error; plus hf_io's errors for the backbone's tensors.
    """
    fname = os.path.join(path, "config.json")
    if not os.path.exists(fname):
        raise CheckpointError(f"{path}: no config.json")
    with open(fname) as f:
        d = json.load(f)
    name = jnp.dtype(dtype).name
    config = ModelConfig.from_hf_config(d, **{"dtype": name, "param_dtype": name, **config_overrides})
    problems = []
    num_labels = _num_labels(d)
    if num_labels != 1:
        key = "num_labels" if "num_labels" in d else "id2label"
        problems.append(f"{fname}: key {key!r} gives {num_labels} labels; a reward model has exactly 1")
    w, wfile = read_tensor(path, SCORE)
    if w is None:
        problems.append(f"{wfile}: tensor {SCORE!r} is missing (not a sequence-classification checkpoint: save it "
                        "with transformers' AutoModelForSequenceClassification, num_labels=1)")
    elif w.shape != (1, config.hidden_size):
        problems.append(f"{wfile}: tensor {SCORE!r} has shape {tuple(w.shape)}, a one-label head over hidden size "
                        f"{config.hidden_size} is (1, {config.hidden_size})")
    if problems:
        raise CheckpointError("reward model: " + "; ".join(problems))
    pad = d.get("pad_token_id")
    rm = nnx.eval_shape(lambda: RewardModel(config, num_labels=1, pad_token_id=pad, rngs=nnx.Rngs(0)))
    rm.model = load_decoder(path, rm.config, mesh=mesh, rules=rules)
    score = jnp.asarray(w.T, dtype=dtype)  # [1, D] (transformers' [out, in]) -> [D, 1]
    if mesh is not None:
        score = jax.device_put(score, sharding.logical_to_sharding(("embed", None), mesh,
                                                                    rules or sharding.DEFAULT_RULES, shape=score.shape))
    rm.score = nnx.Param(score, logical_axes=("embed", None))
    return rm
