"""Does a saved checkpoint fit the model? Checked from the saved metadata before restoring.

`check_fits` compares the parameter paths and shapes stored in an orbax item directory with
the model's; on a mismatch `IncompatibleCheckpoint` names the parameters, both shapes and the
options in which the run's saved config.json (found next to the checkpoint) differs from the
current config, instead of orbax's "Requested shape ... is not compatible" without a name.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections as mlc
import orbax.checkpoint as ocp

from rankseg_jax import param_paths, paths


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names its path."""


class IncompatibleCheckpoint(CheckpointError):
    """A checkpoint's parameters do not fit the model (names parameters, shapes, options)."""


def _stored_tree(item_dir) -> Any:
    """The saved pytree of ArrayMetadata (shapes, dtypes) of an orbax item directory."""
    return ocp.PyTreeCheckpointHandler().metadata(item_dir).tree


def _shapes(tree: Any) -> dict[str, tuple]:
    return {param_paths.path_name(path): tuple(x.shape)
            for path, x in param_paths.flatten(tree)}


def check_fits(item_dir: str | os.PathLike, abstract_params: Any,
               config: mlc.ConfigDict | None = None, *, subtree: str | None = None) -> None:
    """Raises IncompatibleCheckpoint if the params saved in `item_dir` do not have the paths
    and shapes of `abstract_params` (any pytree with .shape leaves).

    subtree: the key of the params inside the saved tree ('params' for a train state).
    config: the current config; the message lists the options where the run's saved
    config.json (found next to the checkpoint) differs from it.
    Metadata that cannot be read raises the reader's own error (a damaged checkpoint).
    """
    item_dir = paths.as_path(item_dir)
    stored = _stored_tree(item_dir)
    if subtree is not None:
        stored = stored[subtree]
    have, want = _shapes(stored), _shapes(abstract_params)
    wrong = [f"  {k}: checkpoint {have[k]}, model {want[k]}"
             for k in want if k in have and have[k] != want[k]]
    missing = [f"  {k}: not in the checkpoint" for k in want if k not in have]
    extra = [f"  {k}: in the checkpoint only" for k in have if k not in want]
    problems = wrong + missing + extra
    if not problems:
        return
    shown = problems[:12] + ([f"  ... and {len(problems) - 12} more"] if len(problems) > 12
                             else [])
    raise IncompatibleCheckpoint(
        f"{item_dir.parent if subtree else item_dir} does not fit this model "
        f"({len(wrong)} shape mismatches, {len(missing)} missing, {len(extra)} extra "
        "parameters):\n" + "\n".join(shown) + "\n" + _config_hint(item_dir, config))


def _config_hint(item_dir, config: mlc.ConfigDict | None) -> str:
    """Which model options of the checkpoint's run differ from `config`."""
    from rankseg_jax.config import serialization
    from rankseg_jax.config.schema import ConfigError

    saved_path = serialization.find_run_config(item_dir)
    if saved_path is None or config is None:
        return ("No config.json was found next to the checkpoint: use the model options "
                "(model.*) it was trained with.")
    try:
        saved = serialization.load(saved_path.parent)
    except ConfigError as e:
        return f"The checkpoint's run config could not be read ({e})."
    diffs = serialization.differences(saved, config)
    model = [d for d in diffs if d[0].startswith("model.")] or diffs
    if not model:
        return f"{saved_path} has the same options: the checkpoint was written by other code."
    return (f"The checkpoint was trained with {saved_path}, which differs in:\n"
            + serialization.format_differences(model, limit=10)
            + f"\nPass --config pointing at that run's options, or load it with "
            f"rankseg_jax.load_model({str(saved_path.parent)!r}).")
