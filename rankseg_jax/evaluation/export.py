"""Serving export: the inference function as serialized StableHLO (`jax.export`).

`export_inference(config, model, (H, W))` traces images [B, H, W, 3] (normalised, already at
the serving resolution) -> {'pred': int32 [B, H, W], 'image_logits': float32 [B, K],
'topk_index': int32 [B, kappa]} with the configured `test.mode` (whole or slide) and the
memory-light combine of `inference.py`, and serializes it with the weights embedded as
constants. The batch dimension is symbolic by default ("b"), so one artifact serves any batch
size; H and W are fixed (the window layout and the resize matrices depend on them).
Resizing arbitrary images to (H, W) and back is the client's job (`predict.py` does it).

`load_exported(path)` returns a callable images -> dict that needs only jax (no flax, no
model code): `jax.export.deserialize(...).call`.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rankseg_jax.evaluation import inference, windows

_OUTPUTS = ("pred", "image_logits", "topk_index")


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


def export_inference(config, model, hw: tuple[int, int], *,
                     batch: int | None = None) -> jax.export.Exported:
    """Exports the inference function for input [B, H, W, 3] float32.

    batch: a fixed batch size, or None for a symbolic batch dimension.
    """
    fn = inference_fn(config, model, hw)
    b = jax.export.symbolic_shape("b")[0] if batch is None else batch
    spec = jax.ShapeDtypeStruct((b, hw[0], hw[1], 3), jnp.float32)
    return jax.export.export(jax.jit(fn))(spec)


def save_exported(exported: jax.export.Exported, path: str | pathlib.Path) -> None:
    """Writes the serialized artifact (StableHLO + weights) to `path`.

    Serialization needs the `flatbuffers` package (a jax optional dependency).
    """
    try:
        data = exported.serialize()
    except ImportError as e:
        raise ImportError(f"saving an exported model needs `pip install flatbuffers` ({e})") from e
    pathlib.Path(path).write_bytes(data)


def load_exported(path: str | pathlib.Path):
    """Loads an artifact written by `save_exported`; returns images -> dict of outputs."""
    exported = jax.export.deserialize(bytearray(pathlib.Path(path).read_bytes()))

    def run(images):
        return dict(zip(_OUTPUTS, exported.call(jnp.asarray(images, jnp.float32)), strict=True))

    run.exported = exported
    return run
