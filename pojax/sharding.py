"""Device mesh, logical-axis rules and sharding helpers.

Model code names array dimensions logically ("batch", "embed", "heads", ...) and never mentions
mesh axes; one rules table maps logical names to the mesh axes ("data", "fsdp", "expert", "tensor"). FSDP
versus tensor parallelism is a change of rules or mesh sizes, never of model code.

Parameters carry their names as Variable metadata, ``nnx.Param(w, logical_axes=("embed", "mlp"))``
(a tuple, one name or None per dimension; a tuple because Variable metadata is pytree aux data
and must hash). flax's own ``out_sharding`` metadata is not used: with eager sharding on, flax
would place the value at creation, before any mesh exists.

Typical use::

    mesh = mesh_from_config(config)
    rules = rules_from_config(config)
    model = shard_module(model, mesh, rules)
    with use_mesh(mesh, rules):  # activates constrain() inside the model
        loss = jax.jit(step)(model, batch)

Nothing here runs at import time; without ``use_mesh``, ``constrain`` returns its input.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import types
from collections.abc import Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "expert", "tensor")

Rule = str | tuple[str, ...] | None

# logical name -> mesh axis, tuple of mesh axes, or None (replicated). A mesh axis shards at most
# one dimension of an array: where two dimensions map to the same axis, the earlier one keeps it.
DEFAULT_RULES: Mapping[str, Rule] = types.MappingProxyType({
    "batch": ("data", "fsdp", "expert"),  # examples split over data, fsdp and expert replicas (both data-parallel
    # outside the experts' own matmuls)
    "length": None,  # sequence positions stay whole (no sequence parallelism)
    "kv_length": None,  # KV-cache slots
    "embed": "fsdp",  # FSDP: parameters split along the model dim D (activations: batch has fsdp)
    "mlp": "tensor",  # Megatron tensor parallelism: MLP width F...
    "heads": "tensor",  # ...attention heads H...
    "kv_heads": "tensor",  # ...and KV heads K (replicated when K does not divide by tensor)
    "head_dim": None,  # Dh stays whole: RoPE and the attention dot product need all of it
    "vocab": "tensor",  # embedding table and LM head split over V
    "layers": None,  # the stacked axis of nnx.scan layers (no pipeline parallelism)
    "expert": "expert",  # the experts of a mixture-of-experts layer (expert parallelism)
})

# (mesh, rules) of the innermost use_mesh block; a ContextVar so threads do not share it.
_ACTIVE: contextvars.ContextVar[tuple[Mesh, Mapping[str, Rule]] | None] = contextvars.ContextVar(
    "pojax_sharding_active", default=None)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence | None = None, *,
              expert: int = 1) -> Mesh:
    """A ("data", "fsdp", "expert", "tensor") mesh over ``devices`` (default: all of them).

    One size may be -1, "the rest of the devices". Device order comes from ``jax.make_mesh``
    (topology-aware on TPU); axis types are Auto, so XLA's partitioner fills in what
    ``with_sharding_constraint`` leaves open.

    Raises:
      ValueError: naming the ``mesh.<axis>`` config key, when a size is not a positive integer
        or -1, more than one is -1, or the sizes do not multiply to the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"data": data, "fsdp": fsdp, "expert": expert, "tensor": tensor}
    for axis, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
            raise ValueError(f"mesh.{axis} must be a positive integer or -1 (the rest), got {size!r}")
    rest = [a for a, s in sizes.items() if s == -1]
    if len(rest) > 1:
        raise ValueError(f"mesh.{rest[0]} and mesh.{rest[1]} are both -1; at most one axis may be -1 (the rest)")
    if rest:
        others = [a for a in AXES if a != rest[0]]
        known = math.prod(sizes[a] for a in others)
        if len(devices) % known:
            set_axes = [a for a in others if sizes[a] > 1]
            culprit = next((a for a in set_axes if len(devices) % sizes[a]), set_axes[0])
            product = " × ".join(f"mesh.{a}" for a in others)
            raise ValueError(f"mesh.{culprit}={sizes[culprit]}: {len(devices)} device(s) do not divide by "
                             f"{product} = {known} (mesh.{rest[0]}=-1 takes the rest)")
        sizes[rest[0]] = len(devices) // known
    total = math.prod(sizes.values())
    if total != len(devices):
        product = " × ".join(f"mesh.{a}={sizes[a]}" for a in AXES)
        culprit = max((a for a in AXES if sizes[a] > 1), key=lambda a: sizes[a], default="data")
        raise ValueError(f"mesh.{culprit}={sizes[culprit]}: {product} = {total}, but there are {len(devices)} devices")
    return jax.make_mesh(tuple(sizes[a] for a in AXES), AXES, axis_types=(AxisType.Auto,) * len(AXES),
                         devices=devices)


