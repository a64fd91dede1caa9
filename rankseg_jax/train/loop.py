"""The training loop: `train_and_evaluate(config, workdir)`.

Order of work: validate the config (before any compilation) -> mesh -> shapes-first sharded
state -> initial weights (workdir checkpoint > init.resume > init.pretrained > random) ->
jitted step over per-process grain batches -> logging, periodic evaluation, checkpoints.
Only process 0 writes logs; every process takes part in saves (each writes its shards and its
own data-iterator position).
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from rankseg_jax import checkpointing, pretrained, sharding
from rankseg_jax import config as config_lib
from rankseg_jax.config import serialization
from rankseg_jax.data import pipeline as input_pipeline
from rankseg_jax.train import optim
from rankseg_jax.train import step as ts
from rankseg_jax.train.metric_logger import MetricLogger

log = logging.getLogger(__name__)


class TrainingDiverged(FloatingPointError):
    """Loss or gradients became NaN/Inf; the last good checkpoint is kept."""


# The meta-architectures this loop can train (their losses: train/tasks.py).
TRAINABLE_ARCHS = ("segmenter", "mask2former")


def check_trainable(config: mlc.ConfigDict) -> None:
    """Raises NotImplementedError, before anything is built, for an arch with no training."""
    if config.model.arch not in TRAINABLE_ARCHS:
        raise NotImplementedError(
            f"training model.arch={config.model.arch!r} is not implemented yet (its Hungarian "
            "matcher and set criterion are the next step); its models run inference with "
            "official weights (`python -m rankseg_jax.convert`, `rankseg_jax.load_model`)")


# --------------------------------------------------------------------------- initial weights


def pretrained_params(setup: ts.TrainSetup, source: str):
    """Params from `source` (anything `checkpointing.resolve_params` reads) on the train
    shardings; parameters the source lacks (e.g. the head of a backbone-only format) keep the
    official-style random init."""
    params, what = checkpointing.resolve_params(
        source, setup.config, setup.abstract_state["params"],
        fresh_params=lambda: jax.device_get(ts.init_state(setup)["params"]))
    log.info("weights from %s: %s", source, what)
    return params


def initial_state(setup: ts.TrainSetup, ckpt: checkpointing.Checkpointer, data_iterator):
    """(state, description). Order: workdir checkpoint > init.resume > init.pretrained > random.

    A training-checkpoint `init.resume` restores the full state and the data position (a
    resume into a new workdir); a params-only one starts a fresh optimizer at step 0.
    """
    config = setup.config
    if ckpt.latest_step() is not None:
        step = ckpt.latest_step()
        return ckpt.restore(setup.abstract_state, data_iterator), f"workdir checkpoint {step}"
    resume = config.init.resume
    if resume:
        if checkpointing.is_params_dir(resume):
            params = checkpointing.load_params(resume, setup.abstract_state["params"])
            return ts.state_from_params(setup, params), f"params-only {resume}"
        if checkpointing.is_training_checkpoint(resume):
            other = checkpointing.Checkpointer(checkpointing.training_checkpoint_root(resume),
                                               config)
            state = other.restore(setup.abstract_state, data_iterator)
            other.close()
            return state, f"training checkpoint {resume}"
        raise config_lib.ConfigError(
            f"init.resume={resume!r} is neither a params-only directory (with params/) nor a "
            "training checkpoint directory (with numbered step folders)")
    if config.init.pretrained:
        params = pretrained_params(setup, config.init.pretrained)
        return ts.state_from_params(setup, params), f"pretrained {config.init.pretrained}"
    return ts.init_state(setup), "random init"


def _warn_if_random_init(config, source: str, logger: MetricLogger) -> None:
    """Says what the paper started from when a paper config trains from random init."""
    warning = pretrained.random_init_warning(config) if source == "random init" else None
    if warning:
        logger.info(f"warning: {warning}")


# --------------------------------------------------------------------------- evaluation


def _evaluate(config, setup, params, workdir, step):
    try:
        from rankseg_jax.evaluation import evaluate as evaluate_lib
    except ImportError:
        log.warning("rankseg_jax.evaluate is not available; skipping evaluation at step %d",
                    step)
        return None
    model = ts.model_from_params(setup, params)
    return evaluate_lib.evaluate(config, model, workdir, step=step)


class _StopFlag:
    """Set by SIGTERM/SIGINT-free preemption notice; checked between steps."""

    def __init__(self):
        self.set = False
        self._old = None

    def install(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.set = True

    def uninstall(self):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


# --------------------------------------------------------------------------- loop


def train_and_evaluate(config: mlc.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Trains `config` in `workdir` (resuming if it holds a checkpoint).

    Returns {'step': last step, 'train': last logged train metrics, 'eval': last eval
    metrics or None, 'preempted': bool, 'init': where the weights came from}.
    Raises TrainingDiverged on NaN/Inf loss or gradients (after in-flight saves finish),
    NotImplementedError for an arch without training (`check_trainable`).
    """
    check_trainable(config)
    config_lib.validate(config)
    workdir = pathlib.Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        serialization.save(config, workdir)  # the run records which model it trains
    t = config.train
    mesh = sharding.make_mesh(config)
    setup = ts.make_setup(config, mesh)
    train_step = ts.make_train_step(setup)
    data_it = input_pipeline.make_train_iterator(config)
    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir), config)
    state, source = initial_state(setup, ckpt, data_it)
    start = int(jax.device_get(state["step"]))
    logger = MetricLogger(workdir, total_steps=t.steps, initial_step=start,
                          enabled=jax.process_index() == 0)
    logger.info(f"mesh {dict(mesh.shape)}; weights from {source}; starting at step {start}")
    _warn_if_random_init(config, source, logger)
    replicated = sharding.replicated_bytes_fraction(setup.abstract_state["params"],
                                                    setup.state_shardings["params"])
    if mesh.shape["fsdp"] * mesh.shape["tensor"] > 1 and replicated > 0.5:
        # Sharding was asked for but most bytes are replicated: usually a threshold
        # (mesh.fsdp_min_size) or divisibility problem, and memory will not scale.
        logger.info(f"warning: {replicated:.0%} of parameter bytes are replicated on a "
                    f"{dict(mesh.shape)} mesh; check mesh.fsdp_min_size and the rules in "
                    "rankseg_jax/sharding.py")
    # A raw uint32 key assembled as a global array (device_put cannot target other
    # processes' devices).
    base_key = jax.make_array_from_process_local_data(
        sharding.replicated(mesh), np.asarray(jax.random.PRNGKey(config.seed)))
    batch_sh = sharding.batch_sharding(mesh)
    stop = _StopFlag()
    stop.install()
    result = {"step": start, "train": None, "eval": None, "preempted": False, "init": source}
    last_saved = ckpt.latest_step()
    try:
        tick, tick_step = time.perf_counter(), start
        interval = None  # metrics summed on device since the last log line
        for step in range(start, t.steps):
            batch = input_pipeline.to_global(next(data_it), batch_sh)
            state, metrics = train_step(state, batch, base_key)
            interval = metrics if interval is None else jax.tree.map(jnp.add, interval,
                                                                     metrics)
            done = step + 1
            last = done == t.steps
            if t.check_finite_every and (done % t.check_finite_every == 0 or last):
                if not float(jax.device_get(metrics["finite"])):
                    raise TrainingDiverged(
                        f"non-finite loss or gradients at step {done} "
                        f"({ts.finalize_metrics(jax.device_get(metrics))}); training stopped. "
                        f"The last good checkpoint is step {last_saved} in "
                        f"{ckpt.directory}. Lower optim.lr, enable optim.clip_grad_norm, or "
                        "check the data.")
            if done % t.log_every == 0 or last:
                # Means over the interval, not the last step's noisy values.
                values = ts.finalize_metrics(jax.device_get(interval), done - tick_step)
                interval = None
                now = time.perf_counter()
                dt = (now - tick) / max(done - tick_step, 1)
                values.update(lr=optim.lr_at(config, step), step_time=dt,
                              images_per_s=t.batch_size / dt)
                logger.log_train(done, values, eta_s=dt * (t.steps - done))
                result["train"], tick, tick_step = values, now, done
            eval_metrics = None
            if t.eval_every and (done % t.eval_every == 0 or last):
                eval_metrics = _evaluate(config, setup, state["params"], workdir, done)
                if eval_metrics is not None:
                    logger.log_eval(done, eval_metrics)
                    result["eval"] = eval_metrics
            preempted = stop.set or ckpt.reached_preemption(done)
            keep_best = t.keep_best and eval_metrics is not None and "mIoU" in eval_metrics
            if ckpt.save(done, state, data_it,
                         metrics={"mIoU": float(eval_metrics["mIoU"])} if keep_best else None,
                         force=last or preempted or keep_best):
                last_saved = done
            logger.advance(done)
            result["step"] = done
            if preempted:
                logger.info(f"preemption signal: saved step {done}, exiting cleanly")
                result["preempted"] = True
                break
    finally:
        ckpt.wait_until_finished()
        ckpt.close()
        stop.uninstall()
        logger.close()
        if hasattr(data_it, "close"):
            data_it.close()
    return result
