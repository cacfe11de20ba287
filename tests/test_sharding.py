"""Mesh construction, the logical → mesh rules, and module sharding on 8 host CPU devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from pojax import sharding


def test_make_mesh_with_a_rest_axis():
    mesh = sharding.make_mesh(data=-1, fsdp=2, tensor=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(sharding.make_mesh().shape) == {"data": 8, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize(("sizes", "message"), [
    ({"data": -1, "fsdp": -1}, "at most one axis may be -1"),
    ({"data": 3, "fsdp": 1, "tensor": 1}, "needs 3 devices, but there are 8"),
    ({"data": -1, "fsdp": 3}, "not divisible by the other axes"),
    ({"data": 0}, "mesh.data must be a positive integer or -1"),
])
def test_make_mesh_errors(sizes, message):
    with pytest.raises(ValueError, match=message):
        sharding.make_mesh(**sizes)


def test_rules_table():
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    # a mesh axis is used once per array: batch takes fsdp, so embed is replicated
    assert sharding.logical_to_pspec(("batch", "length", "embed")) == P(("data", "fsdp"), None, None)
    assert sharding.logical_to_pspec(("embed", "mlp")) == P("fsdp", "tensor")
    assert sharding.logical_to_pspec(("vocab", "embed")) == P("tensor", "fsdp")
    assert sharding.logical_to_pspec(("embed", "heads", "head_dim")) == P("fsdp", "tensor", None)
    # non-divisible dims fall back to replication; size-1 mesh axes are dropped
    assert sharding.logical_to_pspec(("embed", "kv_heads"), mesh=mesh, shape=(32, 3)) == P("fsdp", None)
    assert sharding.logical_to_pspec(("embed", "mlp"), mesh=sharding.make_mesh(data=8)) == P(None, None)
    no_fsdp = sharding.merge_rules({"embed": None})
    assert sharding.logical_to_pspec(("embed", "mlp"), no_fsdp) == P(None, "tensor")


class TwoLayer(nnx.Module):
    def __init__(self):
        k1, k2 = jax.random.split(jax.random.key(0))
        self.w1 = nnx.Param(jax.random.normal(k1, (16, 32)), logical_axes=("embed", "mlp"))
        self.w2 = nnx.Param(jax.random.normal(k2, (32, 16)), logical_axes=("mlp", "embed"))
        self.step = nnx.Variable(jnp.zeros(()))

    def __call__(self, x):
        h = sharding.constrain(jnp.tanh(x @ self.w1[...]), ("batch", "mlp"))
        return sharding.constrain(h @ self.w2[...], ("batch", "embed"))


def test_sharded_module_computes_what_one_device_computes():
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    x = jax.random.normal(jax.random.key(1), (8, 16))
    want = TwoLayer()(x)
    model = sharding.shard_module(TwoLayer(), mesh)
    assert model.w1[...].sharding.spec == P("fsdp", "tensor")
    assert model.w2[...].sharding.spec == P("tensor", "fsdp")
    assert model.step[...].sharding.spec == P()
    with sharding.use_mesh(mesh):
        got = jax.jit(lambda m, x: m(x))(model, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_constrain_is_a_no_op_without_a_mesh():
    x = jnp.ones((4, 4))
    assert sharding.constrain(x, ("batch", "embed")) is x
    assert sharding.active_mesh() is None
