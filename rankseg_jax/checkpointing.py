"""Checkpoints: an orbax v0 `CheckpointManager` facade and a params-only format.

Training checkpoints live in `<workdir>/checkpoints/<step>/` with two items:
  * 'state': the train state pytree {'step', 'params', 'opt_state'} (sharded arrays),
  * 'data':  the grain iterator position of every process (`grain.checkpoint`).
Saves are asynchronous and atomic (orbax writes a tmp dir and renames it on commit), so a
kill at any moment leaves the previous checkpoint intact. The last `train.keep_checkpoints`
are kept, plus (train.keep_best) the one with the best val mIoU: scores are recorded after a
checkpoint is saved (`record_score`, the trainer saves before it evaluates) in
`<checkpoints>/scores.json`, so the best one stays protected across restarts
(`resolve_step(run, 'best')` reads it back). Every step also carries the run info
(`rankseg_jax.run_info`: versions, git revision, config file + variant, resolved config) as
orbax step metadata (`step_info`, `read_step_info`).
Directories may be local or cloud (`gs://...`, through `rankseg_jax.paths` / etils.epath).

Restoring takes the newest intact checkpoint: an unreadable one (truncated file, empty
data-iterator JSON, ...) is reported with a warning naming it, set aside as
`<step>.broken-<time>` (nothing is deleted) and the next older one is tried. A checkpoint whose
parameter shapes do not fit the model raises `IncompatibleCheckpoint`, which names the
parameters, both shapes and the options of the run's saved config.json that differ.

Params-only format (shared with the converters): `<dir>/params` (orbax StandardCheckpointer
of the pure nested param dict) and `<dir>/metadata.json` (free-form, e.g. the config and
the source of the weights).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import grain
import jax
import ml_collections as mlc
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers as cm

from rankseg_jax import paths
from rankseg_jax.checkpoint_fit import (  # noqa: F401  (part of this module's interface)
    CheckpointError,
    IncompatibleCheckpoint,
    check_fits,
)

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"
PARAMS_ITEM = "params"
METADATA_FILE = "metadata.json"
SCORES_FILE = "scores.json"


def checkpoint_dir(workdir: str | os.PathLike):
    """`<workdir>/checkpoints` as an epath.Path (local or cloud)."""
    return paths.as_path(workdir, "workdir") / CHECKPOINT_SUBDIR


@dataclasses.dataclass
class _KeepStep:
    """orbax preservation policy: keeps the checkpoint whose step `step_fn()` returns."""

    step_fn: Callable[[], int | None]

    def should_preserve(self, checkpoints, *, context=None) -> list[bool]:
        del context
        keep = self.step_fn()
        return [info.step == keep for info in checkpoints]


class Checkpointer:
    """Train-state + data-iterator checkpoints of one run directory.

    directory: the checkpoints folder (`<workdir>/checkpoints`). config: the run's config
    (train.ckpt_every, keep_checkpoints, keep_best, async_checkpointing), also compared with
    the run's saved config.json when a checkpoint does not fit the model. read_only: for
    another run's folder (init.resume), to restore from only: nothing is cleaned up there.
    info: the run info (`rankseg_jax.run_info.collect`) stored in every step's metadata.
    """

    def __init__(self, directory: str | os.PathLike, config: mlc.ConfigDict, *,
                 read_only: bool = False, info: dict | None = None):
        t = config.train
        self.config = config
        self.info = info
        self.directory = paths.as_path(directory)
        self.scores = self._read_scores()  # {step: val mIoU} of saved checkpoints
        policies = [cm.FixedIntervalPolicy(max(int(t.ckpt_every), 1))]
        if jax.process_count() > 1:
            # Orbax learns about preemption from the jax.distributed coordination service.
            policies.append(cm.PreemptionCheckpointingPolicy())
        keep = [cm.LatestN(n=max(int(t.keep_checkpoints), 1))]
        if t.keep_best:
            keep.append(_KeepStep(self.best_step))
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=cm.AnySavePolicy(policies),
            preservation_policy=cm.AnyPreservationPolicy(keep),
            enable_async_checkpointing=bool(t.async_checkpointing),
            # Another run's folder is only read (no save is ever called on it): leave its
            # temporary folders alone, that run may still be writing them.
            cleanup_tmp_directories=not read_only)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data"),
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": grain.checkpoint.CheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Whether the save policy (interval, multi-host preemption) wants step `step`."""
        return self.manager.should_save(step)

    def save(self, step: int, state: Any, data_iterator=None, *, force: bool = False) -> bool:
        """Saves (asynchronously) if the policy or `force` says so; returns whether it did."""
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force,
                                 custom_metadata=self.info)

    def step_info(self, step: int) -> dict:
        """The run info saved with checkpoint `step` ({} if it has none)."""
        return read_step_info(self.directory / str(int(step)))

    # ------------------------------------------------------------------ keep-best scores

    def _read_scores(self) -> dict[int, float]:
        path = self.directory / SCORES_FILE
        try:
            return {int(k): float(v) for k, v in json.loads(path.read_text()).items()}
        except FileNotFoundError:
            return {}
        except (ValueError, AttributeError) as e:
            log.warning("%s is unreadable (%s); the best checkpoint is chosen afresh", path, e)
            return {}

    def record_score(self, step: int, value: float) -> None:
        """Records the val mIoU of saved checkpoint `step` (keep-best); process 0 writes
        `scores.json` atomically."""
        self.scores[int(step)] = float(value)
        if jax.process_index() == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            paths.write_text_atomic(self.directory / SCORES_FILE, json.dumps(
                {str(k): v for k, v in sorted(self.scores.items())}))

    def best_step(self) -> int | None:
        """The step with the highest recorded score (the earliest on ties), or None."""
        return _best(self.scores)

    # ------------------------------------------------------------------ restore

    def restore(self, abstract_state: Any, data_iterator=None, step: int | None = None):
        """Restores the train state onto the shardings carried by `abstract_state`.

        step: None = the newest intact checkpoint (`restore_newest_intact`).
        data_iterator: if given, its position is restored in place from the same step.
        Returns the state pytree.
        """
        if step is None:
            return self.restore_newest_intact(abstract_state, data_iterator)[0]
        return self._restore_step(step, abstract_state, data_iterator)

    def _restore_step(self, step: int, abstract_state: Any, data_iterator=None):
        step_dir = self.directory / str(step)
        check_fits(step_dir / "state", abstract_state["params"], self.config, subtree="params")
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        return out["state"]

    def restore_newest_intact(self, abstract_state: Any, data_iterator=None, *,
                              set_aside: bool = True) -> tuple[Any, int]:
        """(state, step) of the newest checkpoint that restores.

        An unreadable checkpoint is reported with a warning naming it and (set_aside) renamed
        `<step>.broken-<time>` so later saves can reuse its number; then the next older one is
        tried. Raises CheckpointError naming every broken checkpoint if none restores, and
        IncompatibleCheckpoint (at once) if the parameters do not fit the model.
        """
        # Before the first attempt: a failing read's siblings may complete while orbax is
        # still unwinding, before the error reaches the handler below.
        quiet_late_read_completions()
        failures = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state = self._restore_step(step, abstract_state, data_iterator)
            except IncompatibleCheckpoint:
                raise
            except Exception as e:  # tensorstore, JSON, OS errors of a damaged checkpoint
                reason = _reason(e)
                failures.append(f"{self.directory / str(step)} ({reason})")
                log.warning("checkpoint %s is unreadable (%s); trying the previous one",
                            self.directory / str(step), reason)
                if set_aside:
                    self._set_aside(step)
                continue
            if failures:
                log.warning("resumed from checkpoint %s instead of the newest one",
                            self.directory / str(step))
            return state, step
        if not failures:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        raise CheckpointError("no intact checkpoint in " + str(self.directory) + ": "
                              + "; ".join(failures))

    def _set_aside(self, step: int) -> None:
        """Renames a broken step folder out of orbax's view (kept for inspection)."""
        if jax.process_index() == 0:
            src = self.directory / str(step)
            dst = self.directory / f"{step}.broken-{time.strftime('%Y%m%d-%H%M%S')}"
            src.rename(dst)
            log.warning("set aside the broken checkpoint as %s", dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self.manager.reload()

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and stops orbax's background threads."""
        self.manager.close()


_CLOSED_LOOP = "Event loop is closed"


def quiet_late_read_completions() -> None:
    """Stops a failed restore's leftover reads from printing a misleading traceback.

    When one read of a damaged checkpoint fails, orbax's restore returns with the error and
    closes its event loop without cancelling the other reads
    (`orbax/checkpoint/_src/asyncio_utils.py`, `_run_sync_via_new_loop`). Those reads still
    finish in tensorstore's threads and try to wake the closed loop; Python reports the
    resulting `RuntimeError: Event loop is closed` through `sys.unraisablehook`, i.e. a
    traceback at some later moment that looks like a crash of the run but is none (the
    broken checkpoint was already reported and set aside). This installs (once) a hook
    that logs exactly that error at debug level and hands every other one to the hook it
    replaces.
    """
    if getattr(sys.unraisablehook, "_rankseg_quiet", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == _CLOSED_LOOP:
            log.debug("ignored a late read completion of a failed restore: %r", exc)
            return
        previous(unraisable)

    hook._rankseg_quiet = True
    sys.unraisablehook = hook


def _best(scores: dict[int, float]) -> int | None:
    if not scores:
        return None
    return max(sorted(scores), key=lambda k: scores[k])


def read_step_info(step_dir: str | os.PathLike) -> dict:
    """The run info (`rankseg_jax.run_info`) in a step folder's orbax metadata; {} if none."""
    p = paths.as_path(step_dir) / "_CHECKPOINT_METADATA"
    try:
        return json.loads(p.read_text()).get("custom_metadata") or {}
    except (OSError, ValueError, AttributeError):
        return {}


def is_training_checkpoint(directory: str | os.PathLike) -> bool:
    """True for a run dir (with checkpoints/) or a checkpoints dir with step subdirs."""
    d = paths.as_path(directory)
    if (d / CHECKPOINT_SUBDIR).is_dir():
        return True
    return d.is_dir() and any(p.name.isdigit() and p.is_dir() for p in d.iterdir())


def training_checkpoint_root(directory: str | os.PathLike):
    d = paths.as_path(directory)
    return d / CHECKPOINT_SUBDIR if (d / CHECKPOINT_SUBDIR).is_dir() else d


def is_params_dir(directory: str | os.PathLike) -> bool:
    return (paths.as_path(directory) / PARAMS_ITEM).is_dir()


STEP_CHOICES = ("latest", "best")


def is_step_choice(value: str) -> bool:
    """Whether a --checkpoint value names a step ('latest', 'best', '1200') not a path."""
    return value in STEP_CHOICES or value.isdigit()


def resolve_step(directory: str | os.PathLike, which: str | int | None) -> int | None:
    """The step of a training run that `which` names.

    which: None or 'latest' -> None (the newest intact step, chosen when reading); 'best' ->
    the step with the best recorded val mIoU (`<checkpoints>/scores.json`, train.keep_best);
    a step number (int or digits). Raises CheckpointError naming the run when 'best' has no
    scores or the step's folder does not exist.
    """
    if which is None or which == "latest":
        return None
    root = training_checkpoint_root(directory)
    if which == "best":
        try:
            scores = {int(k): float(v)
                      for k, v in json.loads((root / SCORES_FILE).read_text()).items()}
        except FileNotFoundError:
            scores = {}
        step = _best(scores)
        if step is None:
            raise CheckpointError(
                f"--checkpoint=best: {root} has no recorded evaluation scores ({SCORES_FILE}; "
                "written when training evaluates with train.keep_best); use "
                "--checkpoint=latest or a step number")
        if not (root / str(step)).is_dir():
            raise CheckpointError(f"--checkpoint=best: the best step {step} "
                                  f"(by {root / SCORES_FILE}) is no longer in {root}")
        return step
    step = int(which)
    if not (root / str(step)).is_dir():
        steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) \
            if root.is_dir() else []
        raise CheckpointError(f"no checkpoint step {step} in {root} (steps: {steps})")
    return step


# --------------------------------------------------------------------------- params-only


def params_tree(model: nnx.Module) -> dict:
    """The params-only tree of `model`: `nnx.to_pure_dict` of its nnx.Param state.

    Raises ValueError if the model holds other state, which would silently not be saved.
    """
    rest = nnx.state(model, nnx.Not(nnx.Param))
    if jax.tree.leaves(rest):
        raise ValueError("the model has non-Param state, which params-only checkpoints do not "
                         f"carry: {jax.tree.map(jax.numpy.shape, rest)}")
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def restore_params_into(model: nnx.Module, directory: str | os.PathLike) -> None:
    """Loads a params-only dir into `model` (built from the same config) in place."""
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, load_params(directory, nnx.to_pure_dict(state)))
    nnx.update(model, state)


