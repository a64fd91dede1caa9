"""Random-access sources: index -> {'image': uint8 [H,W,3] RGB, 'label': int32 [H,W], 'name': str}.

Labels come out in training ids (0..K-1) with the dataset's ignore value (255 or -1), i.e.
`reduce_zero_label` and the int16 reading of 16-bit files are applied here, once, exactly as
mmseg 0.17 does (official_spec.md §8). Nothing downstream converts labels again.

Images are decoded with cv2 (as mmcv does, BGR) and flipped to RGB here. The photometric ops in
`transforms.py` are colour-order independent (brightness/contrast act per channel alike,
saturation/hue go through cv2's HSV, which gives the same HSV from RGB as from BGR), so they
match mmseg numerically on the RGB array.

Two sources:
  * `FolderSource`: the mmseg folder layouts users have on disk (see `datasets.py` splits).
  * `ArrayRecordSource`: shards written by `data/prepare.py`. Record schema (version 1):
        uint32 little-endian n | n bytes UTF-8 JSON header | image bytes | label bytes
    header = {"v": 1, "name": str, "image_len": int, "label_len": int}. The image and label
    bytes are the *original files* (JPEG/PNG/TIFF), so both sources share one decoder and the
    stored data can be checksummed against the download. Reading needs no TensorFlow.

Bad input raises `BadExampleError`, whose message names the file and the problem.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import struct

import cv2
import numpy as np
from PIL import Image

from rankseg_jax.datasets import DatasetInfo

RECORD_VERSION = 1


class BadExampleError(ValueError):
    """An image/label pair that cannot be used; the message names the file."""


# --------------------------------------------------------------------------- decoding


def _check_not_truncated(data: bytes, where: str) -> None:
    # libjpeg/libpng decode truncated files with a warning and grey fill; catch them by their
    # missing end marker so a cut-off download never becomes a silently wrong sample.
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-1024:]:
        raise BadExampleError(f"{where}: truncated JPEG (no end-of-image marker)")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-64:]:
        raise BadExampleError(f"{where}: truncated PNG (no IEND chunk)")


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decodes JPEG/PNG bytes with cv2 (mmcv's 'color' flag); returns uint8 [H,W,3] RGB."""
    _check_not_truncated(data, where)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise BadExampleError(f"{where}: not a decodable image")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _read_raw_label(data: bytes, info: DatasetInfo, where: str) -> np.ndarray:
    """Decodes label bytes in the dataset's format; returns the raw array (uint8 or int16)."""
    _check_not_truncated(data, where)
    try:
        if info.label_format == "tiff16":
            import tifffile  # only the 16-bit TIFF datasets need it

            raw = tifffile.imread(io.BytesIO(data))
        else:
            with Image.open(io.BytesIO(data)) as im:
                mode = im.mode
                raw = np.array(im)
            if info.label_format == "png8" and mode not in ("L", "P"):
                raise BadExampleError(f"{where}: label PNG mode {mode!r}, expected 8-bit L/P")
    except BadExampleError:
        raise
    except Exception as e:  # PIL/tifffile raise many types for corrupt files
        raise BadExampleError(f"{where}: cannot decode label ({e})") from e
    if raw.ndim != 2:
        raise BadExampleError(f"{where}: label has shape {raw.shape}, expected [H, W]")
    if info.label_bits == 8 and raw.dtype != np.uint8:
        raise BadExampleError(f"{where}: label dtype {raw.dtype}, expected 8-bit")
    if info.label_bits == 16:
        if raw.dtype not in (np.uint16, np.int16):
            raise BadExampleError(f"{where}: label dtype {raw.dtype}, expected 16-bit")
        # mmseg reads these files as int16: 65535 becomes -1 (the ignore value).
        raw = raw.view(np.int16) if raw.dtype == np.uint16 else raw
    return raw


