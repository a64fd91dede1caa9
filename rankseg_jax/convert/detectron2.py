"""Safe reading of detectron2 checkpoints (`.pth` and the model zoo's `.pkl`).

`.pkl` files are plain pickles, and `pickle.load` runs whatever callables they name. The
reader here uses a `pickle.Unpickler` whose `find_class` resolves only what numpy arrays and
plain containers need; any other global is refused with an error naming the file and the
global, before anything is called. Formats (as detectron2's `DetectionCheckpointer._load_file`
reads them):

  * detectron2 model zoo `.pkl`: `{"model": {name: np.ndarray}, "__author__": ...}`;
  * older Caffe2 / Detectron1 `.pkl`: arrays at top level, or under `"blobs"`;
  * `.pkl` made by Mask2Former's `tools/convert-pretrained-swin-model-to-d2.py`: the same
    dict holding pickled torch tensors; they are rebuilt through
    `torch.load(weights_only=True)` (torch's own safe loader), never through the pickled
    callables;
  * `.pth`: `torch.load(weights_only=True)`, `{"model": ...}` or a bare state dict.
"""

from __future__ import annotations

import codecs
import collections
import importlib
import io
import pathlib
import pickle
from collections.abc import Mapping

import numpy as np

from rankseg_jax.convert.engine import CheckpointMismatch
from rankseg_jax.convert.torch_io import tensors_to_numpy


def _numpy_global(module: str, name: str):
    """numpy.core.* (numpy 1 pickles) and numpy._core.* (numpy 2) name the same objects."""
    tail = module.split(".", 2)[-1] if module.startswith(("numpy.core.", "numpy._core.")) else ""
    for mod in (f"numpy._core.{tail}", f"numpy.core.{tail}") if tail else (module,):
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"cannot resolve {module}.{name}")


def _torch_load_bytes(data: bytes):
    """Replaces `torch.storage._load_from_bytes`: the same, but with weights_only=True."""
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _torch_rebuild_tensor(storage, offset, size, stride, requires_grad, hooks, *rest):
    """`torch._utils._rebuild_tensor_v2` for a storage from the safe loader, without hooks."""
    import torch

    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage) or hooks:
        raise UnsafePickleError("a pickled tensor has no plain storage or carries hooks")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
                                           collections.OrderedDict(), *rest)


# (module, name) -> resolver. Everything else is refused.
_NUMPY_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}
_OTHER_ALLOWED = {
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    # protocol <= 2 pickles bytes as _codecs.encode(str, "latin1")
    ("_codecs", "encode"): lambda: codecs.encode,
    ("torch._utils", "_rebuild_tensor_v2"): lambda: _torch_rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): lambda: _torch_load_bytes,
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global outside the allow-list (it could run arbitrary code)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        # latin1: Python-2 era model zoo pickles store array bytes as str (as detectron2 does).
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_ALLOWED:
            return _numpy_global(module, name)
        if (module, name) in _OTHER_ALLOWED:
            return _OTHER_ALLOWED[(module, name)]()
        raise UnsafePickleError(
            f"{self.source}: refusing to unpickle global {module}.{name}: only numpy arrays, "
            "torch tensors and plain containers are allowed in a checkpoint .pkl")


def _to_numpy(value):
    if isinstance(value, np.ndarray | np.generic):
        return np.asarray(value)
    if hasattr(value, "detach"):  # torch tensor from a converted-Swin .pkl
        return tensors_to_numpy({"v": value})["v"]
    return None


def read_pkl(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Reads a detectron2 / Detectron1 `.pkl` with the restricted unpickler.

    Returns {key: numpy array} of the model (from `"model"`, `"blobs"` or the top level);
    non-array entries (e.g. `__author__`) and Caffe2 `*_momentum` blobs are dropped. Raises
    UnsafePickleError naming the file and the refused global.
    """
    with open(path, "rb") as f:
        data = _RestrictedUnpickler(f, str(path)).load()
    if not isinstance(data, Mapping):
        raise CheckpointMismatch(f"{path}: expected a dict, got {type(data).__name__}")
    if "model" in data and isinstance(data["model"], Mapping):
        data = data["model"]
    elif "blobs" in data and isinstance(data["blobs"], Mapping):
        data = data["blobs"]
    out = {}
    for key, value in data.items():
        array = _to_numpy(value)
        if array is not None and not str(key).endswith("_momentum"):
            out[str(key)] = array
    return out


def read_detectron2_checkpoint(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Reads a detectron2 checkpoint safely: {key: numpy array} of its model state dict.

    `.pkl` -> `read_pkl` (restricted unpickler); anything else -> `torch.load(weights_only=
    True)`, taking `["model"]` when present (a `DetectionCheckpointer` file or the original
    Swin release), else the bare state dict. float16/bfloat16 tensors become float32.
    """
    path = pathlib.Path(path)
    if path.suffix == ".pkl":
        return read_pkl(path)
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading .pth checkpoints needs torch: pip install torch") from e
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise CheckpointMismatch(f"{path}: expected a state dict, got {type(obj).__name__}")
    return tensors_to_numpy(obj)
