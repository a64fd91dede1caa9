"""Writes tiny datasets in the real on-disk layouts (real JPEG/PNG/TIFF files) for the data tests.

Every image is a constant colour (R, G, B) = (200, 60, 20) with mild texture so JPEG keeps the
channel order testable; every label holds the raw values listed in RAW_VALUES so the tests can
check the conversion to training ids value by value.
"""

from __future__ import annotations

import pathlib

import cv2
import numpy as np
import tifffile
from PIL import Image

from rankseg_jax.data.registry import get_dataset_info

RGB = (200, 60, 20)

# Raw label values written per dataset, and the training ids mmseg turns them into.
RAW_VALUES = {
    "ade20k": ([0, 1, 7, 150, 255], [255, 0, 6, 149, 255]),
    "coco_stuff10k": ([0, 1, 100, 171, 255], [255, 0, 99, 170, 255]),
    "coco_stuff164k": ([0, 5, 170, 255], [0, 5, 170, 255]),
    "pascal_context60": ([0, 1, 59, 255], [0, 1, 59, 255]),
    "pascal_context59": ([0, 1, 59, 255], [255, 0, 58, 255]),
    "ade20k_full": ([0, 1, 300, 846, 65535], [0, 1, 300, 846, -1]),
    "coco_lvis": ([0, 1, 300, 1284, 65535], [-1, 0, 299, 1283, -1]),
}


def raw_label(name: str, hw=(24, 40)) -> np.ndarray:
    """A raw label [H,W] made of vertical bands of RAW_VALUES[name][0] (uint8 or uint16)."""
    info = get_dataset_info(name)
    values = RAW_VALUES[name][0]
    dtype = np.uint16 if info.label_bits == 16 else np.uint8
    cols = np.array(values, dtype)[np.arange(hw[1]) * len(values) // hw[1]]
    return np.broadcast_to(cols, hw).copy()


def expected_ids(name: str, hw=(24, 40)) -> np.ndarray:
    """The int32 training ids that `raw_label(name, hw)` must convert to."""
    values = RAW_VALUES[name][1]
    cols = np.array(values, np.int32)[np.arange(hw[1]) * len(values) // hw[1]]
    return np.broadcast_to(cols, hw).copy()


def image(hw=(24, 40), seed=0) -> np.ndarray:
    """uint8 RGB [H,W,3] near RGB with +-3 noise."""
    rng = np.random.default_rng(seed)
    img = np.array(RGB, np.int32) + rng.integers(-3, 4, (*hw, 3))
    return img.astype(np.uint8)


def write_image(path: pathlib.Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 98])


def write_label(path: pathlib.Path, label: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "tiff16":
        tifffile.imwrite(str(path), label)
    elif fmt == "png16":
        cv2.imwrite(str(path), label.astype(np.uint16))
    else:
        Image.fromarray(label.astype(np.uint8), mode="L").save(path)


def write_dataset(root: pathlib.Path, name: str, n_per_split=2, hw=(24, 40)) -> pathlib.Path:
    """Writes `n_per_split` pairs per split of dataset `name` under root in its mmseg layout.

    Returns root. Images of split s, index i are named f"{s}_{i:03d}" (+ suffixes).
    """
    info = get_dataset_info(name)
    for split, s in info.splits:
        names = [f"{split}_{i:03d}" for i in range(n_per_split)]
        for i, stem in enumerate(names):
            write_image(root / s.image_dir / (stem + info.image_suffix), image(hw, seed=i))
            write_label(root / s.label_dir / (stem + info.label_suffix), raw_label(name, hw),
                        info.label_format)
        if s.list_file:
            lst = root / s.list_file
            lst.parent.mkdir(parents=True, exist_ok=True)
            # PASCAL-Context train/val share JPEGImages: append so both lists see their files.
            with open(lst, "a") as f:
                f.write("".join(n + "\n" for n in names))
    return root
