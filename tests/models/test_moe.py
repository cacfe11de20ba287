"""Mixture of experts (pojax.models.moe): the load-balancing loss against transformers' own,
the CPU grouped matmul against jax.lax.ragged_dot, memory flat in the number of experts,
expert-parallel sharding = one device, stacked-expert checkpoints, and refused config keys.
(Logits / log-probs / decode parity with transformers: tests/models/test_parity.py and
test_decode.py, variants mixtral-window and qwen3moe-unnormed.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import AutoModelForCausalLM

from pojax import sharding
from pojax.models import CausalLM, ModelConfig, from_pretrained, save_pretrained
from pojax.models import moe
from pojax.models.hf_io import CheckpointError
from tests.models.hf_fixtures import VOCAB, make_checkpoint, torch_logits

MOE_VARIANTS = ("mixtral-window", "qwen3moe-unnormed")


@pytest.fixture(scope="module", params=MOE_VARIANTS)
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    return request.param, str(path), make_checkpoint(request.param, path)


@nnx.jit
def aux_of(model, *rows):
    """The load-balancing loss of forwards over each (ids, mask) of ``rows``, pooled."""
    for x, mask in rows:
        model.hidden_states(x, segment_ids=mask)
    return moe.router_aux_loss(model)


def padded_rows(seed=0):
    x = np.random.default_rng(seed).integers(0, VOCAB, (3, 9)).astype(np.int32)
    mask = np.ones_like(x)
    mask[0, 5:] = 0
    mask[2, 7:] = 0
    return x, mask


def test_router_aux_loss_equals_transformers(checkpoint):
    """E·Σ f_e P_e over the layers and the non-padding tokens, as transformers'
    load_balancing_loss_func with the attention mask (what TRL adds to the DPO loss)."""
    _, path, ref = checkpoint
    x, mask = padded_rows()
    with torch.no_grad():
        want = float(ref(torch.as_tensor(x), attention_mask=torch.as_tensor(mask), output_router_logits=True).aux_loss)
    model = from_pretrained(path)
    with jax.default_matmul_precision("highest"):
        got = float(aux_of(model, (jnp.asarray(x), jnp.asarray(mask))))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert want > 1.0  # a random router's imbalance: not a trivial 0
    # the statistics were reset: a call without a forward sees no tokens
    assert float(aux_of(model)) == 0.0


def test_router_aux_loss_pools_forwards_as_one(checkpoint):
    """Two forwards (a pair's chosen and rejected rows) pool as one concatenated forward."""
    _, path, ref = checkpoint
    x, mask = padded_rows(seed=1)
    model = from_pretrained(path)
    x, mask = jnp.asarray(x), jnp.asarray(mask)
    with jax.default_matmul_precision("highest"):
        whole = float(aux_of(model, (x, mask)))
        pooled = float(aux_of(model, (x[:1], mask[:1]), (x[1:], mask[1:])))
    np.testing.assert_allclose(pooled, whole, rtol=1e-6)


def test_tiled_grouped_matmul_equals_ragged_dot():
    """Values and gradients, with an empty group and groups that straddle tiles."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(37, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(5, 8, 6)), jnp.float32)
    sizes = jnp.asarray([10, 0, 20, 3, 4], jnp.int32)
    ours = lambda x, w: jnp.sum(jnp.sin(moe.tiled_grouped_matmul(x, w, sizes, 4)))
    theirs = lambda x, w: jnp.sum(jnp.sin(jax.lax.ragged_dot(x, w, sizes)))
    with jax.default_matmul_precision("highest"):
        got = jax.value_and_grad(ours, (0, 1))(x, w)
        want = jax.value_and_grad(theirs, (0, 1))(x, w)
    for g, h in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, h, atol=1e-5, rtol=0)


def _step_memory(num_experts: int) -> tuple[int, int]:
    """(temp bytes of a compiled forward + backward, parameter bytes) of a 1-layer top-2 model."""
    c = ModelConfig(model_type="mixtral", vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                    num_attention_heads=4, num_key_value_heads=2, num_experts=num_experts, num_experts_per_tok=2)
    graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: CausalLM(c, rngs=nnx.Rngs(0))), nnx.Param, ...)

    def loss(params, rest, x):
        m = nnx.merge(graphdef, params, rest)
        return jnp.sum(m.hidden_states(x) ** 2) + moe.router_aux_loss(m)

    x = jax.ShapeDtypeStruct((4, 128), jnp.int32)
    compiled = jax.jit(jax.value_and_grad(loss)).lower(params, rest, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes, sum(np.prod(v.shape) * 4 for v in jax.tree.leaves(params))


def test_step_memory_does_not_grow_with_experts_beyond_their_parameters():
    """4 → 32 experts at the same top-2: the temporaries grow by less than the parameters do (a
    dense dispatch over all experts, e.g. JAX's CPU ragged_dot fallback, grows them by 835 MB against 12 MB of parameters at 2048 tokens)."""
    t4, p4 = _step_memory(4)
    t32, p32 = _step_memory(32)
    assert t32 - t4 < p32 - p4, (t4, t32, p4, p32)


def test_expert_parallel_sharding_equals_single_device(tmp_path):
    """(data 2, expert 2, tensor 2): experts split over the expert axis; forward, aux loss and
    gradients equal one device's."""
    make_checkpoint("qwen3moe-unnormed", tmp_path)
    x, mask = padded_rows(seed=2)
    x, mask = np.concatenate([x, x[:1]]), np.concatenate([mask, mask[:1]])  # 4 rows

    def loss_and_grads(model, x, mask):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(params, rest):
            m = nnx.merge(graphdef, params, rest)
            h = m.hidden_states(x, segment_ids=mask)
            return jnp.mean(h ** 2) + moe.router_aux_loss(m)

        return jax.jit(jax.value_and_grad(loss))(params, rest)

    with jax.default_matmul_precision("highest"):
        want_loss, want_grads = loss_and_grads(from_pretrained(str(tmp_path)), jnp.asarray(x), jnp.asarray(mask))
        mesh = sharding.make_mesh(data=2, expert=2, tensor=2)
        model = from_pretrained(str(tmp_path), mesh=mesh)
        with sharding.use_mesh(mesh):
            rows = sharding.logical_to_sharding(("batch", "length"), mesh)
            got_loss, got_grads = loss_and_grads(model, jax.device_put(jnp.asarray(x), rows),
                                                 jax.device_put(jnp.asarray(mask), rows))
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    for g, h in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(g, h, atol=1e-5, rtol=1e-4)
    w = model.layers[0].mlp.gate_proj[...]
    assert w.sharding.spec[0] == "expert" and w.addressable_shards[0].data.shape[0] == w.shape[0] // 2


@pytest.mark.parametrize("variant", MOE_VARIANTS)
def test_stacked_layers_and_experts_round_trip(variant, tmp_path):
    """nnx.scan stacks [L, E, ...] expert weights: one checkpoint tensor per (layer, expert), read
    and written back in transformers' layout."""
    ref = make_checkpoint(variant, tmp_path / "src")
    model = from_pretrained(str(tmp_path / "src"), scan_layers=True)
    assert model.layers.mlp.up_proj.shape[:2] == (2, 4)
    save_pretrained(model, str(tmp_path / "out"))
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    x = padded_rows(seed=3)[0]
    np.testing.assert_allclose(torch_logits(again, x), torch_logits(ref, x), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("model_type", "key", "value", "message"), [
    ("qwen3_moe", "mlp_only_layers", [1], r"'mlp_only_layers' = \[1\] is not supported \(every layer must be sparse\)"),
    ("qwen3_moe", "decoder_sparse_step", 2, r"'decoder_sparse_step' = 2 is not supported"),
    ("mixtral", "router_jitter_noise", 0.1, r"mixtral config key 'router_jitter_noise' = 0.1 is not supported"),
])
def test_unsupported_moe_config_keys_are_refused_by_name(tmp_path, model_type, key, value, message):
    import json

    cfg = {"model_type": model_type, "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
           "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, key: value}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=message):
        from_pretrained(str(tmp_path))


def test_kv_cache_decode_equals_full_forward(tmp_path):
    """Prefill then one token at a time through the experts = the full forward (scan layers)."""
    make_checkpoint("mixtral-window", tmp_path)
    model = from_pretrained(str(tmp_path), scan_layers=True)
    x = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (2, 8)), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(8, dtype=jnp.int32), (2, 8))
    with jax.default_matmul_precision("highest"):
        full = nnx.jit(lambda m, x: m(x))(model, x)
        step = nnx.jit(lambda m, t, p, c: m.decode(t, p, c))
        logits, cache = step(model, x[:, :4], pos[:, :4], model.init_cache(2, 8))
        steps = [logits]
        for t in range(4, 8):
            logits, cache = step(model, x[:, t:t + 1], pos[:, t:t + 1], cache)
            steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-5, rtol=0)
