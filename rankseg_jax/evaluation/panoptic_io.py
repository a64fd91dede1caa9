"""COCO panoptic prediction format (what panopticapi's `pq_compute` reads).

A prediction is a PNG whose RGB encodes the segment id as id = R + 256 G + 256^2 B (panopticapi
`utils.py:73-78` id2rgb/rgb2id; 0 = void) plus one JSON annotation
{'image_id', 'file_name': '<stem>.png', 'segments_info': [{'id', 'category_id'}]} with the
category ids mapped from contiguous training ids to dataset ids. This is what detectron2's
`COCOPanopticEvaluator.process` writes (`panoptic_evaluation.py`: `id2rgb`, PIL PNG, `isthing`
popped and the category id mapped back through the thing/stuff id maps, one map here since the
two agree wherever both are defined); `write_predictions_json` writes the
{'annotations': [...]} file (detectron2 copies the GT JSON around them; `pq_compute` reads only
'annotations' from the prediction file).
"""

from __future__ import annotations

import io
import json
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

_MAX_ID = 256**3  # ids must fit in 24-bit RGB


def id2rgb(panoptic_seg: np.ndarray) -> np.ndarray:
    """int [H, W] segment ids -> uint8 [H, W, 3] with id = R + 256 G + 256^2 B."""
    ids = np.asarray(panoptic_seg, np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= _MAX_ID):
        raise ValueError(f"panoptic ids must lie in [0, 256^3), got [{ids.min()}, {ids.max()}]")
    return np.stack([(ids >> (8 * i)) & 255 for i in range(3)], axis=-1).astype(np.uint8)


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> int32 [H, W] ids R + 256 G + 256^2 B (panopticapi rgb2id)."""
    c = np.asarray(rgb).astype(np.int32)
    return c[..., 0] + 256 * c[..., 1] + 256 * 256 * c[..., 2]


def encode_png(panoptic_seg: np.ndarray) -> bytes:
    """int [H, W] segment ids -> PNG bytes of `id2rgb` (RGB, 8 bits per channel)."""
    buf = io.BytesIO()
    Image.fromarray(id2rgb(panoptic_seg)).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> int32 [H, W] segment ids (the inverse of `encode_png`)."""
    with Image.open(io.BytesIO(data)) as im:
        return rgb2id(np.asarray(im.convert("RGB")))


def coco_segments(segments_info: Sequence[Mapping], category_map) -> list[dict]:
    """segments_info of `mask_former.panoptic_inference` -> COCO [{'id', 'category_id'}].

    category_map: contiguous id -> dataset category id (a mapping, or a sequence indexed by
    the contiguous id). `isthing` is dropped (the categories of the GT JSON define it).
    """
    return [{"id": int(s["id"]), "category_id": int(category_map[int(s["category_id"])])}
            for s in segments_info]


def write_panoptic_prediction(folder, image_id, file_stem: str, panoptic_seg: np.ndarray,
                              segments_info: Sequence[Mapping], category_map) -> dict:
    """Writes `<folder>/<file_stem>.png` and returns its COCO annotation dict
    {'image_id', 'file_name', 'segments_info'} (see `coco_segments`).

    panoptic_seg: int [H, W] segment ids in [0, 256^3) (0 = void) at the original image size.
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    file_name = f"{file_stem}.png"
    (folder / file_name).write_bytes(encode_png(panoptic_seg))
    return {"image_id": image_id, "file_name": file_name,
            "segments_info": coco_segments(segments_info, category_map)}


def write_predictions_json(path, annotations: Sequence[Mapping], **extra) -> None:
    """Writes {'annotations': annotations, **extra} (e.g. the GT 'images'/'categories') as the
    prediction JSON of panopticapi `pq_compute`."""
    pathlib.Path(path).write_text(json.dumps({**extra, "annotations": list(annotations)}))