def save_params(directory: str | os.PathLike, params: Any, metadata: dict | None = None) -> None:
    """Writes params (pure nested dict of numpy/jax arrays) and metadata.json (process 0).

    Blocks until written. Overwrites nothing: fails if `directory/params` exists.
    """
    d = paths.as_path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(d / PARAMS_ITEM, params)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        paths.write_text_atomic(d / METADATA_FILE, json.dumps(
            metadata or {}, indent=2, sort_keys=True, default=str))


def load_params(directory: str | os.PathLike, target_abstract: Any = None,
                config: mlc.ConfigDict | None = None) -> Any:
    """Restores params saved by `save_params`.

    target_abstract: pytree of jax.ShapeDtypeStruct (with .sharding) to restore onto; None
    restores as saved (single-process convenience). config: the model's config, compared
    with the saved one in the IncompatibleCheckpoint message if the shapes do not fit.
    """
    d = paths.as_path(directory)
    try:
        if target_abstract is not None:
            check_fits(d / PARAMS_ITEM, target_abstract, config)
        with ocp.StandardCheckpointer() as ckptr:
            if target_abstract is None:
                return ckptr.restore(d / PARAMS_ITEM)
            return ckptr.restore(d / PARAMS_ITEM, target_abstract)
    except IncompatibleCheckpoint:
        raise
    except Exception as e:  # a damaged checkpoint: tensorstore, JSON, OS errors
        raise CheckpointError(f"params-only checkpoint {d} is unreadable ({_reason(e)})") from e


