"""Mesh options, golden PartitionSpec table, sharded == single-device step (8 fake CPUs)."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest
from flax import nnx
from helpers import tiny_config

from rankseg_jax import param_paths, sharding
from rankseg_jax.models import build_model

HERE = pathlib.Path(__file__).parents[1]  # tests/
GOLDEN = HERE / "golden" / "partition_specs_tiny_rankseg.json"
SIZES = {"data": 2, "fsdp": 2, "tensor": 2}


def _spec_table():
    c = tiny_config("rankseg")
    c.mesh.fsdp_min_size = 4096
    model = nnx.eval_shape(lambda: build_model(c, nnx.Rngs(0)))
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    table = {}
    for path, var in flat:
        shape = tuple(var.shape)
        spec = sharding.partition_spec(param_paths.path_name(path), shape, SIZES,
                                       c.mesh.fsdp_min_size)
        table[param_paths.path_name(path)] = {
            "shape": list(shape), "spec": list(spec) + [None] * (len(shape) - len(spec))}
    return table


def test_golden_partition_specs():
    table = _spec_table()
    if os.environ.get("REGEN_GOLDEN"):
        lines = [f"  {json.dumps(k)}: {json.dumps(table[k])}" for k in sorted(table)]
        GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n")  # one parameter per line
    golden = json.loads(GOLDEN.read_text())
    problems = [f"missing in model: {k}" for k in sorted(set(golden) - set(table))]
    problems += [f"new parameter (not in golden): {k} {table[k]}"
                 for k in sorted(set(table) - set(golden))]
    problems += [f"{k}: golden {golden[k]} != now {table[k]}"
                 for k in sorted(set(golden) & set(table)) if golden[k] != table[k]]
    assert not problems, ("partition specs changed (REGEN_GOLDEN=1 to accept):\n"
                          + "\n".join(problems))


def test_rules_examples():
    spec = sharding.partition_spec
    assert spec("backbone/layers/0/attn/query/kernel", (64, 64), SIZES, 1) == \
        jax.P("fsdp", "tensor")
    assert spec("backbone/layers/0/mlp/fc2/kernel", (256, 64), SIZES, 1) == \
        jax.P("tensor", "fsdp")
    assert spec("backbone/layers/0/mlp/fc1/bias", (256,), SIZES, 1 << 20) == jax.P("tensor")
    assert spec("backbone/pos_embed", (1, 17, 64), SIZES, 1) == jax.P(None, None, "fsdp")
    assert spec("head/mask_norm/scale", (8,), SIZES, 4096) == jax.P()
    # Without fsdp/tensor axes everything is replicated.
    assert spec("backbone/layers/0/attn/query/kernel", (64, 64), {"data": 8}, 1) == jax.P()


@pytest.mark.parametrize("mesh,n,match", [
    ({"data": 3, "fsdp": 1, "tensor": 1}, 8, "mesh.data"),
    ({"data": -1, "fsdp": 3, "tensor": 1}, 8, "mesh.data=-1"),
    ({"data": -1, "fsdp": -1, "tensor": 1}, 8, "only one mesh axis"),
    ({"data": 2, "fsdp": 0, "tensor": 1}, 8, "mesh.fsdp=0"),
])
def test_mesh_errors_name_the_option(mesh, n, match):
    c = tiny_config()
    c.mesh.update(mesh)
    with pytest.raises(sharding.MeshError, match=match):
        sharding.mesh_shape(c, n)


def test_mesh_fill():
    c = tiny_config()
    c.mesh.update({"data": -1, "fsdp": 2, "tensor": 1})
    assert sharding.mesh_shape(c, 8) == (4, 2, 1)


@pytest.mark.slow  # a subprocess with 8 fake CPU devices
@pytest.mark.parametrize("arch", ["segmenter", "mask2former"])
def test_sharded_step_equals_single_device_step(arch):
    """data=4 x fsdp=2 on 8 fake CPU devices vs one device: same losses and params
    (Mask2Former: Hungarian matching, point draws and the global mask count included)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run([sys.executable, str(HERE / "sharded_step_check.py"), arch], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
