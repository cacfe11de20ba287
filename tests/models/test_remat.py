"""pojax.models.remat: layer-by-layer rematerialization without nnx.scan computes the gradients
that no rematerialization computes (its memory effect: tests/train/test_memory.py)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pojax.models.config import ModelConfig
from pojax.models.llada import LLaDA
from pojax.models.transformer import CausalLM

BASE = ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=2)


def loss_and_grads(cls, config, ids, segment_ids):
    model = cls(config, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        h = nnx.merge(graphdef, params, rest).hidden_states(ids, segment_ids=segment_ids)
        return jnp.sum(jnp.tanh(h) * jnp.arange(h.shape[-1]))

    return jax.jit(jax.value_and_grad(loss))(params)


MOE = {"model_type": "mixtral", "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16}


@pytest.mark.parametrize("cls,extra", [(CausalLM, {}), (CausalLM, MOE), (LLaDA, {"model_type": "llada", "mask_token_id": 60})])
@pytest.mark.parametrize("policy", ["full", "dots"])
def test_sequential_remat_gradients_equal_plain_gradients(cls, extra, policy):
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 60, (2, 9)), jnp.int32)
    segment_ids = jnp.asarray([[1] * 9, [1] * 6 + [0] * 3], jnp.int32)
    with jax.default_matmul_precision("highest"):
        want_loss, want = loss_and_grads(cls, dataclasses.replace(BASE, **extra), ids, segment_ids)
        got_loss, got = loss_and_grads(cls, dataclasses.replace(BASE, remat=policy, **extra), ids, segment_ids)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
    for (path, g), w in zip(jax.tree.leaves_with_path(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    assert any(float(jnp.abs(w).max()) > 0 for w in jax.tree.leaves(want))
