"""The training loop: `train_and_evaluate(config, workdir)`.

Order of work: validate the config (before any compilation) -> lock the workdir -> check
that evaluation can run -> mesh -> shapes-first sharded state -> initial weights (workdir
checkpoint > init.resume > init.pretrained > random) -> jitted step over per-process grain
batches -> logging, checkpoints, periodic evaluation.
Only process 0 writes logs; every process takes part in saves (each writes its shards and its
own data-iterator position).

What a fault costs (docs/reliability.md):
  * a checkpoint is written only from a state known finite, under the number of steps it
    holds (`_verify_applied` before every save); a non-finite step stops the run with
    TrainingDiverged naming the last good checkpoint;
  * an evaluation step saves first, then evaluates; an evaluation error is logged with its
    cause and training continues;
  * SIGTERM and SIGINT (Ctrl-C) save at the next step boundary and return with
    result['stopped_by'] set; `exit_status(result)` is the process exit code (0 after
    SIGTERM, a preemption notice; 130 after Ctrl-C). A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from rankseg_jax import checkpointing, paths, pretrained, run_info, sharding
from rankseg_jax import config as config_lib
from rankseg_jax.config import serialization
from rankseg_jax.data import pipeline as input_pipeline
from rankseg_jax.train import optim
from rankseg_jax.train import step as ts
from rankseg_jax.train.metric_logger import LOG_FILE, TENSORBOARD, MetricLogger, RunFiles
from rankseg_jax.train.workdir_lock import WorkdirLock

log = logging.getLogger(__name__)
PROFILE_DIR = "profile"


class TrainingDiverged(FloatingPointError):
    """Loss, gradients or the updated state became NaN/Inf; the last good checkpoint is
    kept (the message names it)."""


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
        state, step = ckpt.restore_newest_intact(setup.abstract_state, data_iterator)
        return state, f"workdir checkpoint {step}"
    resume = config.init.resume
    if resume:
        if checkpointing.is_params_dir(resume):
            params = checkpointing.load_params(resume, setup.abstract_state["params"], config)
            return ts.state_from_params(setup, params), f"params-only {resume}"
        if checkpointing.is_training_checkpoint(resume):
            other = checkpointing.Checkpointer(checkpointing.training_checkpoint_root(resume),
                                               config, read_only=True)
            try:  # another run's folder: broken steps are skipped, never renamed
                state, step = other.restore_newest_intact(setup.abstract_state, data_iterator,
                                                          set_aside=False)
            finally:
                other.close()
            return state, f"training checkpoint {resume} step {step}"
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


def _evaluate_or_report(config, setup, params, workdir, step, logger) -> dict | None:
    """Evaluation metrics, or None after logging why evaluation failed.

    The step's checkpoint is already saved, and the run goes on: an evaluation error (a file
    that went bad since start-up, memory) must not cost training. With several processes the
    error has to happen on all of them (evaluation is collective), as it does for data and
    configuration errors.
    """
    try:
        return _evaluate(config, setup, params, workdir, step)
    except Exception as e:
        log.exception("evaluation at step %d failed", step)
        logger.info(f"warning: evaluation at step {step} failed ({type(e).__name__}: {e}); "
                    "its checkpoint is saved and training continues")
        return None


# --------------------------------------------------------------------------- signals


class _StopFlag:
    """SIGTERM (preemption notice) and SIGINT (Ctrl-C) ask for a clean stop: the loop saves at
    the next step boundary and returns. A second SIGINT raises KeyboardInterrupt at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.set = False
        self.name: str | None = None
        self._old: dict = {}

    def install(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        del frame
        if self.set and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now (the last checkpoint stays)
        self.set = True
        self.name = signal.Signals(signum).name

    def uninstall(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def exit_status(result: dict) -> int:
    """The process exit code for a `train_and_evaluate` result: 130 (128 + SIGINT, the shell
    convention) after Ctrl-C, else 0 (finished, or stopped cleanly by SIGTERM/preemption with
    a checkpoint to resume from)."""
    return 128 + signal.SIGINT if result.get("stopped_by") == "SIGINT" else 0


# --------------------------------------------------------------------------- finiteness


def _verify_applied(state, done: int, last_checked: int, last_saved: int | None,
                    ckpt: checkpointing.Checkpointer, metrics) -> None:
    """Raises TrainingDiverged unless every step up to `done` was applied.

    The step leaves the state (and its step counter) unchanged when the loss, the gradients
    or the updated state are not finite, so `state['step'] == done` proves that the state
    is finite and that a checkpoint numbered `done` holds step `done` (with the data
    position of step `done`).
    """
    applied = int(jax.device_get(state["step"]))
    if applied == done:
        return
    where = (f"at step {done}" if done - last_checked == 1
             else f"between steps {last_checked + 1} and {done}")
    kept = (f"The last good checkpoint is step {last_saved} in {ckpt.directory}"
            if last_saved is not None else "No checkpoint of this run was written")
    raise TrainingDiverged(
        f"non-finite loss, gradients or parameters {where} "
        f"({ts.finalize_metrics(jax.device_get(metrics))}); training stopped. {kept}. "
        "Lower optim.lr, enable optim.clip_grad_norm, or check the data.")


# --------------------------------------------------------------------------- loop


def train_and_evaluate(config: mlc.ConfigDict, workdir: str | os.PathLike, *,
                       info: dict | None = None) -> dict:
    """Trains `config` in `workdir` (resuming from its newest intact checkpoint).

    workdir: a local folder or a cloud URI (`gs://bucket/run`; `rankseg_jax.paths`).
    info: the run info (`run_info.collect`: config file + variant, overrides) written to
    `<workdir>/run_info.json` and every checkpoint's metadata; default: collected here
    (without the config file name).

    Returns {'step': last step, 'train': last logged train metrics, 'eval': last eval
    metrics or None, 'preempted': bool, 'stopped_by': 'SIGTERM' | 'SIGINT' | 'preemption' |
    None, 'init': where the weights came from, 'skipped_examples': bad examples skipped
    under data.bad_example_policy='skip'}.
    Raises TrainingDiverged on a non-finite step (after in-flight saves finish),
    WorkdirLocked if another trainer uses `workdir`, ConfigError if evaluation cannot run,
    checkpointing.CheckpointError / IncompatibleCheckpoint if no checkpoint can be resumed.
    """
    config_lib.validate(config)
    workdir = paths.check_usable(workdir, "workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    info = info if info is not None else run_info.collect(config)
    main = jax.process_index() == 0
    with contextlib.ExitStack() as stack:  # unwound in reverse: the lock goes last
        if main:
            _lock(workdir, stack)
        files = RunFiles(workdir, enabled=main)
        stack.callback(files.close)
        if main:
            log.info("run %s: %s", workdir, run_info.describe(info))
        stop = _StopFlag()
        stop.install()
        stack.callback(stop.uninstall)
        if config.train.eval_every:
            from rankseg_jax.evaluation import evaluate as evaluate_lib
            evaluate_lib.check_ready(config)
        mesh = sharding.make_mesh(config)
        setup = ts.make_setup(config, mesh)
        counter = input_pipeline.BadExampleCounter()
        data_it = input_pipeline.make_train_iterator(config, counter=counter)
        if hasattr(data_it, "close"):
            stack.callback(data_it.close)
        ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir), config,
                                          info=info)
        stack.callback(ckpt.close)  # waits for in-flight saves on every exit path
        state, source = initial_state(setup, ckpt, data_it)
        if main:
            # After the restore: a run refused for an incompatible checkpoint leaves the
            # run's own config.json (which the refusal message compares against) in place.
            serialization.save(config, workdir)
            run_info.save(info, workdir)
        start = int(jax.device_get(state["step"]))
        logger = MetricLogger(workdir, total_steps=config.train.steps, initial_step=start,
                              enabled=main, files=files)
        stack.callback(logger.close)
        logger.info(f"mesh {dict(mesh.shape)}; weights from {source}; starting at step {start}")
        _warn_if_random_init(config, source, logger)
        _warn_replicated(setup, mesh, logger)
        # Evaluation reports and profiles go to the local folder of RunFiles (the workdir, or
        # the staging copy of a cloud workdir, uploaded by its sync).
        result = _train(config, setup, state, start, data_it, counter, ckpt, logger, stop,
                        files.local)
        result["init"] = source
        ckpt.wait_until_finished()
        logger.info(_summary(config, result, ckpt, workdir))
        return result


def _lock(workdir, stack: contextlib.ExitStack) -> None:
    """Takes the workdir lock (local file systems). Object stores have no atomic
    create-if-absent through fsspec, so a cloud workdir runs unlocked, with a warning said
    before any work."""
    if paths.is_local(workdir):
        stack.enter_context(WorkdirLock(os.fspath(workdir)))
    else:
        log.warning("%s is on a cloud file system: the one-trainer-per-workdir lock "
                    "(train.lock) is not available there; make sure no other trainer uses "
                    "this workdir", workdir)


def _warn_replicated(setup, mesh, logger) -> None:
    replicated = sharding.replicated_bytes_fraction(setup.abstract_state["params"],
                                                    setup.state_shardings["params"])
    if mesh.shape["fsdp"] * mesh.shape["tensor"] > 1 and replicated > 0.5:
        # Sharding was asked for but most bytes are replicated: usually a threshold
        # (mesh.fsdp_min_size) or divisibility problem, and memory will not scale.
        logger.info(f"warning: {replicated:.0%} of parameter bytes are replicated on a "
                    f"{dict(mesh.shape)} mesh; check mesh.fsdp_min_size and the rules in "
                    "rankseg_jax/sharding.py")


def _summary(config, result: dict, ckpt: checkpointing.Checkpointer, workdir) -> str:
    """The end-of-run summary: where it stopped, the best val mIoU and its step, the latest
    checkpoint, skipped examples, the files written and the TensorBoard command."""
    how = (f"stopped by {result['stopped_by']}" if result["stopped_by"]
           else "finished")
    text = (f"{how} at step {result['step']}; latest checkpoint: step "
            f"{ckpt.latest_step()} in {ckpt.directory}")
    if config.data.bad_example_policy == "skip":
        text += (f"; {result['skipped_examples']} bad training examples skipped "
                 "(data.bad_example_policy='skip')")
    best = ckpt.best_step()
    lines = [text]
    if best is not None:
        lines.append(f"  best val mIoU: {100 * ckpt.scores[best]:.2f}% at step {best} "
                     "(--checkpoint=best)")
    elif result["eval"] is not None and "mIoU" in result["eval"]:
        lines.append(f"  last val mIoU: {100 * float(result['eval']['mIoU']):.2f}% at step "
                     f"{result['step']}")
    lines += [f"  checkpoints: {ckpt.directory}",
              f"  config:      {workdir / serialization.CONFIG_FILE} "
              f"(+ {run_info.RUN_INFO_FILE})",
              f"  logs:        {workdir / LOG_FILE}, {workdir / 'metrics.jsonl'}, "
              f"{workdir / TENSORBOARD}/"]
    if config.train.eval_every:
        lines.append(f"  evaluation:  {workdir}/eval_val_step<N>.json/.csv")
    if config.train.profile_steps:
        lines.append(f"  profile:     {workdir / PROFILE_DIR}/")
    lines.append(f"  TensorBoard: tensorboard --logdir {workdir}  "
                 "(pip install 'rankseg_jax[tensorboard]')")
    return "\n".join(lines)


class _Profiler:
    """A jax.profiler trace of steps [start, stop) (train.profile_steps) in `<out>/profile`."""

    def __init__(self, steps: tuple, out_dir: str | None):
        self.window = tuple(steps) if steps and out_dir else None
        self.dir = os.path.join(out_dir, PROFILE_DIR) if out_dir else None
        self.active = False

    def before(self, step: int) -> None:
        """Called before running step `step` (0-based)."""
        if self.window and step == self.window[0]:
            jax.profiler.start_trace(self.dir)
            self.active = True

    def after(self, done: int, state) -> None:
        """Called after `done` steps; stops the trace at the end of the window."""
        if self.active and done >= self.window[1]:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active = False
            log.info("profile of steps %d-%d written to %s (tensorboard --logdir %s, "
                     "Profile tab)", self.window[0], self.window[1] - 1, self.dir, self.dir)

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


def _train(config, setup, state, start, data_it, counter, ckpt, logger, stop, out_dir):
    """The step loop from `start` to train.steps (or a stop request); returns the result.

    out_dir: local folder for evaluation reports and the profile (None on processes > 0).
    """
    profiler = _Profiler(config.train.profile_steps, out_dir)
    try:
        return _steps(config, setup, state, start, data_it, counter, ckpt, logger, stop,
                      out_dir, profiler)
    finally:
        profiler.close()


def _steps(config, setup, state, start, data_it, counter, ckpt, logger, stop, out_dir,
           profiler):
    t = config.train
    train_step = ts.make_train_step(setup)
    # A raw uint32 key assembled as a global array (device_put cannot target other
    # processes' devices).
    base_key = jax.make_array_from_process_local_data(
        sharding.replicated(setup.mesh), np.asarray(jax.random.PRNGKey(config.seed)))
    batch_sh = sharding.batch_sharding(setup.mesh)
    skip_policy = config.data.bad_example_policy == "skip"
    result = {"step": start, "train": None, "eval": None, "preempted": False,
              "stopped_by": None, "skipped_examples": 0}
    last_saved, last_checked = ckpt.latest_step(), start
    tick, tick_step = time.perf_counter(), start
    # Step time for the ETA: measured from the end of the first (compiling) step of this
    # process, so compilation does not inflate it.
    timed = None  # (time, step) at the end of the first step
    interval = None  # metrics summed on device since the last log line
    for step in range(start, t.steps):
        profiler.before(step)
        batch = input_pipeline.to_global(next(data_it), batch_sh)
        state, metrics = train_step(state, batch, base_key)
        if timed is None:
            jax.block_until_ready(metrics)
            timed = (time.perf_counter(), step + 1)
            logger.info(f"first step (compilation included) took {timed[0] - tick:.1f} s")
        interval = metrics if interval is None else jax.tree.map(jnp.add, interval, metrics)
        done = step + 1
        last = done == t.steps
        if t.check_finite_every and (done % t.check_finite_every == 0 or last):
            _verify_applied(state, done, last_checked, last_saved, ckpt, metrics)
            last_checked = done
        result["skipped_examples"] = counter.count
        if done % t.log_every == 0 or last:
            # Means over the interval, not the last step's noisy values.
            values = ts.finalize_metrics(jax.device_get(interval), done - tick_step)
            interval = None
            now = time.perf_counter()
            dt = (now - tick) / max(done - tick_step, 1)
            values.update(lr=optim.lr_at(config, step), step_time=dt,
                          images_per_s=t.batch_size / dt)
            if skip_policy:  # since this process started (not part of the checkpoint)
                values["skipped_examples"] = counter.count
            compiled = done - timed[1]  # steps timed after compilation
            eta = (now - timed[0]) / compiled * (t.steps - done) if compiled > 0 else None
            logger.log_train(done, values, eta_s=eta)
            result["train"], tick, tick_step = values, now, done
        evaluating = bool(t.eval_every) and (done % t.eval_every == 0 or last)
        preempted = stop.set or ckpt.reached_preemption(done)
        # Save before evaluating, so an evaluation that fails or is killed costs nothing.
        if last or preempted or evaluating or ckpt.should_save(done):
            _verify_applied(state, done, last_checked, last_saved, ckpt, metrics)
            last_checked = done
            ckpt.save(done, state, data_it, force=True)
            last_saved = done
        if evaluating:
            eval_metrics = _evaluate_or_report(config, setup, state["params"], out_dir, done,
                                               logger)
            if eval_metrics is not None:
                logger.log_eval(done, eval_metrics)
                result["eval"] = eval_metrics
                if t.keep_best and "mIoU" in eval_metrics:
                    ckpt.record_score(done, float(eval_metrics["mIoU"]))
            preempted = preempted or stop.set  # asked during evaluation: already saved
        profiler.after(done, state)
        logger.advance(done)
        result["step"] = done
        if preempted:
            result["preempted"] = True
            result["stopped_by"] = stop.name or "preemption"
            logger.info(f"{result['stopped_by']}: saved step {done}, exiting cleanly; run "
                        "the same command to resume")
            break
    return result
