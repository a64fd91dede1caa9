"""COCO-panoptic data: id encoding, segments_info, validation, folder and prepared sources.

Format (panopticapi `utils.py:73-90`, COCO panoptic): one RGB PNG per image whose pixels encode a
segment id as `id = R + 256 G + 256^2 B` (0 = VOID: no segment), and a JSON with `categories`
(`id`, `name`, `isthing`, ...) and per image an annotation `{image_id, file_name (the PNG),
segments_info: [{id, category_id, area, bbox [x, y, w, h], iscrowd}, ...]}`. The ADE20K panoptic
files written by Mask2Former's `datasets/prepare_ade20k_pan_seg.py` are in this format with
category ids 0..149 (stuff segments first, then one segment per thing instance, `iscrowd`
always 0; `:413-480`).

A decoded example (`decode_panoptic`, both sources) is
  {'image': uint8 [H, W, 3] RGB, 'label': int32 [H, W] semantic training ids (ignore 255),
   'panoptic': int32 [H, W] segment ids (0 = VOID), 'segments_info': [{'id', 'category_id'
   (training id), 'iscrowd', 'isthing', 'area', 'bbox'}, ...] in JSON order, 'name': str}
i.e. detectron2's dataset dict after `_convert_category_id` (category ids made contiguous,
`isthing` added; `register_ade20k_panoptic.py:225-237`). The semantic label is the dataset's own
annotation when the split has a `label_dir` (ADE20K: `annotations/`, converted like `ade20k`,
equal to Mask2Former's `annotations_detectron2`), else derived from the panoptic PNG as
Mask2Former's `datasets/prepare_coco_semantic_annos_from_panoptic_annos.py:18-26` does (every
segment, crowd included, painted with its training id; the rest 255).

Validation (`BadExampleError` naming the file): PNG not RGB, PNG size != image size, a non-zero
id in the PNG without a segment, a segment id 0 or repeated, an unknown `category_id`,
`iscrowd` not 0/1, and a segment whose JSON `area` disagrees with its pixel count or that is
absent from the PNG. For ADE20K (`DatasetInfo.stuff_under_things`) the official preparation
measured stuff areas before pasting things over them, so there a JSON `area` may exceed the pixel
count and a segment may be absent from the PNG (kept, as officially: it is a target with an empty
mask and an unmatched GT segment in PQ), but never fall short of it.
"""

from __future__ import annotations

import io
import json
import os
import pathlib

import numpy as np
from PIL import Image

from rankseg_jax.data.decode import check_complete
from rankseg_jax.data.registry import DatasetInfo
from rankseg_jax.data.sources import (
    BadExampleError,
    decode_image,
    decode_pair,
    read_metadata,
)