def mesh_from_config(config) -> Mesh:
    """The mesh of a run config's ``mesh.{data, fsdp, expert, tensor}`` sizes."""
    return make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, expert=config.mesh.get("expert", 1))


def _rule_axes(rule: Rule) -> tuple[str, ...]:
    if rule is None:
        return ()
    return (rule,) if isinstance(rule, str) else tuple(rule)


def merge_rules(overrides: Mapping[str, Rule] | None = None, base: Mapping[str, Rule] = DEFAULT_RULES) -> dict:
    """``base`` with some logical names remapped or added.

    E.g. ``{"embed": None}`` turns FSDP of the parameters off; ``{"mlp": ("fsdp", "tensor")}``
    splits the MLP over both axes.

    Raises:
      ValueError: when an override names something other than a mesh axis (AXES).
    """
    overrides = dict(overrides or {})
    for name, rule in overrides.items():
        if isinstance(rule, list):
            rule = overrides[name] = tuple(rule)
        bad = [a for a in _rule_axes(rule) if a not in AXES]
        if bad:
            raise ValueError(f"sharding rule {name!r} -> {rule!r}: {bad[0]!r} is not a mesh axis ({', '.join(AXES)})")
    return {**base, **overrides}


def rules_from_config(config) -> dict:
    """DEFAULT_RULES with the run config's ``mesh.rules`` overrides.

    Each override is a comma-separated string of mesh axes, as the command line sets it
    (``--config.mesh.rules.embed=""`` replicates, ``...mlp=fsdp,tensor`` splits over both); a
    tuple of axes or None is taken as it is.

    Raises:
      ValueError: naming the ``mesh.rules.<name>`` key, for a name that is not a logical axis of
        DEFAULT_RULES (config overrides catch typos; code adds new names with ``merge_rules``)
        or a value that is not a mesh axis.
    """
    rules = config.mesh.get("rules", None)
    overrides = {}
    for name, value in ({} if rules is None else dict(rules)).items():
        if name not in DEFAULT_RULES:
            raise ValueError(f"config key mesh.rules.{name}: unknown logical axis; known: {', '.join(DEFAULT_RULES)}")
        axes = tuple(a.strip() for a in value.split(",") if a.strip()) if isinstance(value, str) else _rule_axes(value)
        bad = [a for a in axes if a not in AXES]
        if bad:
            raise ValueError(f"config key mesh.rules.{name}: {bad[0]!r} is not a mesh axis ({', '.join(AXES)})")
        overrides[name] = None if not axes else axes[0] if len(axes) == 1 else axes
    return merge_rules(overrides)


