"""The trainer under faults (issue 11): evaluation that cannot run or fails, non-finite
updates, skipped bad examples, Ctrl-C, a locked workdir."""

import dataclasses
import json
import os
import pathlib
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from data_layouts import write_dataset
from helpers import small_train_config

from rankseg_jax import config as config_lib
from rankseg_jax import sharding
from rankseg_jax.data import pipeline as input_pipeline
from rankseg_jax.data.sources import BadExampleError
from rankseg_jax.train import loop as train
from rankseg_jax.train import step as ts


def _steps(workdir):
    """Saved checkpoint steps in `workdir` (a str or Path: the loop passes a str)."""
    ckpts = pathlib.Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


def _rows(workdir):
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- item 1


def _folder_config(tmp_path):
    root = write_dataset(tmp_path / "ade", "ade20k", n_per_split=2, hw=(64, 64))
    return root, small_train_config(**{
        "data.name": "ade20k", "data.format": "folder", "data.root": str(root),
        "data.reduce_zero_label": True, "model.num_classes": 150, "train.eval_every": 2})


@pytest.mark.parametrize("damage", ["missing_val_folder", "truncated_val_image"])
def test_evaluation_is_checked_before_training(tmp_path, damage):
    root, c = _folder_config(tmp_path)
    if damage == "missing_val_folder":
        for p in sorted((root / "images" / "validation").iterdir()):
            p.unlink()
        (root / "images" / "validation").rmdir()
        match = r"evaluation cannot open the 'val' split .*images/validation"
    else:
        jpg = root / "images" / "validation" / "val_000.jpg"
        jpg.write_bytes(jpg.read_bytes()[:-300])
        match = r"evaluation cannot decode the 'val' split.*val_000.jpg"
    with pytest.raises(config_lib.ConfigError, match=match):
        train.train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before any training


def test_failed_evaluation_costs_no_training(tmp_path, monkeypatch):
    c = small_train_config(**{"train.steps": 2, "train.eval_every": 1,
                              "train.ckpt_every": 100})
    seen = []

    def failing(config, setup, params, workdir, step):
        seen.append((step, _steps(workdir)))  # saved before evaluating
        if step == 1:
            raise RuntimeError("evaluation exploded")
        return {"mIoU": 0.5, "mAcc": 0.5, "aAcc": 0.5}

    monkeypatch.setattr(train, "_evaluate", failing)
    out = train.train_and_evaluate(c, tmp_path)
    assert seen == [(1, [1]), (2, [1, 2])]
    assert out["step"] == 2 and out["eval"]["mIoU"] == 0.5  # trained on after the failure
    assert _steps(tmp_path) == [1, 2]


# --------------------------------------------------------------------------- item 3


def test_step_rejects_a_non_finite_update(monkeypatch):
    # Finite loss and gradients, but the update makes the parameters NaN (as a NaN learning
    # rate or multiplier would): the state must stay as it was.
    c = small_train_config(**{"train.batch_size": 2})
    mesh = sharding.make_mesh(c, jax.devices()[:1])
    setup = ts.make_setup(c, mesh)
    monkeypatch.setattr(ts.optax, "apply_updates",
                        lambda p, u: jax.tree.map(lambda a, b: a + b * jnp.nan, p, u))
    step = ts.make_train_step(setup)
    state = ts.init_state(setup)
    before = jax.device_get(state)
    batch = input_pipeline.to_global(next(input_pipeline.make_train_iterator(c)),
                                     sharding.batch_sharding(mesh))
    state, metrics = step(state, batch, jax.random.PRNGKey(0))
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert float(metrics["finite"]) == 0.0
    assert int(state["step"]) == 0
    for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(before),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_step_rejects_a_non_finite_optimizer_moment():
    # Finite loss, gradients and parameters, but an overflowing moment (the parameters only
    # go bad on the next step): this step must already be refused.
    c = small_train_config(**{"train.batch_size": 2})
    mesh = sharding.make_mesh(c, jax.devices()[:1])
    setup = ts.make_setup(c, mesh)
    real_update = setup.tx.update

    def inf_moment(grads, opt_state, params=None):
        updates, new_state = real_update(grads, opt_state, params)
        leaves, treedef = jax.tree.flatten(new_state)
        first = next(i for i, x in enumerate(leaves) if jnp.issubdtype(x.dtype, jnp.floating))
        leaves[first] = leaves[first].at[(0,) * leaves[first].ndim].set(jnp.inf)
        return updates, jax.tree.unflatten(treedef, leaves)

    setup = dataclasses.replace(setup, tx=optax.GradientTransformation(setup.tx.init, inf_moment))
    step = ts.make_train_step(setup)
    state = ts.init_state(setup)
    batch = input_pipeline.to_global(next(input_pipeline.make_train_iterator(c)),
                                     sharding.batch_sharding(mesh))
    state, metrics = step(state, batch, jax.random.PRNGKey(0))
    assert np.isfinite(float(metrics["param_norm"]))
    assert float(metrics["finite"]) == 0.0 and int(state["step"]) == 0


