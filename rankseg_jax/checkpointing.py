"""Checkpoints: an orbax v0 `CheckpointManager` facade and a params-only format.

Training checkpoints live in `<workdir>/checkpoints/<step>/` with two items:
  * 'state': the train state pytree {'step', 'params', 'opt_state'} (sharded arrays),
  * 'data':  the grain iterator position of every process (`grain.checkpoint`).
Saves are asynchronous and atomic (orbax writes a tmp dir and renames it on commit), so a
kill at any moment leaves the previous checkpoint intact. The last `train.keep_checkpoints`
are kept, plus (train.keep_best) the one with the best val mIoU.

Params-only format (shared with the converters): `<dir>/params` (orbax StandardCheckpointer
of the pure nested param dict) and `<dir>/metadata.json` (free-form, e.g. the config and
the source of the weights).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable
from typing import Any

import grain
import jax
import ml_collections as mlc
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers as cm

CHECKPOINT_SUBDIR = "checkpoints"
PARAMS_ITEM = "params"
METADATA_FILE = "metadata.json"


def checkpoint_dir(workdir: str | os.PathLike) -> pathlib.Path:
    return pathlib.Path(workdir).absolute() / CHECKPOINT_SUBDIR


class Checkpointer:
    """Train-state + data-iterator checkpoints of one run directory."""

    def __init__(self, directory: str | os.PathLike, config: mlc.ConfigDict):
        t = config.train
        policies = [cm.FixedIntervalPolicy(max(int(t.ckpt_every), 1))]
        if jax.process_count() > 1:
            # Orbax learns about preemption from the jax.distributed coordination service.
            policies.append(cm.PreemptionCheckpointingPolicy())
        keep = [cm.LatestN(n=max(int(t.keep_checkpoints), 1))]
        if t.keep_best:
            keep.append(cm.BestN(get_metric_fn=lambda m: m["mIoU"], n=1,
                                 keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=cm.AnySavePolicy(policies),
            preservation_policy=cm.AnyPreservationPolicy(keep),
            enable_async_checkpointing=bool(t.async_checkpointing),
            cleanup_tmp_directories=True)
        self.directory = pathlib.Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data"),
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": grain.checkpoint.CheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_iterator=None, *, metrics: dict | None = None,
             force: bool = False) -> bool:
        """Saves (asynchronously) if the policy or `force` says so; returns whether it did.

        metrics: {'mIoU': float, ...} attached for the keep-best policy.
        """
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics,
                                 force=force)

    def restore(self, abstract_state: Any, data_iterator=None, step: int | None = None):
        """Restores the train state onto the shardings carried by `abstract_state`.

        data_iterator: if given, its position is restored in place from the same step.
        Returns the state pytree.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        return out["state"]

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def is_training_checkpoint(directory: str | os.PathLike) -> bool:
    """True for a run dir (with checkpoints/) or a checkpoints dir with step subdirs."""
    d = pathlib.Path(directory)
    if (d / CHECKPOINT_SUBDIR).is_dir():
        return True
    return d.is_dir() and any(p.is_dir() and p.name.isdigit() for p in d.iterdir())


def training_checkpoint_root(directory: str | os.PathLike) -> pathlib.Path:
    d = pathlib.Path(directory)
    return d / CHECKPOINT_SUBDIR if (d / CHECKPOINT_SUBDIR).is_dir() else d


def is_params_dir(directory: str | os.PathLike) -> bool:
    return (pathlib.Path(directory) / PARAMS_ITEM).is_dir()


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
    d = pathlib.Path(directory).absolute()
    d.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(d / PARAMS_ITEM, params)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        tmp = d / (METADATA_FILE + ".tmp")
        tmp.write_text(json.dumps(metadata or {}, indent=2, sort_keys=True, default=str))
        os.replace(tmp, d / METADATA_FILE)


def load_params(directory: str | os.PathLike, target_abstract: Any = None) -> Any:
    """Restores params saved by `save_params`.

    target_abstract: pytree of jax.ShapeDtypeStruct (with .sharding) to restore onto; None
    restores as saved (single-process convenience).
    """
    d = pathlib.Path(directory).absolute()
    with ocp.StandardCheckpointer() as ckptr:
        if target_abstract is None:
            return ckptr.restore(d / PARAMS_ITEM)
        return ckptr.restore(d / PARAMS_ITEM, target_abstract)


def read_metadata(directory: str | os.PathLike) -> dict:
    p = pathlib.Path(directory) / METADATA_FILE
    return json.loads(p.read_text()) if p.exists() else {}



# --------------------------------------------------------------------------- weight sources


def _latest_step_dir(root: pathlib.Path) -> pathlib.Path:
    steps = sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    if not steps:
        raise FileNotFoundError(f"no checkpoint step folder in {root}")
    return root / str(steps[-1])


def restore_training_params(directory: str | os.PathLike, abstract_params: Any,
                            step: int | None = None) -> Any:
    """The params of a training checkpoint (run dir or its checkpoints/ dir), nothing else.

    abstract_params: pytree of jax.ShapeDtypeStruct carrying .sharding. Only `params` is read
    (orbax partial restore), so no optimizer is needed to load weights for inference.
    step: None = the latest step.
    """
    root = training_checkpoint_root(directory).absolute()
    step_dir = _latest_step_dir(root) if step is None else root / str(int(step))
    target = {"params": abstract_params}
    with ocp.PyTreeCheckpointer() as ckptr:
        out = ckptr.restore(step_dir / "state", args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))
    return out["params"]


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
                   *, fresh_params: Callable[[], Any]) -> tuple[Any, str]:
    """Params from any weight source, placed on the shardings of `abstract_params`.

    The one path by which training (`init.pretrained`), evaluation, prediction, conversion and
    export find weights. `source` is one of:
      * a params-only directory (`save_params`);
      * a run directory or its `checkpoints/` directory (latest step; params only);
      * a file any converter reads (official `.pth`, timm, AugReg `.npz`, ...).
    fresh_params: () -> host params of a freshly initialised model; parameters a backbone-only
      source lacks keep those values.
    Returns (params, a one-line description of what was loaded).
    """
    p = pathlib.Path(source)
    if is_params_dir(p):
        return load_params(p, abstract_params), f"params-only {p}"
    if is_training_checkpoint(p):
        root = training_checkpoint_root(p)
        step = _latest_step_dir(root).name
        params = restore_training_params(p, abstract_params)
        return params, f"training checkpoint {root} step {step}"
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