def to_train_ids(raw: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """Applies mmseg's label conversion. Takes uint8/int16 [H,W]; returns int32 [H,W].

    uint8 + reduce_zero_label: 0 -> 255, label - 1, 254 -> 255 (so raw 255 stays 255).
    int16 + reduce_zero_label: label - 1, -2 -> -1 (so raw 0 and raw -1 both become -1).
    """
    label = raw.astype(np.int32)
    if info.reduce_zero_label:
        if info.label_bits == 8:
            label[label == 0] = 255
            label -= 1
            label[label == 254] = 255
        else:
            label -= 1
            label[label == -2] = -1
    return label


def check_label(label: np.ndarray, info: DatasetInfo, where: str) -> None:
    """Raises BadExampleError naming `where` if a value is outside [0, K) and not ignore."""
    bad = (label < 0) | (label >= info.num_classes)
    bad &= label != info.ignore_index
    if bad.any():
        values = np.unique(label[bad])[:8].tolist()
        raise BadExampleError(
            f"{where}: label values {values} outside [0, {info.num_classes}) after conversion "
            f"(ignore value {info.ignore_index}, reduce_zero_label={info.reduce_zero_label})")


def decode_pair(image_bytes: bytes, label_bytes: bytes, info: DatasetInfo, name: str,
                image_where: str = "", label_where: str = "") -> dict:
    """Decodes and validates one pair.

    Returns {'image': uint8 [H,W,3] RGB, 'label': int32 [H,W] training ids, 'name': str}.
    Raises BadExampleError naming the file on any defect.
    """
    image = decode_image(image_bytes, image_where or name)
    label = to_train_ids(_read_raw_label(label_bytes, info, label_where or name), info)
    if label.shape != image.shape[:2]:
        raise BadExampleError(f"{label_where or name}: label size {label.shape} != image size "
                              f"{image.shape[:2]} of {image_where or name}")
    check_label(label, info, label_where or name)
    return {"image": image, "label": label, "name": name}


# --------------------------------------------------------------------------- folder layout


def list_pairs(root: str | os.PathLike, info: DatasetInfo,
               split: str) -> list[tuple[str, str, str]]:
    """Lists the (image path, label path, name) pairs of a split in its mmseg layout.

    Uses the split's list file when it has one, else every `*{image_suffix}` in the image
    folder. Raises BadExampleError naming the first missing file (image or label).
    """
    root = pathlib.Path(root)
    s = info.split(split)
    img_dir, ann_dir = root / s.image_dir, root / s.label_dir
    if not img_dir.is_dir():
        raise FileNotFoundError(f"{img_dir}: image folder of split {split!r} not found")
    if s.list_file:
        list_path = root / s.list_file
        if not list_path.is_file():
            raise FileNotFoundError(f"{list_path}: split list not found")
        names = [ln.strip() for ln in list_path.read_text().splitlines() if ln.strip()]
    else:
        names = sorted(p.name[: -len(info.image_suffix)] for p in img_dir.iterdir()
                       if p.name.endswith(info.image_suffix))
        # A label without an image is as much a broken pair as the reverse.
        stems = set(names)
        for p in sorted(ann_dir.iterdir()) if ann_dir.is_dir() else ():
            stem = p.name[: -len(info.label_suffix)]
            if p.name.endswith(info.label_suffix) and stem not in stems:
                raise BadExampleError(
                    f"{p}: label without image {img_dir / (stem + info.image_suffix)}")
    pairs = []
    for name in names:
        img, ann = img_dir / (name + info.image_suffix), ann_dir / (name + info.label_suffix)
        for path in (img, ann):
            if not path.is_file():
                raise BadExampleError(f"{path}: missing file of pair {name!r}")
        pairs.append((str(img), str(ann), name))
    if not pairs:
        raise FileNotFoundError(f"{img_dir}: no '*{info.image_suffix}' images for split {split!r}")
    return pairs


class FolderSource:
    """Random access over an mmseg folder layout; `src[i]` decodes pair i (see module doc)."""

    def __init__(self, root: str | os.PathLike, info: DatasetInfo, split: str):
        self.info = info
        self.pairs = list_pairs(root, info, split)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        img_path, ann_path, name = self.pairs[index]
        with open(img_path, "rb") as f:
            image_bytes = f.read()
        with open(ann_path, "rb") as f:
            label_bytes = f.read()
        return decode_pair(image_bytes, label_bytes, self.info, name, img_path, ann_path)

    def __repr__(self) -> str:
        return f"FolderSource({self.info.name}, {len(self)} pairs)"


# --------------------------------------------------------------------------- ArrayRecord


def encode_record(name: str, image_bytes: bytes, label_bytes: bytes) -> bytes:
    """Packs one pair into the version-1 record (see module doc); returns the record bytes."""
    header = json.dumps({"v": RECORD_VERSION, "name": name, "image_len": len(image_bytes),
                         "label_len": len(label_bytes)}).encode("utf-8")
    return struct.pack("<I", len(header)) + header + image_bytes + label_bytes


def decode_record(record: bytes) -> tuple[str, bytes, bytes]:
    """Unpacks a version-1 record; returns (name, image bytes, label bytes)."""
    (n,) = struct.unpack_from("<I", record, 0)
    header = json.loads(record[4:4 + n].decode("utf-8"))
    if header.get("v") != RECORD_VERSION:
        raise BadExampleError(
            f"record of {header.get('name')!r}: unknown version {header.get('v')}")
    start = 4 + n
    mid = start + header["image_len"]
    end = mid + header["label_len"]
    if end != len(record):
        raise BadExampleError(f"record of {header['name']!r}: length {len(record)} != {end}")
    return header["name"], record[start:mid], record[mid:end]


def shard_paths(root: str | os.PathLike, split: str) -> list[str]:
    """Returns the sorted ArrayRecord shard paths of a prepared split (from metadata.json)."""
    root = pathlib.Path(root)
    meta_path = root / "metadata.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not a prepared dataset (run python -m data.prepare)")
    meta = json.loads(meta_path.read_text())
    if split not in meta["splits"]:
        raise KeyError(f"{meta_path}: no split {split!r}; known: {sorted(meta['splits'])}")
    return [str(root / p) for p in meta["splits"][split]["shards"]]


class ArrayRecordSource:
    """Random access over prepared ArrayRecord shards; `src[i]` decodes record i."""

    def __init__(self, root: str | os.PathLike, info: DatasetInfo, split: str):
        import grain  # grain's reader is picklable, so worker processes can reopen it

        self.info = info
        self.paths = shard_paths(root, split)
        self._records = grain.sources.ArrayRecordDataSource(self.paths)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict:
        name, image_bytes, label_bytes = decode_record(self._records[index])
        return decode_pair(image_bytes, label_bytes, self.info, name,
                           f"{name} (image, record {index})", f"{name} (label, record {index})")

    def __repr__(self) -> str:
        return f"ArrayRecordSource({self.info.name}, {len(self)} records)"
