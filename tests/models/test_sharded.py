"""A model sharded over (data=2, fsdp=2, tensor=2) host CPU devices computes what one device
computes; its parameters really are split, and loading reads straight into the shards."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pojax import sharding
from pojax.models import from_pretrained
from tests.models.hf_fixtures import VOCAB, make_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3")
    make_checkpoint("qwen3-qknorm", path)
    return str(path)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_sharded_forward_equals_single_device(ckpt, scan_layers):
    assert jax.device_count() == 8
    x = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (4, 12)), jnp.int32)
    with jax.default_matmul_precision("highest"):
        single = from_pretrained(ckpt, scan_layers=scan_layers)
        want = jax.jit(lambda m, x: m(x))(single, x)
        mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
        model = from_pretrained(ckpt, mesh=mesh, scan_layers=scan_layers)
        with sharding.use_mesh(mesh):
            xs = jax.device_put(x, sharding.logical_to_sharding(("batch", "length"), mesh))
            got = jax.jit(lambda m, x: m(x))(model, xs)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # the parameters are split over the mesh, not replicated
    kernel = model.layers[0].mlp.gate_proj.kernel if not scan_layers else model.layers.mlp.gate_proj.kernel
    assert len(kernel[...].sharding.device_set) == 8
    shard_shape = kernel[...].addressable_shards[0].data.shape
    assert np.prod(shard_shape) < np.prod(kernel.shape)


@pytest.mark.parametrize("variant", ["phi3-partial-window", "olmo2-bias", "gemma2-capped"])
def test_newer_families_sharded_equal_single_device(tmp_path, variant):
    """Fused Phi-3 tensors read row range by row range into shards, OLMo 2's q/k norms over
    heads split across the tensor axis, Gemma 2's soft caps: (data 2, fsdp 2, tensor 2) = one device."""
    make_checkpoint(variant, tmp_path)
    x = jnp.asarray(np.random.default_rng(1).integers(0, VOCAB, (4, 12)), jnp.int32)
    with jax.default_matmul_precision("highest"):
        want = jax.jit(lambda m, x: m(x))(from_pretrained(str(tmp_path)), x)
        mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
        model = from_pretrained(str(tmp_path), mesh=mesh)
        with sharding.use_mesh(mesh):
            xs = jax.device_put(x, sharding.logical_to_sharding(("batch", "length"), mesh))
            got = jax.jit(lambda m, x: m(x))(model, xs)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    q = model.layers[0].self_attn.q_proj.kernel[...]
    assert len(q.sharding.device_set) == 8 and np.prod(q.addressable_shards[0].data.shape) < np.prod(q.shape)