def logical_to_pspec(logical_axes: Sequence[str | None], rules: Mapping[str, Rule] = DEFAULT_RULES,
                     mesh: Mesh | None = None, shape: Sequence[int] | None = None) -> PartitionSpec:
    """PartitionSpec, one entry per dimension, of an array whose dims have these logical names.

    Dims are resolved left to right; a mesh axis taken by an earlier dim is dropped from later
    ones (a dim whose axes are all taken is replicated). With ``mesh`` given, mesh axes of size 1
    are dropped; with ``shape`` too, a dim keeps the longest prefix of its mesh axes whose size
    product divides the dim (so batch 2 on data=2, fsdp=2 shards on data only, and 2 KV heads on
    tensor=4 are replicated), and an axis freed that way is open to later dims.

    Args:
      logical_axes: a logical name (a key of ``rules``) or None per dimension.
      rules: logical name -> mesh axis / tuple of mesh axes / None (None: DEFAULT_RULES).
      mesh: when given, checks the rules' axes exist and drops size-1 axes (and pojax axes the
        mesh lacks, e.g. "expert" of a ("data", "fsdp", "tensor") mesh built by hand).
      shape: the array's shape, for the divisibility fallback (needs ``mesh``).

    Raises:
      ValueError: an unknown logical name, a rule naming an axis the mesh lacks, or
        ``len(shape) != len(logical_axes)``.
    """
    rules = DEFAULT_RULES if rules is None else rules
    logical_axes = tuple(logical_axes)
    if shape is not None and len(shape) != len(logical_axes):
        raise ValueError(f"logical axes {logical_axes} name {len(logical_axes)} dims, but the shape is {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for i, name in enumerate(logical_axes):
        if name is not None and name not in rules:
            raise ValueError(f"unknown logical axis {name!r}; the rules know: {', '.join(rules)}")
        axes = []
        for axis in _rule_axes(rules.get(name)) if name is not None else ():
            if mesh is not None and axis not in mesh.shape:
                if axis in AXES:  # a mesh built without pojax's expert axis: size 1
                    continue
                raise ValueError(f"logical axis {name!r} maps to mesh axis {axis!r}, which the mesh "
                                 f"({', '.join(mesh.axis_names)}) lacks")
            if axis not in used and axis not in axes and (mesh is None or mesh.shape[axis] > 1):
                axes.append(axis)
        if mesh is not None and shape is not None:
            while axes and shape[i] % math.prod(mesh.shape[a] for a in axes):
                axes.pop()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return PartitionSpec(*spec)


def logical_to_sharding(logical_axes: Sequence[str | None], mesh: Mesh, rules: Mapping[str, Rule] = DEFAULT_RULES,
                        shape: Sequence[int] | None = None) -> NamedSharding:
    """NamedSharding on ``mesh`` of an array with these logical dims (see ``logical_to_pspec``)."""
    return NamedSharding(mesh, logical_to_pspec(logical_axes, rules, mesh, shape))


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def with_memory_kind(shardings, kind: str):
    """``shardings`` (a tree of NamedShardings) with every sharding in memory ``kind``
    ("device", "pinned_host", ...)."""
    return jax.tree.map(lambda s: s.with_memory_kind(kind), shardings, is_leaf=lambda x: isinstance(x, NamedSharding))


def param_shardings(state, mesh: Mesh, rules: Mapping[str, Rule] = DEFAULT_RULES):
    """NamedShardings for an ``nnx.State``, from each Variable's ``logical_axes`` metadata.

    Works on concrete and abstract (``nnx.eval_shape``) states alike. Variables without
    ``logical_axes`` (RNG counters, step counts, ...) and plain leaves are replicated.

    Returns:
      A tree of the state's structure with one NamedSharding where each Variable is (a prefix
      of the state's tree, as ``jax.device_put`` and ``jax.jit``'s in/out_shardings take it).

    Raises:
      ValueError: naming the variable's path, when its logical axes do not fit its shape.
    """
    replicated = NamedSharding(mesh, PartitionSpec())

    def one(path, leaf):
        axes = leaf.get_metadata("logical_axes", None) if _is_variable(leaf) else None
        if axes is None:
            return replicated
        try:
            return logical_to_sharding(axes, mesh, rules, shape=leaf.shape)
        except ValueError as e:
            raise ValueError(f"{jax.tree_util.keystr(path, simple=True, separator='.')}: {e}") from None

    return jax.tree_util.tree_map_with_path(one, state, is_leaf=_is_variable)


def shard_module(module: nnx.Module, mesh: Mesh, rules: Mapping[str, Rule] = DEFAULT_RULES) -> nnx.Module:
    """A copy of ``module`` with every variable placed on ``mesh`` by its logical axes.

    The argument is left as it was (its arrays are not donated or moved).
    """
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.device_put(state, param_shardings(state, mesh, rules)))


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Mapping[str, Rule] = DEFAULT_RULES):
    """Makes ``mesh`` and ``rules`` the target of ``constrain`` inside the block.

    It also sets JAX's abstract mesh, which is part of ``jax.jit``'s cache key: a function traced
    outside the block is traced again inside it (and the reverse), so constraints are never
    silently missing or stale. Only the rules are not in the key: calling an already-traced
    function under other rules and the same mesh reuses the old trace.
    """
    rules = merge_rules(DEFAULT_RULES if rules is None else rules, base={})  # checks its mesh axes
    token = _ACTIVE.set((mesh, rules))
    try:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            yield mesh
    finally:
        _ACTIVE.reset(token)


def active_mesh() -> Mesh | None:
    """The mesh of the innermost ``use_mesh`` block, or None."""
    active = _ACTIVE.get()
    return None if active is None else active[0]


def constrain(x: jax.Array, logical_axes: Sequence[str | None], rules: Mapping[str, Rule] | None = None) -> jax.Array:
    """``jax.lax.with_sharding_constraint`` of an activation by logical dim names.

    Returns ``x`` itself when no ``use_mesh`` block is active. A dim keeps only the mesh axes
    that divide it, replicated if none do (see ``logical_to_pspec``).

    Args:
      x: an array of any shape, one logical name (or None) per dim in ``logical_axes``.
      rules: the table to use; default: that of the active ``use_mesh``.
    """
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, active_rules = active
    spec = logical_to_pspec(logical_axes, active_rules if rules is None else rules, mesh, x.shape)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
