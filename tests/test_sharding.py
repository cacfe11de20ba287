"""Mesh construction, the logical → mesh rules, module sharding and activation constraints,
on the 8 host CPU devices that conftest.py sets up."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from pojax import config as pojax_config
from pojax import sharding


@pytest.fixture(scope="module")
def mesh222():
    return sharding.make_mesh(data=2, fsdp=2, tensor=2)


# ---------------------------------------------------------------------------------------- mesh

@pytest.mark.parametrize(("sizes", "want"), [
    ({}, (8, 1, 1, 1)),
    ({"data": -1, "fsdp": 2, "tensor": 2}, (2, 2, 1, 2)),
    ({"data": 2, "fsdp": -1, "tensor": 1}, (2, 4, 1, 1)),
    ({"data": 1, "fsdp": 2, "tensor": -1}, (1, 2, 1, 4)),
    ({"data": 2, "fsdp": 2, "tensor": 2}, (2, 2, 1, 2)),
    ({"data": 2, "expert": 2, "tensor": 2}, (2, 1, 2, 2)),
    ({"data": 2, "expert": -1}, (2, 1, 4, 1)),
])
def test_make_mesh_sizes(sizes, want):
    mesh = sharding.make_mesh(**sizes)
    assert mesh.axis_names == ("data", "fsdp", "expert", "tensor")
    assert tuple(mesh.shape.values()) == want
    assert mesh.axis_types == (AxisType.Auto,) * 4


def test_make_mesh_on_some_devices():
    mesh = sharding.make_mesh(data=-1, tensor=2, devices=jax.devices()[:4])
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "expert": 1, "tensor": 2}
    assert set(mesh.devices.flat) == set(jax.devices()[:4])


@pytest.mark.parametrize(("sizes", "message"), [
    ({"data": -1, "fsdp": -1}, r"mesh.data and mesh.fsdp are both -1; at most one axis may be -1"),
    ({"data": 3, "fsdp": 1, "tensor": 1}, r"^mesh.data=3: mesh.data=3 × mesh.fsdp=1 × mesh.expert=1 × mesh.tensor=1 = 3, but there are 8 devices"),
    ({"data": 2, "fsdp": 2, "tensor": 4}, r"^mesh.tensor=4: .*= 16, but there are 8 devices"),
    # the key the user set is named first, not the axis that takes the rest
    ({"data": -1, "fsdp": 3}, r"^mesh.fsdp=3: 8 device\(s\) do not divide by mesh.fsdp × mesh.expert × mesh.tensor = 3 \(mesh.data=-1 takes"),
    ({"data": -1, "fsdp": 2, "tensor": 3}, r"^mesh.tensor=3: 8 device"),
    ({"data": 0}, r"mesh.data must be a positive integer or -1 \(the rest\), got 0"),
    ({"tensor": -2}, r"mesh.tensor must be a positive integer or -1 \(the rest\), got -2"),
    ({"fsdp": 2.0}, r"mesh.fsdp must be a positive integer or -1 \(the rest\), got 2.0"),
])
def test_make_mesh_errors(sizes, message):
    with pytest.raises(ValueError, match=message):
        sharding.make_mesh(**sizes)


def test_mesh_from_config():
    config = pojax_config.base_config()
    assert dict(sharding.mesh_from_config(config).shape) == {"data": 8, "fsdp": 1, "expert": 1, "tensor": 1}
    config.mesh.fsdp, config.mesh.tensor = 2, 2
    assert dict(sharding.mesh_from_config(config).shape) == {"data": 2, "fsdp": 2, "expert": 1, "tensor": 2}
    config.mesh.fsdp, config.mesh.expert = 1, 2
    assert dict(sharding.mesh_from_config(config).shape) == {"data": 2, "fsdp": 1, "expert": 2, "tensor": 2}


# --------------------------------------------------------------------------------------- rules

def test_default_rules_are_read_only_and_merge_copies():
    with pytest.raises(TypeError):
        sharding.DEFAULT_RULES["embed"] = None
    rules = sharding.merge_rules({"embed": None, "mlp": ["fsdp", "tensor"], "experts": "data"})
    assert rules["embed"] is None and rules["mlp"] == ("fsdp", "tensor") and rules["experts"] == "data"
    assert rules["heads"] == "tensor" and sharding.DEFAULT_RULES["embed"] == "fsdp"


def test_merge_rules_rejects_unknown_mesh_axes():
    with pytest.raises(ValueError, match=r"sharding rule 'embed' -> \('fsdp', 'pipe'\): 'pipe' is not a mesh axis"):
        sharding.merge_rules({"embed": ("fsdp", "pipe")})


def test_rules_from_config():
    config = pojax_config.base_config()
    assert sharding.rules_from_config(config) == sharding.DEFAULT_RULES
    config.mesh.rules.embed = ""
    config.mesh.rules.batch = "data"
    config.mesh.rules.mlp = "fsdp, tensor"
    rules = sharding.rules_from_config(config)
    assert rules["embed"] is None and rules["batch"] == "data" and rules["mlp"] == ("fsdp", "tensor")
    assert rules["vocab"] == "tensor"
    config.mesh.rules = {"embed": None, "heads": ("fsdp", "tensor")}  # set in a recipe's Python
    rules = sharding.rules_from_config(config)
    assert rules["embed"] is None and rules["heads"] == ("fsdp", "tensor")
    config.mesh.rules = {"embed": "model"}
    with pytest.raises(ValueError, match=r"config key mesh.rules.embed: 'model' is not a mesh axis \(data, fsdp, expert, tensor\)"):
        sharding.rules_from_config(config)
    config = pojax_config.base_config()
    config.mesh.rules.hidden = "fsdp"
    with pytest.raises(ValueError, match="config key mesh.rules.hidden: unknown logical axis; known: batch, length"):
        sharding.rules_from_config(config)


@pytest.mark.parametrize(("axes", "want"), [
    # parameters
    (("embed", "mlp"), P("fsdp", "tensor")),
    (("mlp", "embed"), P("tensor", "fsdp")),
    (("vocab", "embed"), P("tensor", "fsdp")),
    (("embed", "heads", "head_dim"), P("fsdp", "tensor", None)),
    (("embed", "kv_heads", "head_dim"), P("fsdp", "tensor", None)),
    (("layers", "embed", "mlp"), P(None, "fsdp", "tensor")),
    (("embed",), P("fsdp")),
    (("embed", None), P("fsdp", None)),
    # mixture-of-experts weights: experts over the expert axis
    (("expert", "embed", "mlp"), P("expert", "fsdp", "tensor")),
    # activations: batch takes data, fsdp and expert, so a later embed is replicated
    (("batch", "length", "embed"), P(("data", "fsdp", "expert"), None, None)),
    (("batch", "length", "heads", "head_dim"), P(("data", "fsdp", "expert"), None, "tensor", None)),
    (("batch", "kv_length", "kv_heads", "head_dim"), P(("data", "fsdp", "expert"), None, "tensor", None)),
    (("batch", "length", "vocab"), P(("data", "fsdp", "expert"), None, "tensor")),
    # a mesh axis is used once per array: the later dim loses it (and keeps the rest of a tuple)
    (("mlp", "heads"), P("tensor", None)),
    (("embed", "batch"), P("fsdp", ("data", "expert"))),
    ((), P()),
])
def test_logical_to_pspec_table(axes, want):
    assert sharding.logical_to_pspec(axes) == want


def test_logical_to_pspec_rule_overrides():
    assert sharding.logical_to_pspec(("embed", "mlp"), sharding.merge_rules({"embed": None})) == P(None, "tensor")
    both = sharding.merge_rules({"mlp": ("fsdp", "tensor"), "embed": None})
    assert sharding.logical_to_pspec(("embed", "mlp"), both) == P(None, ("fsdp", "tensor"))


@pytest.mark.parametrize(("mesh_sizes", "axes", "shape", "want"), [
    # size-1 mesh axes are dropped
    ({"data": 8}, ("embed", "mlp"), None, P(None, None)),
    ({"data": 8}, ("batch", "length", "embed"), None, P("data", None, None)),
    ({"data": 2, "fsdp": 4}, ("batch", "embed"), (8, 32), P(("data", "fsdp"), None)),
    # a dim that does not divide falls back to replication...
    ({"data": 2, "fsdp": 2, "tensor": 2}, ("embed", "kv_heads", "head_dim"), (32, 3, 8), P("fsdp", None, None)),
    ({"data": 1, "fsdp": 2, "tensor": 4}, ("embed", "kv_heads", "head_dim"), (32, 2, 8), P("fsdp", None, None)),
    ({"data": 2, "fsdp": 2, "tensor": 2}, ("vocab", "embed"), (255, 64), P(None, "fsdp")),
    ({"data": 2, "fsdp": 2, "tensor": 2}, ("batch", "length"), (3, 16), P(None, None)),
    # ...or to the longest prefix of its mesh axes that divides it; the freed axis is open later
    ({"data": 2, "fsdp": 2, "tensor": 2}, ("batch", "length"), (2, 16), P("data", None)),
    ({"data": 2, "fsdp": 2, "tensor": 2}, ("batch", "embed"), (2, 16), P("data", "fsdp")),
    ({"data": 2, "fsdp": 2, "tensor": 2}, ("batch", "embed"), (4, 16), P(("data", "fsdp"), None)),
])
def test_logical_to_pspec_on_a_mesh(mesh_sizes, axes, shape, want):
    mesh = sharding.make_mesh(**mesh_sizes)
    assert sharding.logical_to_pspec(axes, mesh=mesh, shape=shape) == want
    got = sharding.logical_to_sharding(axes, mesh, shape=shape)
    assert isinstance(got, NamedSharding) and got.mesh == mesh and got.spec == want


def test_logical_to_pspec_errors(mesh222):
    with pytest.raises(ValueError, match=r"unknown logical axis 'embd'; the rules know: batch, length"):
        sharding.logical_to_pspec(("embd", "mlp"))
    with pytest.raises(ValueError, match=r"logical axes \('embed', 'mlp'\) name 2 dims, but the shape is \(4,\)"):
        sharding.logical_to_pspec(("embed", "mlp"), mesh=mesh222, shape=(4,))
    with pytest.raises(ValueError, match=r"logical axis 'embed' maps to mesh axis 'pipe', which the mesh \(data, fsdp, expert, tensor\) lacks"):
        sharding.logical_to_pspec(("embed",), {"embed": "pipe"}, mesh=mesh222)


# ------------------------------------------------------------------------------------- modules

class TwoLayer(nnx.Module):
    """x [B, D] -> tanh(x @ w1) [B, F] -> @ w2 [B, D], with activation constraints."""

    def __init__(self, d: int = 16, f: int = 32, kv: int = 3):
        k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
        self.w1 = nnx.Param(jax.random.normal(k1, (d, f)) / d**0.5, logical_axes=("embed", "mlp"))
        self.w2 = nnx.Param(jax.random.normal(k2, (f, d)) / f**0.5, logical_axes=("mlp", "embed"))
        self.kv = nnx.Param(jax.random.normal(k3, (d, kv)), logical_axes=("embed", "kv_heads"))
        self.count = nnx.Variable(jnp.zeros((), jnp.int32))  # no logical axes: replicated

    def __call__(self, x_BD):
        h_BF = sharding.constrain(jnp.tanh(x_BD @ self.w1[...]), ("batch", "mlp"))
        return sharding.constrain(h_BF @ self.w2[...], ("batch", "embed"))


def test_param_metadata_survives_split_and_merge():
    graphdef, state = nnx.split(TwoLayer())
    assert state["w1"].get_metadata("logical_axes") == ("embed", "mlp")
    assert nnx.merge(graphdef, state).w2.get_metadata("logical_axes") == ("mlp", "embed")


def test_param_shardings(mesh222):
    specs = jax.tree.map(lambda s: s.spec, sharding.param_shardings(nnx.state(TwoLayer()), mesh222))
    assert specs["w1"] == P("fsdp", "tensor")
    assert specs["w2"] == P("tensor", "fsdp")
    assert specs["kv"] == P("fsdp", None)  # 3 kv heads do not divide by tensor=2
    assert specs["count"] == P()
    abstract = nnx.eval_shape(lambda: TwoLayer(d=64, f=128, kv=4))  # no arrays allocated
    specs = jax.tree.map(lambda s: s.spec, sharding.param_shardings(nnx.state(abstract), mesh222))
    assert specs["kv"] == P("fsdp", "tensor")


def test_param_shardings_names_the_variable_that_does_not_fit(mesh222):
    model = TwoLayer()
    model.w1.set_metadata("logical_axes", ("layers", "embed", "mlp"))
    with pytest.raises(ValueError, match=r"^w1: logical axes \('layers', 'embed', 'mlp'\) name 3 dims, but the shape is \(16, 32\)"):
        sharding.param_shardings(nnx.state(model), mesh222)


def test_shard_module_places_variables_and_keeps_the_original(mesh222):
    original = TwoLayer()
    model = sharding.shard_module(original, mesh222)
    assert model.w1[...].sharding == NamedSharding(mesh222, P("fsdp", "tensor"))
    assert model.w2[...].sharding.spec == P("tensor", "fsdp")
    assert model.kv[...].sharding.spec == P("fsdp", None)
    assert model.count[...].sharding.spec == P()
    assert len(original.w1[...].sharding.device_set) == 1
    np.testing.assert_array_equal(model.w1[...], original.w1[...])


def test_sharded_forward_and_grad_match_one_device(mesh222):
    x_BD = jax.random.normal(jax.random.key(1), (8, 16))
    model = TwoLayer()

    def loss(params, graphdef, rest, x):
        return jnp.mean(nnx.merge(graphdef, params, rest)(x) ** 2)

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    want_y, want_g = model(x_BD), jax.grad(loss)(params, graphdef, rest, x_BD)

    sharded = sharding.shard_module(model, mesh222)
    graphdef, params, rest = nnx.split(sharded, nnx.Param, ...)
    with sharding.use_mesh(mesh222):
        got_y = jax.jit(lambda m, x: m(x))(sharded, x_BD)
        got_g = jax.jit(jax.grad(loss), static_argnums=1)(params, graphdef, rest, x_BD)
    assert got_y.sharding.is_equivalent_to(NamedSharding(mesh222, P(("data", "fsdp"), None)), 2)  # last constrain
    np.testing.assert_allclose(got_y, want_y, rtol=1e-6, atol=1e-6)
    for name in ("w1", "w2"):
        np.testing.assert_allclose(got_g[name][...], want_g[name][...], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------- constrain

def test_constrain_is_a_no_op_without_a_mesh():
    x = jnp.ones((4, 4))
    assert sharding.active_mesh() is None
    assert sharding.constrain(x, ("batch", "embed")) is x
    y = jax.jit(lambda x: sharding.constrain(x * 2, ("batch", "embed")))(x)
    assert len(y.sharding.device_set) == 1


def test_use_mesh_nests_and_restores(mesh222):
    mesh8 = sharding.make_mesh(data=8)
    with sharding.use_mesh(mesh222):
        assert sharding.active_mesh() is mesh222
        with sharding.use_mesh(mesh8):
            assert sharding.active_mesh() is mesh8
            assert sharding.constrain(jnp.ones((8, 4)), ("batch", "embed")).sharding.spec == P("data", None)
        assert sharding.active_mesh() is mesh222
    assert sharding.active_mesh() is None


def test_constrain_rules_come_from_use_mesh_or_the_argument(mesh222):
    x = jnp.ones((8, 4))
    with sharding.use_mesh(mesh222, sharding.merge_rules({"batch": "data"})):
        assert sharding.constrain(x, ("batch", "mlp")).sharding.spec == P("data", "tensor")
        assert sharding.constrain(x, ("batch", "mlp"), {"batch": None, "mlp": "fsdp"}).sharding.spec == P(None, "fsdp")
    with pytest.raises(ValueError, match=r"sharding rule 'batch' -> 'dp': 'dp' is not a mesh axis"):
        with sharding.use_mesh(mesh222, {"batch": "dp"}):
            pass


def test_constrain_errors_on_a_rank_mismatch(mesh222):
    with sharding.use_mesh(mesh222), pytest.raises(ValueError, match=r"name 3 dims, but the shape is \(8, 4\)"):
        sharding.constrain(jnp.ones((8, 4)), ("batch", "length", "embed"))


def test_jit_traces_again_when_a_mesh_is_entered_or_left(mesh222):
    traces = []

    @jax.jit
    def f(x):
        traces.append(sharding.active_mesh())
        return sharding.constrain(x * 2, ("batch", "mlp"))

    x = jnp.ones((8, 4))
    assert len(f(x).sharding.device_set) == 1
    with sharding.use_mesh(mesh222):
        want = NamedSharding(mesh222, P(("data", "fsdp"), "tensor"))
        assert f(x).sharding.is_equivalent_to(want, 2)  # not the cached no-mesh trace
    assert len(f(x).sharding.device_set) == 1
    assert traces == [None, mesh222]
