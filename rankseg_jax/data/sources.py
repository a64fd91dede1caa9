"""Random-access sources: index -> {'image': uint8 [H,W,3] RGB, 'label': int32 [H,W], 'name': str}.

Labels come out in training ids (0..K-1) with the dataset's ignore value (255 or -1), i.e.
`reduce_zero_label` and the int16 reading of 16-bit files are applied here, once, exactly as
mmseg 0.17 `LoadAnnotations` does. Nothing downstream converts labels again.

Images are decoded by `decode.decode_image`, the one decoder of the project (cv2 as mmcv does,
EXIF orientation applied, truncated and corrupt files refused, trailing bytes accepted), and
come out RGB. The photometric ops in `transforms.py` are colour-order independent
(brightness/contrast act per channel alike, saturation/hue go through cv2's HSV, which gives
the same HSV from RGB as from BGR), so they match mmseg numerically on the RGB array. Labels
are read with Pillow and never rotated (mmseg reads them with flag 'unchanged').

Two sources:
  * `FolderSource`: the mmseg folder layouts users have on disk (see `datasets.py` splits).
  * `ArrayRecordSource`: a dataset prepared by `data/prepare.py`, a TFDS dataset (ArrayRecord
    files) read through `tfds.data_source` without TensorFlow. Its features are 'image' (the
    original image file bytes), 'label' (a PNG of the raw label values: the original PNG, or a
    lossless PNG re-encoding of 16-bit TIFFs and palette PNGs) and 'name'. Both are read back
    undecoded (`SkipDecoding`) and go through the same `decode_pair` as the folder files, so
    both sources give identical examples and there is one label-conversion path.

Bad input raises `BadExampleError`, whose message names the file and the problem.
"""

from __future__ import annotations

import io
import json
import os
import pathlib

import numpy as np
from PIL import Image

from rankseg_jax.data.decode import PNG_MAGIC, BadExampleError, check_complete, decode_image
from rankseg_jax.data.registry import DatasetInfo

# Prepared datasets: TFDS builder `rankseg_<dataset>` at this version, under `data.root`.
TFDS_VERSION = "1.0.0"


def tfds_builder_name(dataset: str) -> str:
    """Returns the TFDS builder name of a prepared dataset, e.g. 'rankseg_ade20k'."""
    return f"rankseg_{dataset}"


# --------------------------------------------------------------------------- decoding


def _read_raw_label(data: bytes, info: DatasetInfo, where: str) -> np.ndarray:
    """Decodes label bytes in the dataset's format; returns the raw array (uint8 or int16).

    A 'tiff16' dataset's labels are TIFF in the folder layout and 16-bit PNG once prepared.
    """
    check_complete(data, where)
    try:
        if info.label_format == "tiff16" and not data.startswith(PNG_MAGIC):
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


def label_png(data: bytes, info: DatasetInfo, where: str) -> bytes:
    """Returns the label as PNG bytes holding exactly its raw values, for prepared datasets.

    A non-palette PNG is returned unchanged; a palette PNG is re-encoded as its indices (mode
    L) and a 16-bit TIFF as a 16-bit PNG of the same bits (int16 -1 stays 65535), both
    losslessly, so `_read_raw_label` reads the same raw array from the result as from `data`.
    """
    raw = _read_raw_label(data, info, where)
    if data.startswith(PNG_MAGIC):
        with Image.open(io.BytesIO(data)) as im:
            if im.mode != "P":
                return data
    buf = io.BytesIO()
    Image.fromarray(raw.view(np.uint16) if raw.dtype == np.int16 else raw).save(buf, "PNG")
    return buf.getvalue()


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


def decode_label(data: bytes, info: DatasetInfo, where: str) -> np.ndarray:
    """Decodes label file bytes into training ids: int32 [H, W] in [0, K) or the ignore value.

    Raises BadExampleError naming `where` on any defect (format, bit depth, values).
    """
    label = to_train_ids(_read_raw_label(data, info, where), info)
    check_label(label, info, where)
    return label


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
                              f"{image.shape[:2]} of {image_where or name} (an image is "
                              "decoded with its EXIF orientation applied, a label never)")
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


# --------------------------------------------------------------------------- prepared (TFDS)


def read_metadata(root: str | os.PathLike) -> dict:
    """Returns the metadata.json of a dataset prepared by `data/prepare.py` in `root`."""
    from rankseg_jax import paths  # local or cloud (gs://...) root

    meta_path = paths.as_path(root, "data.root") / "metadata.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not a prepared dataset (run python -m data.prepare)")
    meta = json.loads(meta_path.read_text())
    if "tfds" not in meta:
        raise ValueError(f"{meta_path}: not a TFDS dataset (an older data.prepare wrote it); "
                         "run python -m data.prepare again")
    return meta


class ArrayRecordSource:
    """Random access over a prepared TFDS dataset (module doc); `src[i]` decodes example i.

    Reads with `tfds.data_source` (no TensorFlow); the reader pickles, so grain worker
    processes can use it. Example i is pair i of the split's listing (TFDS shuffling is off).
    """

    def __init__(self, root: str | os.PathLike, info: DatasetInfo, split: str):
        import tensorflow_datasets as tfds

        meta = read_metadata(root)
        where = f"{os.fspath(root).rstrip('/')}/metadata.json"
        if meta["dataset"] != info.name:
            raise ValueError(f"{where}: prepared for {meta['dataset']!r}, not {info.name!r}")
        if split not in meta["splits"]:
            raise KeyError(f"{where}: no split {split!r}; known: {sorted(meta['splits'])}")
        self.info = info
        skip = tfds.decode.SkipDecoding()
        self._records = tfds.data_source(
            f"{meta['tfds']['builder']}:{meta['tfds']['version']}", split=split,
            data_dir=str(root), decoders={"image": skip, "label": skip})

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict:
        ex = self._records[index]
        name = ex["name"].decode("utf-8")
        return decode_pair(ex["image"], ex["label"], self.info, name,
                           f"{name} (image, example {index})", f"{name} (label, example {index})")

    def __repr__(self) -> str:
        return f"ArrayRecordSource({self.info.name}, {len(self)} examples)"
