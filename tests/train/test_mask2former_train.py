"""The Mask2Former(+RankSeg) train step: it learns on synthetic panoptic data, logs the
criterion's terms, and runs in bfloat16 compute with float32 parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import mask2former_train_config

from rankseg_jax import sharding
from rankseg_jax.data import pipeline
from rankseg_jax.train import step as ts
from rankseg_jax.train import tasks

# Each compiles a Mask2Former train step (about 30 s and 2 GiB on a 2-core CPU).
pytestmark = pytest.mark.slow


def _run(config, steps):
    mesh = sharding.make_mesh(config, jax.devices()[:1])
    setup = ts.make_setup(config, mesh)
    state = ts.init_state(setup)
    step = ts.make_train_step(setup)
    it = pipeline.make_train_iterator(config, process_index=0, process_count=1)
    key = jax.device_put(jax.random.key(0), sharding.replicated(mesh))
    out = []
    for _ in range(steps):
        batch = pipeline.to_global(next(it), sharding.batch_sharding(mesh))
        state, metrics = step(state, batch, key)
        out.append(ts.finalize_metrics(jax.device_get(metrics)))
    return state, out


def test_loss_decreases_and_metrics_are_logged():
    c = mask2former_train_config(**{"optim.lr": 1e-3, "train.steps": 60})
    assert tasks.batch_keys(c) == tasks.MASK2FORMER_KEYS
    state, logs = _run(c, 60)
    first = np.mean([m["loss"] for m in logs[:8]])
    last = np.mean([m["loss"] for m in logs[-8:]])
    assert all(m["finite"] == 1.0 for m in logs)
    assert last < 0.9 * first, (first, last)  # measured: 55 -> 45 over 60 steps
    m = logs[-1]
    for key in ("loss_ce", "loss_mask", "loss_dice", "loss_aux", "loss_ml", "num_masks",
                "img_recall", "img_precision", "grad_norm"):
        assert np.isfinite(m[key]), key
    # The total is the sum of its logged parts (final + auxiliary terms + loss_ml).
    parts = m["loss_ce"] + m["loss_mask"] + m["loss_dice"] + m["loss_aux"] + m["loss_ml"]
    assert m["loss"] == pytest.approx(parts, rel=1e-5)
    assert m["num_masks"] >= 4 and m["img_recall"] == 1.0  # kappa = K: every class is kept
    assert jax.tree.leaves(state["params"])[0].dtype == jnp.float32


def test_bfloat16_compute_float32_params():
    c32 = mask2former_train_config(**{"train.steps": 2})
    c16 = mask2former_train_config(**{"train.steps": 2, "model.dtype": "bfloat16"})
    s16, l16 = _run(c16, 2)
    _, l32 = _run(c32, 1)
    assert all(m["finite"] == 1.0 for m in l16)
    assert {x.dtype for x in jax.tree.leaves(s16["params"])} == {jnp.dtype(jnp.float32)}
    # Same init, same batch, same draws: bf16 rounding only.
    assert l16[0]["loss"] == pytest.approx(l32[0]["loss"], rel=0.05)
