"""Params-only checkpoints: `DIR/params` (orbax StandardCheckpointer) + `DIR/metadata.json`.

The tree is `nnx.to_pure_dict(nnx.state(model, nnx.Param))` of the model built from the config.
This is the same on-disk format as `rankseg_jax.checkpointing.save_params / load_params`; when
that module exists it is used instead of the fallbacks here.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping

from flax import nnx

try:  # the trainer's implementation, when present
    from rankseg_jax.checkpointing import load_params as _load_params  # type: ignore
    from rankseg_jax.checkpointing import save_params as _save_params  # type: ignore
except ImportError:  # pragma: no cover - depends on what is in the checkout
    _load_params = _save_params = None


def save_params(directory: str | pathlib.Path, params: Mapping, metadata: Mapping) -> None:
    """Writes `directory/params` (orbax) and `directory/metadata.json`."""
    if _save_params is not None:
        _save_params(directory, params, metadata)
        return
    import orbax.checkpoint as ocp

    directory = pathlib.Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(directory / "params", params, force=True)
    ckpt.wait_until_finished()
    (directory / "metadata.json").write_text(json.dumps(dict(metadata), indent=2, default=str))


def load_params(directory: str | pathlib.Path, target: Mapping) -> dict:
    """Restores `directory/params` with the structure (and dtypes) of `target` (a pure dict)."""
    if _load_params is not None:
        return _load_params(directory, target)
    import orbax.checkpoint as ocp

    directory = pathlib.Path(directory).absolute()
    return ocp.StandardCheckpointer().restore(directory / "params", target)


def load_metadata(directory: str | pathlib.Path) -> dict:
    path = pathlib.Path(directory) / "metadata.json"
    return json.loads(path.read_text()) if path.exists() else {}


def model_pure_params(model: nnx.Module) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def restore_into(model: nnx.Module, directory: str | pathlib.Path) -> None:
    """Loads a params dir into `model` (built from the same config) in place."""
    state = nnx.state(model, nnx.Param)
    restored = load_params(directory, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