def _reason(e: BaseException) -> str:
    """One line about a reader error (tensorstore messages run to kilobytes)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {(lines[0] if lines else '')[:300]}"


def read_metadata(directory: str | os.PathLike) -> dict:
    p = paths.as_path(directory) / METADATA_FILE
    return json.loads(p.read_text()) if p.exists() else {}



# --------------------------------------------------------------------------- weight sources


def _step_dirs(root) -> list:
    """Step folders of a checkpoints dir, newest first; raises if there is none."""
    steps = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir()),
                   reverse=True)
    if not steps:
        raise FileNotFoundError(f"no checkpoint step folder in {root}")
    return [root / str(s) for s in steps]


def restore_training_params(directory: str | os.PathLike, abstract_params: Any,
                            step: int | None = None,
                            config: mlc.ConfigDict | None = None) -> tuple[Any, int]:
    """The params of a training checkpoint (run dir or its checkpoints/ dir), nothing else.

    abstract_params: pytree of jax.ShapeDtypeStruct carrying .sharding. Only `params` is read
    (orbax partial restore), so no optimizer is needed to load weights for inference.
    step: None = the newest intact step (an unreadable newer one is skipped with a warning
    naming it; nothing is renamed). config: the model's config (for mismatch messages).
    Returns (params, step). Raises IncompatibleCheckpoint if the shapes do not fit and
    CheckpointError naming the checkpoint(s) if none can be read.
    """
    root = training_checkpoint_root(directory)
    candidates = _step_dirs(root) if step is None else [root / str(int(step))]
    target = {"params": abstract_params}
    failures = []
    for step_dir in candidates:
        try:
            check_fits(step_dir / "state", abstract_params, config, subtree="params")
            with ocp.PyTreeCheckpointer() as ckptr:
                out = ckptr.restore(step_dir / "state", args=ocp.args.PyTreeRestore(
                    item=target,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True))
        except IncompatibleCheckpoint:
            raise
        except Exception as e:  # a damaged checkpoint: tensorstore, JSON, OS errors
            reason = _reason(e)
            failures.append(f"{step_dir} ({reason})")
            log.warning("checkpoint %s is unreadable (%s)", step_dir, reason)
            continue
        return out["params"], int(step_dir.name)
    raise CheckpointError("no readable checkpoint: " + "; ".join(failures))


def place_params(params: Any, abstract_params: Any) -> Any:
    """Host (numpy) params -> global jax.Arrays on the shardings of `abstract_params`.

    Works with several processes: each one builds its own shards from the host copy.
    """
    def place(x, a):
        if isinstance(x, jax.Array) and x.sharding == a.sharding:
            return x
        host = np.asarray(jax.device_get(x), a.dtype)
        return jax.make_array_from_callback(a.shape, a.sharding, lambda idx: host[idx])

    return jax.tree.map(place, params, abstract_params)


def resolve_params(source: str | os.PathLike, config: mlc.ConfigDict, abstract_params: Any,
                   *, fresh_params: Callable[[], Any],
                   step: str | int | None = None) -> tuple[Any, str]:
    """Params from any weight source, placed on the shardings of `abstract_params`.

    The one path by which training (`init.pretrained`), evaluation, prediction, conversion and
    export find weights. `source` is one of:
      * a params-only directory (`save_params`);
      * a run directory or its `checkpoints/` directory (latest step; params only);
      * a file any converter reads (official `.pth`, timm, AugReg `.npz`, ...).
    fresh_params: () -> host params of a freshly initialised model; parameters a backbone-only
      source lacks keep those values.
    step: for a training run: None/'latest' (newest intact), 'best' or a step number
      (`resolve_step`); CheckpointError for any other source.
    Returns (params, a one-line description of what was loaded).
    """
    p = paths.as_path(source)
    training = is_training_checkpoint(p)
    if step not in (None, "latest") and not training:
        raise CheckpointError(f"--checkpoint={step}: {str(source)!r} is not a training run "
                              "directory (with checkpoints/<step>/)")
    if is_params_dir(p):
        return load_params(p, abstract_params, config), f"params-only {p}"
    if training:
        root = training_checkpoint_root(p)
        params, got = restore_training_params(p, abstract_params, resolve_step(p, step),
                                              config=config)
        return params, f"training checkpoint {root} step {got}"
    p = pathlib.Path(os.fspath(p))  # checkpoint files are read locally (torch, numpy)
    if not p.is_file():
        raise FileNotFoundError(f"no weights at {str(source)!r}: expected a params-only "
                                "directory, a run directory with checkpoints/ or a checkpoint "
                                "file (.pth, .npz, .safetensors, .bin)")
    from rankseg_jax import (
        convert,  # imports torch lazily, only for files
        param_paths,
    )

    shapes = {path: tuple(x.shape) for path, x in param_paths.flatten(abstract_params)}
    converted, report = convert.read_checkpoint(p, config, shapes, allow_partial=None)
    params = fresh_params() if len(converted) < len(shapes) else jax.tree.map(
        lambda a: np.zeros(a.shape, a.dtype), abstract_params)
    for k, v in converted.items():
        param_paths.set_path(params, k, v)
    return place_params(params, abstract_params), report.summary()