VOID = 0
IGNORE_INDEX = 255  # semantic label of pixels in no segment


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """Panoptic RGB -> segment ids. Takes uint8 [H, W, 3]; returns int32 [H, W]."""
    rgb = np.asarray(rgb).astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids -> panoptic RGB. Takes int [H, W] in [0, 2**24); returns uint8 [H, W, 3]."""
    ids = np.asarray(ids).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 24):
        raise ValueError("panoptic ids must lie in [0, 2**24)")
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], -1).astype(np.uint8)


def encode_panoptic_png(ids: np.ndarray) -> bytes:
    """Segment ids int [H, W] -> bytes of the COCO-panoptic RGB PNG."""
    buf = io.BytesIO()
    Image.fromarray(id2rgb(ids), mode="RGB").save(buf, "PNG")
    return buf.getvalue()


def read_panoptic_png(data: bytes, where: str) -> np.ndarray:
    """Decodes a COCO-panoptic PNG; returns int32 [H, W] segment ids (0 = VOID).

    Raises BadExampleError naming `where` for a truncated/corrupt file or a mode other than RGB.
    """
    check_complete(data, where)
    try:
        with Image.open(io.BytesIO(data)) as im:
            mode = im.mode
            rgb = np.array(im)
    except Exception as e:  # PIL raises many types for corrupt files
        raise BadExampleError(f"{where}: cannot decode panoptic PNG ({e})") from e
    if mode != "RGB":
        raise BadExampleError(f"{where}: panoptic PNG mode {mode!r}, expected RGB")
    return rgb2id(rgb)


# --------------------------------------------------------------------------- JSON side


def category_index(info: DatasetInfo) -> dict[int, int]:
    """JSON `category_id` -> training id of a panoptic dataset."""
    return {cid: i for i, cid in enumerate(info.category_ids)}


def check_categories(categories: list[dict], info: DatasetInfo, where: str) -> None:
    """Checks a JSON's `categories` against the registry: same ids in order, same `isthing`.

    The training id of a category is its position in that list, so any difference would
    silently relabel classes. Raises BadExampleError naming `where`.
    """
    ids = [int(c["id"]) for c in categories]
    things = tuple(i for i, c in enumerate(categories) if int(c.get("isthing", 0)) == 1)
    if tuple(ids) != tuple(info.category_ids):
        raise BadExampleError(f"{where}: categories {ids[:8]}... differ from {info.name}'s "
                              f"{list(info.category_ids[:8])}... ({len(ids)} vs "
                              f"{len(info.category_ids)})")
    if things != tuple(info.thing_classes):
        raise BadExampleError(f"{where}: the JSON's thing categories differ from {info.name}'s")


def convert_segments(segments_info: list[dict], info: DatasetInfo, where: str) -> list[dict]:
    """JSON segments -> segments with training-id `category_id` and an `isthing` flag.

    Takes the raw `segments_info` list; returns new dicts {'id', 'category_id', 'iscrowd',
    'isthing', 'area', 'bbox'} in the same order. Raises BadExampleError naming `where` for an
    id 0 or repeated id, an unknown category or an `iscrowd` other than 0/1.
    """
    index, things = category_index(info), set(info.thing_classes)
    out, seen = [], set()
    for s in segments_info:
        sid, cat, crowd = int(s["id"]), int(s["category_id"]), int(s.get("iscrowd", 0))
        if sid <= VOID or sid >= 1 << 24 or sid in seen:
            raise BadExampleError(f"{where}: segment id {sid} is 0, out of range or repeated")
        if cat not in index:
            raise BadExampleError(f"{where}: segment {sid} has unknown category_id {cat}")
        if crowd not in (0, 1):
            raise BadExampleError(f"{where}: segment {sid} has iscrowd={s['iscrowd']!r}")
        seen.add(sid)
        out.append({"id": sid, "category_id": index[cat], "iscrowd": crowd,
                    "isthing": index[cat] in things, "area": int(s.get("area", -1)),
                    "bbox": [int(v) for v in s.get("bbox", ())]})
    return out


def segment_lookup(ids: np.ndarray, seg_ids: np.ndarray) -> np.ndarray:
    """Index of each pixel's segment: int64 [H, W] in [0, S) or S for ids in no segment.

    ids: int [H, W]; seg_ids: int [S] (distinct). Vectorised (sort + searchsorted).
    """
    seg_ids = np.asarray(seg_ids, np.int64)
    if not len(seg_ids):
        return np.zeros(np.shape(ids), np.int64)
    order = np.argsort(seg_ids, kind="stable")
    srt = seg_ids[order]
    pos = np.clip(np.searchsorted(srt, ids), 0, len(srt) - 1)
    return np.where(srt[pos] == ids, order[pos], len(srt))


def check_panoptic(ids: np.ndarray, segments: list[dict], info: DatasetInfo, where: str) -> None:
    """Checks a decoded panoptic map against its (converted) segments; see the module doc."""
    seg_ids = np.array([s["id"] for s in segments], np.int64)
    idx = segment_lookup(ids, seg_ids)
    stray = np.unique(ids[(idx == len(segments)) & (ids != VOID)])
    if stray.size:
        raise BadExampleError(f"{where}: ids {stray[:8].tolist()} in the PNG have no segment in "
                              "segments_info")
    counts = np.bincount(idx.ravel(), minlength=len(segments) + 1)[:-1]
    for s, n in zip(segments, counts.tolist(), strict=True):
        if n == 0 and not info.stuff_under_things:
            raise BadExampleError(f"{where}: segment {s['id']} of segments_info is not in the PNG")
        if s["area"] < n or (s["area"] != n and not info.stuff_under_things):
            raise BadExampleError(f"{where}: segment {s['id']} has JSON area {s['area']} but "
                                  f"{n} pixels in the PNG")


def semantic_from_panoptic(ids: np.ndarray, segments: list[dict]) -> np.ndarray:
    """Semantic map of a panoptic map: int32 [H, W], each segment's training id, else 255.

    Crowd segments are painted too (Mask2Former's `panoptic_semseg` conversion).
    """
    idx = segment_lookup(ids, np.array([s["id"] for s in segments], np.int64))
    table = np.array([s["category_id"] for s in segments] + [IGNORE_INDEX], np.int32)
    return table[idx]


def decode_panoptic(image_bytes: bytes, panoptic_bytes: bytes, segments_info: list[dict],
                    info: DatasetInfo, name: str, label_bytes: bytes | None = None,
                    where: str = "") -> dict:
    """Decodes and validates one panoptic example; returns the dict of the module doc.

    `label_bytes` is the semantic annotation (None: derived from the panoptic PNG). `where`
    prefixes error messages (default `name`). Raises BadExampleError naming the file.
    """
    where = where or name
    if label_bytes is None:
        image, label = decode_image(image_bytes, f"{where} (image)"), None
    else:
        pair = decode_pair(image_bytes, label_bytes, info, name, f"{where} (image)",
                           f"{where} (semantic label)")
        image, label = pair["image"], pair["label"]
    ids = read_panoptic_png(panoptic_bytes, f"{where} (panoptic PNG)")
    if ids.shape != image.shape[:2]:
        raise BadExampleError(f"{where} (panoptic PNG): size {ids.shape} != image size "
                              f"{image.shape[:2]}")
    segments = convert_segments(segments_info, info, f"{where} (segments_info)")
    check_panoptic(ids, segments, info, f"{where} (panoptic PNG vs segments_info)")
    if label is None:
        label = semantic_from_panoptic(ids, segments)
    return {"image": image, "label": label, "panoptic": ids, "segments_info": segments,
            "name": name}


# --------------------------------------------------------------------------- folder layout


def load_panoptic_json(path: str | os.PathLike, info: DatasetInfo) -> dict:
    """Reads a COCO-panoptic JSON and checks its categories; returns the parsed dict."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: panoptic JSON not found")
    try:
        doc = json.loads(path.read_text())
        categories = doc["categories"]
        if not isinstance(doc["annotations"], list):
            raise TypeError("'annotations' is not a list")
    except (ValueError, KeyError, TypeError) as e:
        raise BadExampleError(f"{path}: not a COCO-panoptic JSON ({e!r})") from e
    check_categories(categories, info, str(path))
    return doc


