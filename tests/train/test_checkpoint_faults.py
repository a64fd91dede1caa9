"""Damaged and mismatched checkpoints (issue 11 items 5 and 6): fall back to the newest intact
checkpoint naming the broken one; a checkpoint of another model size names the parameter,
both shapes and the config options that differ."""

import logging

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import small_train_config

from rankseg_jax import checkpointing, sharding
from rankseg_jax.config import serialization
from rankseg_jax.train import step as ts


def _abstract(shape=(4, 3)):
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=dev),
            "params": {"w": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=dev)}}


def _iterator():
    return iter(grain.MapDataset.range(100).to_iter_dataset())


def _two_checkpoints(directory):
    """Checkpoints 1 and 2 of a tiny state (params w = step) and a data iterator at `step`."""
    c = small_train_config()
    ck = checkpointing.Checkpointer(directory, c)
    it = _iterator()
    for s in (1, 2):
        next(it)
        ck.save(s, {"step": jnp.int32(s), "params": {"w": jnp.full((4, 3), float(s))}}, it,
                force=True)
    ck.close()
    return c


def _truncate_arrays(step_dir):
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for p in files:
        p.write_bytes(p.read_bytes()[:10])


def _empty_data_json(step_dir):
    (f,) = (step_dir / "data").glob("*.json")
    f.write_text("")


@pytest.mark.parametrize("damage", [_truncate_arrays, _empty_data_json])
def test_broken_latest_checkpoint_falls_back_and_is_set_aside(tmp_path, caplog, damage):
    d = tmp_path / "checkpoints"
    c = _two_checkpoints(d)
    damage(d / "2")
    ck = checkpointing.Checkpointer(d, c)
    it = _iterator()
    with caplog.at_level(logging.WARNING):
        state, step = ck.restore_newest_intact(_abstract(), it)
    assert step == 1 and int(state["step"]) == 1
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), 1.0)
    assert next(it) == 1  # the data position of step 1 (one element consumed)
    assert f"checkpoint {d / '2'} is unreadable" in caplog.text
    # Set aside (kept, not deleted) so that training can save step 2 again.
    assert ck.all_steps() == [1]
    (aside,) = [p for p in d.iterdir() if p.name.startswith("2.broken-")]
    assert (aside / "state").is_dir()
    assert ck.save(2, {"step": jnp.int32(2), "params": {"w": jnp.zeros((4, 3))}}, it, force=True)
    ck.close()
    assert checkpointing.Checkpointer(d, c).all_steps() == [1, 2]


def test_no_intact_checkpoint_names_every_broken_one(tmp_path):
    d = tmp_path / "checkpoints"
    c = _two_checkpoints(d)
    for s in ("1", "2"):
        _truncate_arrays(d / s)
    ck = checkpointing.Checkpointer(d, c)
    with pytest.raises(checkpointing.CheckpointError,
                       match=rf"no intact checkpoint in {d}: {d / '2'} \(.*\); {d / '1'} \("):
        ck.restore_newest_intact(_abstract(), _iterator(), set_aside=False)
    ck.close()
    # Inference readers (resolve_params) name the checkpoint too, also a params-only one.
    with pytest.raises(checkpointing.CheckpointError, match=str(d / "2")):
        checkpointing.restore_training_params(d, _abstract()["params"])
    checkpointing.save_params(tmp_path / "p", {"w": np.ones((4, 3), np.float32)})
    for f in (tmp_path / "p" / "params").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:10])
    with pytest.raises(checkpointing.CheckpointError,
                       match=f"params-only checkpoint {tmp_path / 'p'} is unreadable"):
        checkpointing.load_params(tmp_path / "p", _abstract()["params"])


def _setup(config):
    return ts.make_setup(config, sharding.make_mesh(config, jax.devices()[:1]))


def test_other_model_size_names_parameter_shapes_and_options(tmp_path):
    big = small_train_config(**{"model.vit.embed_dim": 32, "model.head.d_model": 32})
    small = small_train_config(**{"model.vit.embed_dim": 16, "model.head.d_model": 16,
                                  "model.head.d_ff": 64})
    run = tmp_path / "run"
    serialization.save(big, run)
    setup_big = _setup(big)
    ck = checkpointing.Checkpointer(checkpointing.checkpoint_dir(run), big)
    ck.save(1, ts.init_state(setup_big), force=True)
    ck.close()

    setup_small = _setup(small)
    ck = checkpointing.Checkpointer(checkpointing.checkpoint_dir(run), small)
    with pytest.raises(checkpointing.IncompatibleCheckpoint) as err:
        ck.restore_newest_intact(setup_small.abstract_state)
    ck.close()
    msg = str(err.value)
    assert f"{run / 'checkpoints' / '1'} does not fit this model" in msg
    assert "backbone/layers/0/attn/query/kernel: checkpoint (32, 32), model (16, 16)" in msg
    assert "model.vit.embed_dim: run=32, given=16" in msg
    assert "model.head.d_ff: run=128, given=64" in msg
    assert not any(p.name.startswith("1.broken") for p in (run / "checkpoints").iterdir())
    # The same for the inference path (predict/eval/load_model read a run directory).
    with pytest.raises(checkpointing.IncompatibleCheckpoint, match="model.vit.embed_dim: run=32"):
        checkpointing.resolve_params(run, small, setup_small.abstract_state["params"],
                                     fresh_params=lambda: None)


def test_late_reads_of_a_failed_restore_print_no_traceback(monkeypatch):
    # The real mechanism: a coroutine awaits a tensorstore future, the run fails and the loop
    # is closed (as orbax's run_sync does), then the read completes.
    import asyncio
    import sys

    import tensorstore

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    checkpointing.quiet_late_read_completions()
    checkpointing.quiet_late_read_completions()  # installed once
    promise, future = tensorstore.Promise.new()

    async def restore():
        async def read():
            await future
        pending = asyncio.ensure_future(read())  # noqa: F841 (left pending, as orbax does)
        await asyncio.sleep(0.01)
        raise ValueError("one read failed")

    loop = asyncio.new_event_loop()
    with pytest.raises(ValueError):
        loop.run_until_complete(restore())
    loop.close()
    promise.set_result(1)  # wakes the closed loop: RuntimeError('Event loop is closed')
    assert seen == []
    # Any other unraisable error still reaches the previous hook.
    sys.unraisablehook(type("U", (), {"exc_value": RuntimeError("something else")})())
    assert [str(e) for e in seen] == ["something else"]
