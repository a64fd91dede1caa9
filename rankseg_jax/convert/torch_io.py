"""torch `.pth` files <-> numpy state dicts (torch is imported only when these run)."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import numpy as np

from rankseg_jax.convert.engine import CheckpointMismatch


def read_pth(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Reads an mmcv checkpoint (`{'state_dict', 'meta'}`) or a bare state dict safely.

    Uses `torch.load(weights_only=True)` (no pickle code execution). Returns key -> float32
    (or original dtype for non-float) numpy arrays. torch is imported only here.
    """
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading .pth checkpoints needs torch: pip install torch") from e
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointMismatch(f"{path}: expected a state dict, got {type(obj).__name__}")
    return tensors_to_numpy(obj)


def tensors_to_numpy(obj: Mapping) -> dict[str, np.ndarray]:
    """{key: torch tensor} -> {key: numpy array}; half/bfloat16 become float32."""
    import torch

    out = {}
    for k, v in obj.items():
        if hasattr(v, "detach"):
            v = v.detach().cpu()
            if v.dtype in (torch.float16, torch.bfloat16):
                v = v.float()
            out[k] = v.numpy()
    return out


def write_pth(path: str | pathlib.Path, state_dict: Mapping[str, np.ndarray],
              meta: Mapping | None = None, *, container: str = "state_dict") -> None:
    """Writes `{container: OrderedDict, 'meta': {...}}`: mmcv-style with the default
    container, detectron2-style with container='model'. Dtypes are kept (int64 buffers)."""
    import collections

    import torch

    sd = collections.OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in
                                 state_dict.items())
    torch.save({container: sd, "meta": dict(meta or {})}, str(path))
