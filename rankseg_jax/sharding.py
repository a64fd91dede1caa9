"""Device mesh, parameter partition rules and shapes-first sharded initialisation.

Mesh axes are ('data', 'fsdp', 'tensor') from `config.mesh` (-1 fills the rest). The batch is
split over ('data', 'fsdp') (FSDP ranks also see different examples). Parameters follow
rules over their '/'-joined path (e.g. 'backbone/layers/3/attn/query/kernel'):

  * tensor (only when mesh.tensor > 1): q/k/v/fc1 kernels [in, out] split their output
    columns, their biases [out] likewise; out/fc2 kernels split their input rows, so one
    all-reduce follows each attention/MLP (Megatron layout);
  * fsdp (only when mesh.fsdp > 1): tensors with >= mesh.fsdp_min_size elements shard their
    largest dimension that is divisible by mesh.fsdp and not taken by 'tensor';
  * everything else is replicated.

The mesh uses `AxisType.Auto` (GSPMD propagation inside jit), the best-trodden path with
orbax restores; activations need no annotations for these rules.
"""

from __future__ import annotations

import re

import jax
import ml_collections as mlc
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rankseg_jax import param_paths

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (regex on the path, dimension split over 'tensor'); a negative dim counts from the end.
TENSOR_RULES = (
    (r"/(query|key|value|fc1)/kernel$", -1),
    (r"/(query|key|value|fc1)/bias$", -1),
    (r"/(out|fc2)/kernel$", 0),
)


class MeshError(ValueError):
    """The mesh options do not fit the devices; the message names the option."""


def mesh_shape(config: mlc.ConfigDict, num_devices: int) -> tuple[int, int, int]:
    """Resolves (data, fsdp, tensor) sizes; exactly one may be -1 (fills the rest)."""
    sizes = {f"mesh.{a}": int(config.mesh[a]) for a in AXES}
    fill = [k for k, v in sizes.items() if v == -1]
    if len(fill) > 1:
        raise MeshError(f"only one mesh axis may be -1, got {fill}")
    for k, v in sizes.items():
        if v == 0 or v < -1:
            raise MeshError(f"{k}={v} must be a positive size or -1")
    known = int(np.prod([v for v in sizes.values() if v != -1]))
    if fill:
        if num_devices % known:
            raise MeshError(
                f"{fill[0]}=-1 cannot fill {num_devices} devices: the other mesh axes "
                f"multiply to {known}, which does not divide {num_devices}")
        sizes[fill[0]] = num_devices // known
    total = int(np.prod(list(sizes.values())))
    if total != num_devices:
        raise MeshError(f"mesh.data*mesh.fsdp*mesh.tensor = {total} but there are "
                        f"{num_devices} devices ({sizes})")
    return tuple(sizes[f"mesh.{a}"] for a in AXES)


def make_mesh(config: mlc.ConfigDict, devices=None) -> jax.sharding.Mesh:
    """The ('data', 'fsdp', 'tensor') mesh over `devices` (default: all), Auto axis types."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(config, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(AXES)
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(shape, AXES, axis_types=auto, devices=devices)
    return jax.sharding.Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=auto)


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
    """Number of batch shards (data * fsdp)."""
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) axis over ('data', 'fsdp'), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def partition_spec(name: str, shape: tuple, mesh_sizes: dict, fsdp_min_size: int) -> P:
    """The PartitionSpec of one parameter (see the module docstring for the rules)."""
    spec = [None] * len(shape)
    tensor = mesh_sizes.get("tensor", 1)
    if tensor > 1:
        for pattern, dim in TENSOR_RULES:
            if re.search(pattern, name):
                d = dim % len(shape)
                if shape[d] % tensor == 0:
                    spec[d] = "tensor"
                break
    fsdp = mesh_sizes.get("fsdp", 1)
    if fsdp > 1 and int(np.prod(shape)) >= fsdp_min_size:
        # Largest free divisible dim; ties go to the earlier dim (stable, documented).
        order = sorted(range(len(shape)), key=lambda d: (-shape[d], d))
        for d in order:
            if spec[d] is None and shape[d] % fsdp == 0:
                spec[d] = "fsdp"
                break
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def param_specs(params, mesh: jax.sharding.Mesh, config: mlc.ConfigDict):
    """PartitionSpec pytree for `params` (pure dict of arrays or ShapeDtypeStructs)."""
    sizes = dict(mesh.shape)
    def spec(kp, x):
        name = param_paths.path_name(param_paths.key_path_tuple(kp))
        return partition_spec(name, tuple(x.shape), sizes, config.mesh.fsdp_min_size)

    return jax.tree_util.tree_map_with_path(spec, params)


def param_shardings(params, mesh: jax.sharding.Mesh, config: mlc.ConfigDict):
    """NamedSharding pytree for `params`."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(params, mesh, config),
                        is_leaf=lambda x: isinstance(x, P))


def spec_table(params, mesh: jax.sharding.Mesh, config: mlc.ConfigDict) -> dict[str, list]:
    """{path name: [axis or None per dim]} for golden files and logs."""
    specs = param_specs(params, mesh, config)
    flat = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]
    out = {}
    for kp, spec in flat:
        path = param_paths.key_path_tuple(kp)
        shape = param_paths.get_path(params, path).shape
        full = list(spec) + [None] * (len(shape) - len(spec))
        out[param_paths.path_name(path)] = [s if s is None or isinstance(s, str) else list(s)
                                            for s in full]
    return out


def replicated_bytes_fraction(params, shardings) -> float:
    """Fraction of parameter bytes that are fully replicated (maxtext-style guard)."""
    total = rep = 0
    for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings), strict=True):
        n = int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
        total += n
        if all(a is None for a in s.spec):
            rep += n
    return rep / max(total, 1)


def with_shardings(abstract, mesh: jax.sharding.Mesh, config: mlc.ConfigDict):
    """Attaches the rule-based shardings to an abstract pytree.

    abstract: pytree of jax.ShapeDtypeStruct (params, or a whole train state: the rules key on
    path suffixes and shapes, so optimizer moments get their parameter's sharding and scalars
    are replicated). Returns (abstract with .sharding set, pytree of NamedSharding).
    """
    shardings = param_shardings(abstract, mesh, config)
    out = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       abstract, shardings)
    return out, shardings
