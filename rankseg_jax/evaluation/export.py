"""Serving export: the inference function as serialized StableHLO (`jax.export`) + metadata.

`export_inference(config, model, (H, W), platforms=...)` traces images [B, H, W, 3]
(normalised, already at the serving resolution) -> {'pred': int32 [B, H, W], 'image_logits':
float32 [B, K], 'topk_index': int32 [B, kappa]} with the configured `test.mode` (whole or
slide) and the memory-light combine of `inference.py`, and serializes it with the weights
embedded as constants. The batch dimension is symbolic by default ("b"), so one artifact
serves any batch size; H and W are fixed (the window layout and the resize matrices depend on
them). `platforms` ('cpu', 'cuda', 'rocm', 'tpu'; default: the current backend) lowers one
artifact for several: jax.export lowers for any platform on any machine (a CUDA/TPU artifact
is written on a CPU-only host), and the caller's backend picks its lowering at load time.
Resizing arbitrary images to (H, W) and back is the client's job (`predict.py` does it).

The artifact file (`save_exported`): the magic line `RANKSEG_JAX_EXPORT 1`, the length of the
metadata JSON (8 bytes, little endian), the JSON (`export_metadata`: input size, the
normalisation mean/std, class names, K, kappa, platforms, versions), then jax's serialized
`Exported`. `load_exported(path)` returns (callable images -> dict, metadata); it needs only
jax (no flax, no model code).
"""

from __future__ import annotations

import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rankseg_jax.evaluation import inference, windows

_OUTPUTS = ("pred", "image_logits", "topk_index")
MAGIC = b"RANKSEG_JAX_EXPORT 1\n"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def inference_fn(config, model, hw: tuple[int, int]):
    """A pure function images [B, H, W, 3] -> (pred, image_logits, topk_index) at size hw.

    For the Segmenter head, image_logits and topk_index are zero-sized ([B, 0]).
    """
    h, w = hw
    t = config.test
    boxes = windows.window_boxes(t.mode, h, w, t.crop_size, t.stride)
    graphdef, state = nnx.split(model)
    k = config.model.num_classes
    patch = config.model.vit.patch_size
    y1, y2, x1, x2 = boxes[0]  # every window of a view has the same size
    grids = (-(-(y2 - y1) // patch), -(-(x2 - x1) // patch))
    ah, aw = (m.astype(np.float32) for m in windows.view_matrices(boxes, hw, grids, hw, hw))
    kappa = config.model.rankseg.topk if model.is_rankseg else 0

    def fn(images):
        m = nnx.merge(graphdef, state)
        b = images.shape[0]
        crops = jnp.concatenate([images[:, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes], axis=0)
        out = m(crops, train=False, full_logits=False)
        logits = out["mask_logits"]
        logits = logits.reshape((len(boxes), b) + logits.shape[1:])
        if kappa:
            topk = out["topk_index"].reshape(len(boxes), b, -1)
            scores = out["image_logits"].reshape(len(boxes), b, k).mean(0)
            ranked = jax.lax.top_k(scores, kappa)[1].astype(jnp.int32)
        else:
            topk = None
            scores, ranked = jnp.zeros((b, 0)), jnp.zeros((b, 0), jnp.int32)
        pred = inference.combine([logits], None if topk is None else [topk], [ah], [aw],
                                 num_classes=k, chunk=config.test.class_chunk)
        return pred, scores, ranked

    return fn


def export_inference(config, model, hw: tuple[int, int], *, batch: int | None = None,
                     platforms: tuple[str, ...] | None = None) -> jax.export.Exported:
    """Exports the inference function for input [B, H, W, 3] float32.

    batch: a fixed batch size, or None for a symbolic batch dimension.
    platforms: lowering platforms (subset of PLATFORMS); None = the current backend.
    Raises ValueError for an unknown platform.
    """
    if platforms is not None:
        unknown = sorted(set(platforms) - set(PLATFORMS))
        if unknown or not platforms:
            raise ValueError(f"export platforms {list(platforms)}: unknown {unknown}; "
                             f"choose from {list(PLATFORMS)}")
    fn = inference_fn(config, model, hw)
    b = jax.export.symbolic_shape("b")[0] if batch is None else batch
    spec = jax.ShapeDtypeStruct((b, hw[0], hw[1], 3), jnp.float32)
    return jax.export.export(jax.jit(fn), platforms=platforms)(spec)


def export_metadata(config, model, hw: tuple[int, int], exported: jax.export.Exported) -> dict:
    """What a client needs besides the function: input size and normalisation, class names,
    K, kappa, platforms, outputs, versions (and the run info of the weights' run, if known)."""
    from rankseg_jax import __version__, run_info
    from rankseg_jax.data import registry

    d = config.data
    info = registry.dataset_info(config)
    return {"format": MAGIC.decode().strip(), "rankseg_jax": __version__,
            "git": run_info.git_revision(), "jax": jax.__version__,
            "platforms": list(exported.platforms), "input_size": [int(hw[0]), int(hw[1])],
            "input": "float32 [B, H, W, 3] RGB, (pixel - mean) / std, at input_size",
            "mean": [float(v) for v in d.mean], "std": [float(v) for v in d.std],
            "num_classes": int(config.model.num_classes),
            "kappa": int(config.model.rankseg.topk) if model.is_rankseg else 0,
            "class_names": list(info.class_names), "dataset": d.name,
            "outputs": {"pred": "int32 [B, H, W] class ids",
                        "image_logits": "float32 [B, K] image-level class scores ([B, 0] "
                                        "without RankSeg)",
                        "topk_index": "int32 [B, kappa] top-kappa classes, best first"},
            "test": {"mode": config.test.mode, "crop_size": list(config.test.crop_size),
                     "stride": list(config.test.stride)}}


def save_exported(exported: jax.export.Exported, path: str | os.PathLike,
                  metadata: dict | None = None, *, overwrite: bool = False) -> None:
    """Writes the artifact (module docstring) to `path`: to a temporary file beside it, then
    renamed, so no half-written artifact is ever left. Raises FileExistsError if `path`
    exists and not `overwrite`.

    Serialization needs the `flatbuffers` package (a jax optional dependency).
    """
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    try:
        data = exported.serialize()
    except ImportError as e:
        raise ImportError(f"saving an exported model needs `pip install flatbuffers` ({e})") from e
    head = json.dumps(metadata or {}, sort_keys=True).encode()
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(head)) + head + bytes(data))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_artifact(path: str | os.PathLike) -> tuple[dict, bytearray]:
    """(metadata, serialized Exported) of an artifact; a bare `Exported.serialize()` file
    (older artifacts) gives metadata {}."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(MAGIC):
        return {}, bytearray(data)
    at = len(MAGIC)
    (n,) = struct.unpack("<Q", data[at:at + 8])
    meta = json.loads(data[at + 8:at + 8 + n])
    return meta, bytearray(data[at + 8 + n:])


def load_exported(path: str | os.PathLike):
    """Loads an artifact written by `save_exported`.

    Returns (run, metadata): run(images float32 [B, H, W, 3], normalised) -> {'pred',
    'image_logits', 'topk_index'} on the current backend (which must be one of
    metadata['platforms']); run.exported is the `jax.export.Exported`.
    """
    metadata, blob = read_artifact(path)
    exported = jax.export.deserialize(blob)

    def run(images):
        return dict(zip(_OUTPUTS, exported.call(jnp.asarray(images, jnp.float32)), strict=True))

    run.exported = exported
    return run, metadata
