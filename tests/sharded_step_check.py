"""Run with 8 fake CPU devices: a data=4 x fsdp=2 step equals a one-device step.

    python tests/sharded_step_check.py [segmenter|mask2former]

Prints 'OK <max abs param diff> <loss diff>' on success; used by test_sharding.py.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from helpers import mask2former_train_config, small_train_config  # noqa: E402

from rankseg_jax import sharding  # noqa: E402
from rankseg_jax.data import pipeline as input_pipeline
from rankseg_jax.train import step as ts


def run(config, devices):
    mesh = sharding.make_mesh(config, devices)
    setup = ts.make_setup(config, mesh)
    state = ts.init_state(setup)
    step = ts.make_train_step(setup)
    it = input_pipeline.make_train_iterator(config, process_index=0, process_count=1)
    key = jax.device_put(jax.random.key(0), sharding.replicated(mesh))
    losses = []
    for _ in range(2):
        batch = input_pipeline.to_global(next(it), sharding.batch_sharding(mesh))
        state, m = step(state, batch, key)
        losses.append(float(m["loss"]))
    specs = {str(s.spec) for s in jax.tree.leaves(setup.state_shardings["params"])}
    return jax.device_get(state["params"]), np.array(losses), specs


def main():
    assert jax.device_count() == 8, jax.devices()
    arch = sys.argv[1] if len(sys.argv) > 1 else "segmenter"
    if arch == "mask2former":  # dropout, drop-path and point draws all from the step key
        over = {"train.batch_size": 8, "mesh.fsdp_min_size": 1024,
                "model.mask2former.dropout": 0.1, "model.swin.drop_path_rate": 0.1}
        make = mask2former_train_config
    else:
        over = {"train.batch_size": 8, "mesh.fsdp_min_size": 1024, "model.head.dropout": 0.1,
                "model.vit.drop_path_rate": 0.1}
        make = small_train_config
    single = make(**over, **{"mesh.data": 1})
    multi = make(**over, **{"mesh.data": 4, "mesh.fsdp": 2})
    p1, l1, _ = run(single, jax.devices()[:1])
    p8, l8, specs = run(multi, jax.devices())
    assert any("fsdp" in s for s in specs), specs  # something really is sharded
    diff = max(float(np.max(np.abs(a - b))) for a, b in
               zip(jax.tree.leaves(p1), jax.tree.leaves(p8), strict=True))
    np.testing.assert_allclose(l1, l8, rtol=2e-5, atol=1e-6)
    assert diff < 2e-5, diff
    print("OK", diff, float(np.max(np.abs(l1 - l8))))


if __name__ == "__main__":
    main()