def list_panoptic(root: str | os.PathLike, info: DatasetInfo, split: str) -> list[dict]:
    """Lists a split of a panoptic dataset in its layout, in JSON annotation order.

    Returns [{'image', 'panoptic', 'label' (path or ''), 'name', 'segments_info' (raw)}].
    The image of annotation `file_name` x.png is `x.jpg` in the image folder (detectron2's
    `load_coco_panoptic_json` rule). Raises BadExampleError naming the first missing file,
    repeated annotation, or image without an annotation; FileNotFoundError for a missing
    folder/JSON.
    """
    root, s = pathlib.Path(root), info.split(split)
    img_dir, pan_dir = root / s.image_dir, root / s.panoptic_dir
    for d in (img_dir, pan_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: folder of split {split!r} not found")
    doc = load_panoptic_json(root / s.panoptic_json, info)
    out, names = [], set()
    for ann in doc["annotations"]:
        stem = os.path.splitext(ann["file_name"])[0]
        if stem in names:
            raise BadExampleError(f"{root / s.panoptic_json}: two annotations for {stem!r}")
        names.add(stem)
        ex = {"image": str(img_dir / (stem + info.image_suffix)),
              "panoptic": str(pan_dir / ann["file_name"]),
              "label": str(root / s.label_dir / (stem + info.label_suffix)) if s.label_dir
              else "", "name": stem, "segments_info": ann["segments_info"]}
        for key in ("image", "panoptic", "label"):
            if ex[key] and not os.path.isfile(ex[key]):
                raise BadExampleError(f"{ex[key]}: missing {key} file of {stem!r}")
        out.append(ex)
    for p in sorted(img_dir.iterdir()):
        if p.name.endswith(info.image_suffix) and p.name[: -len(info.image_suffix)] not in names:
            raise BadExampleError(f"{p}: image without an annotation in "
                                  f"{root / s.panoptic_json}")
    if not out:
        raise FileNotFoundError(f"{root / s.panoptic_json}: no annotations for split {split!r}")
    return out


class PanopticFolderSource:
    """Random access over a panoptic dataset's folder layout; `src[i]` decodes example i."""

    def __init__(self, root: str | os.PathLike, info: DatasetInfo, split: str):
        self.info = info
        self.examples = list_panoptic(root, info, split)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        ex = self.examples[index]
        read = lambda key: pathlib.Path(ex[key]).read_bytes() if ex[key] else None  # noqa: E731
        return decode_panoptic(read("image"), read("panoptic"), ex["segments_info"], self.info,
                               ex["name"], read("label"), where=ex["panoptic"])

    def __repr__(self) -> str:
        return f"PanopticFolderSource({self.info.name}, {len(self)} examples)"


class PanopticArrayRecordSource:
    """Random access over a panoptic dataset prepared by `prepare_panoptic` (TFDS ArrayRecord).

    Features: 'image' (original bytes), 'panoptic' (original PNG bytes), 'label' (semantic PNG,
    only when the split has a label folder), 'segments_info' (the JSON list as text), 'name'.
    They go through the same `decode_panoptic` as the folder files.
    """

    def __init__(self, root: str | os.PathLike, info: DatasetInfo, split: str):
        import tensorflow_datasets as tfds

        meta = read_metadata(root)
        where = pathlib.Path(root) / "metadata.json"
        if meta["dataset"] != info.name:
            raise ValueError(f"{where}: prepared for {meta['dataset']!r}, not {info.name!r}")
        if split not in meta["splits"]:
            raise KeyError(f"{where}: no split {split!r}; known: {sorted(meta['splits'])}")
        self.info = info
        skip = tfds.decode.SkipDecoding()
        self._records = tfds.data_source(
            f"{meta['tfds']['builder']}:{meta['tfds']['version']}", split=split,
            data_dir=str(root), decoders={k: skip for k in ("image", "panoptic", "label")
                                          if k in meta["tfds"]["features"]})

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict:
        ex = self._records[index]
        name = ex["name"].decode("utf-8")
        segments = json.loads(ex["segments_info"].decode("utf-8"))
        return decode_panoptic(ex["image"], ex["panoptic"], segments, self.info, name,
                               ex.get("label"), where=f"{name} (example {index})")

    def __repr__(self) -> str:
        return f"PanopticArrayRecordSource({self.info.name}, {len(self)} examples)"