def _poison_step(monkeypatch, bad_step):
    real, calls = input_pipeline.to_global, []

    def poisoned(batch, sharding_):
        calls.append(1)
        if len(calls) == bad_step:
            batch = dict(batch, image=np.full_like(batch["image"], np.nan))
        return real(batch, sharding_)

    monkeypatch.setattr(input_pipeline, "to_global", poisoned)


def test_reverted_step_is_never_saved_under_a_later_number(tmp_path, monkeypatch):
    # Checked only every 3 steps, but step 2's NaN must not be saved as "checkpoint 2"
    # (holding step 1 and the data position of step 2).
    c = small_train_config(**{"train.steps": 4, "train.ckpt_every": 1,
                              "train.check_finite_every": 3})
    _poison_step(monkeypatch, 2)
    with pytest.raises(train.TrainingDiverged,
                       match=r"at step 2 .*The last good checkpoint is step 1 in "):
        train.train_and_evaluate(c, tmp_path)
    assert _steps(tmp_path) == [1]
    assert not (tmp_path / "train.lock").exists()  # released on the error path


# --------------------------------------------------------------------------- item 8


class _EveryThirdBad:
    """A source whose examples 0, 3, 6, ... raise BadExampleError; counts the raises."""

    def __init__(self, source):
        self.source, self.raised = source, 0

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        if i % 3 == 0:
            self.raised += 1
            raise BadExampleError(f"example {i}: corrupt (test)")
        return self.source[i]


def test_skipped_examples_are_counted_in_metrics_and_summary(tmp_path, monkeypatch):
    c = small_train_config(**{"train.steps": 2, "train.log_every": 1,
                              "data.bad_example_policy": "skip", "data.read_threads": 0,
                              "data.prefetch": 0})
    real, made = input_pipeline.make_source, []

    def bad_source(config, split):
        made.append(_EveryThirdBad(real(config, split)))
        return made[-1]

    monkeypatch.setattr(input_pipeline, "make_source", bad_source)
    out = train.train_and_evaluate(c, tmp_path)
    raised = sum(s.raised for s in made)
    assert raised > 0
    rows = [r for r in _rows(tmp_path) if r["split"] == "train"]
    assert rows[-1]["skipped_examples"] == out["skipped_examples"] == raised
    assert rows[0]["skipped_examples"] <= rows[-1]["skipped_examples"]


# --------------------------------------------------------------------------- item 12


def test_sigint_sets_the_stop_flag_and_a_second_one_interrupts():
    flag = train._StopFlag()
    flag.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert flag.set and flag.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        flag.uninstall()
    assert train.exit_status({"stopped_by": "SIGINT"}) == 130
    assert train.exit_status({"stopped_by": "SIGTERM"}) == 0
    assert train.exit_status({"stopped_by": None}) == 0


def test_ctrl_c_saves_at_the_next_step(tmp_path, monkeypatch):
    c = small_train_config(**{"train.steps": 4, "train.ckpt_every": 100})
    real, calls = input_pipeline.to_global, []

    def interrupted(batch, sharding_):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while step 1 runs
        return real(batch, sharding_)

    monkeypatch.setattr(input_pipeline, "to_global", interrupted)
    # What was installed before: Python's default, or SIG_IGN when pytest itself runs as a
    # background job of a non-interactive shell (`nohup pytest ... &`).
    before = signal.getsignal(signal.SIGINT)
    out = train.train_and_evaluate(c, tmp_path)
    assert out["stopped_by"] == "SIGINT" and out["step"] == 1 and out["preempted"]
    assert _steps(tmp_path) == [1]  # saved although train.ckpt_every=100
    assert train.exit_status(out) == 130
    assert signal.getsignal(signal.SIGINT) is before  # restored


# --------------------------------------------------------------------------- item 4


def test_locked_workdir_is_refused_before_anything_is_written(tmp_path):
    from rankseg_jax.train.workdir_lock import WorkdirLock, WorkdirLocked

    c = small_train_config()
    with WorkdirLock(tmp_path):
        with pytest.raises(WorkdirLocked, match=f"in use by another trainer: pid {os.getpid()}"):
            train.train_and_evaluate(c, tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["train.lock"]  # nothing else
