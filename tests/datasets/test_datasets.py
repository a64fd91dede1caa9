"""Dataset registry, folder and prepared (TFDS ArrayRecord) sources, label conversion and
bad-input errors."""

import hashlib
import io
import json

import cv2
import data_layouts as dl
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data.prepare import main as prepare_main
from data.prepare import prepare
from rankseg_jax.data import registry as datasets
from rankseg_jax.data.sources import (
    ArrayRecordSource,
    BadExampleError,
    FolderSource,
)

REAL = [n for n in datasets.DATASETS
        if n not in datasets.SYNTHETIC_DATASETS and n not in datasets.PANOPTIC_DATASETS]


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name,k,first,last,ignore,reduce", [
    ("ade20k", 150, ("wall", "building", "sky"), ("clock", "flag"), 255, True),
    ("coco_stuff10k", 171, ("person", "bicycle", "car"), ("window-other", "wood"), 255, True),
    ("coco_stuff164k", 171, ("person", "bicycle", "car"), ("window-other", "wood"), 255, False),
    ("pascal_context60", 60, ("background", "aeroplane", "bag"), ("window", "wood"), 255, False),
    ("pascal_context59", 59, ("aeroplane", "bag"), ("window", "wood"), 255, True),
    ("ade20k_full", 847, ("class_0000",), ("class_0846",), -1, False),
    ("coco_lvis", 1284, ("class_0000",), ("class_1283",), -1, True),
])
def test_registry_facts(name, k, first, last, ignore, reduce):
    info = datasets.get_dataset_info(name)
    assert info.num_classes == k == len(info.class_names) == len(set(info.class_names))
    assert info.class_names[:len(first)] == first
    assert info.class_names[-len(last):] == last
    assert info.palette.shape == (k, 3) and info.palette.dtype == np.uint8
    assert (info.ignore_index, info.reduce_zero_label) == (ignore, reduce)


def test_registry_constants():
    ade = datasets.get_dataset_info("ade20k")
    assert ade.mean == ade.std == (127.5,) * 3
    assert datasets.get_dataset_info("coco_stuff10k").mean == (123.675, 116.28, 103.53)
    assert tuple(ade.palette[0]) == (120, 120, 120)  # mmseg's colour (palette repair kept it)
    assert datasets.ADE20K_PALETTE[-1] == (92, 0, 255)
    assert datasets.get_dataset_info("pascal_context60").test_scale == (4160, 520)
    assert datasets.get_dataset_info("ade20k_full").label_format == "tiff16"
    # The generated palette is distinct even for 1284 classes (tests/evaluation/test_visualize).
    assert len({tuple(c) for c in datasets.get_dataset_info("coco_lvis").palette}) == 1284
    assert datasets.get_dataset_info("synthetic", num_classes=7).num_classes == 7
    with pytest.raises(ValueError, match="150 classes"):
        datasets.get_dataset_info("ade20k", num_classes=151)
    with pytest.raises(KeyError):
        datasets.get_dataset_info("cityscapes")


def test_class_names_file(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("".join(f"thing {i}\n" for i in range(847)))
    info = datasets.get_dataset_info("ade20k_full", class_names_file=str(path))
    assert info.class_names[5] == "thing 5"
    path.write_text("a\nb\n")
    with pytest.raises(ValueError, match="names.txt: 2 class names, expected 847"):
        datasets.get_dataset_info("ade20k_full", class_names_file=str(path))


# --------------------------------------------------------------------------- folder layouts


@pytest.mark.parametrize("name", REAL)
def test_folder_layout_labels_and_rgb(tmp_path, name):
    root = dl.write_dataset(tmp_path / name, name)
    info = datasets.get_dataset_info(name)
    for split in ("train", "val"):
        src = FolderSource(root, info, split)
        assert len(src) == 2
        ex = src[1]
        assert ex["name"] == f"{split}_001"
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == (24, 40, 3)
        # RGB order: the written colour is (200, 60, 20); JPEG is close, BGR would be far off.
        assert np.abs(ex["image"].mean((0, 1)) - dl.RGB).max() < 4
        assert ex["label"].dtype == np.int32
        np.testing.assert_array_equal(ex["label"], dl.expected_ids(name))


def test_sixteen_bit_values_survive(tmp_path):
    # 1284 and 846 do not fit in 8 bits: a source reading 8-bit would wrap them.
    for name, value in (("coco_lvis", 1283), ("ade20k_full", 846)):
        root = dl.write_dataset(tmp_path / name, name, n_per_split=1)
        label = FolderSource(root, datasets.get_dataset_info(name), "train")[0]["label"]
        assert value in label and -1 in label


@pytest.mark.parametrize("name", ["coco_lvis", "ade20k_full", "ade20k"])
def test_prepared_roundtrip_and_checksums(tmp_path, name):
    # 16-bit PNG (COCO+LVIS), 16-bit TIFF re-encoded to PNG (ADE20K-Full), 8-bit PNG (ADE20K).
    root = dl.write_dataset(tmp_path / "src", name, n_per_split=3)
    info = datasets.get_dataset_info(name)
    meta_path = prepare(name, str(root), str(tmp_path / "out"))
    meta = json.loads(meta_path.read_text())
    assert meta["tfds"]["builder"] == f"rankseg_{name}"
    assert meta["splits"]["train"]["num_examples"] == 3
    assert len(meta["class_names"]) == len(meta["palette"]) == info.num_classes
    s = info.split("val")
    for rel in (f"{s.image_dir}/val_002{info.image_suffix}",
                f"{s.label_dir}/val_002{info.label_suffix}"):
        assert meta["splits"]["val"]["sha256"][rel] == hashlib.sha256(
            (root / rel).read_bytes()).hexdigest()
    for split in ("train", "val"):
        folder, prepared = FolderSource(root, info, split), ArrayRecordSource(
            tmp_path / "out", info, split)
        assert len(folder) == len(prepared) == 3
        for i in range(3):
            a, b = folder[i], prepared[i]
            assert a["name"] == b["name"] == f"{split}_{i:03d}"
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])
            assert b["label"].dtype == np.int32
    # Plain TFDS decoding (no TensorFlow) sees the raw file values, 65535 included.
    plain = tfds.data_source(f"rankseg_{name}", split="val", data_dir=str(tmp_path / "out"))
    ex = plain[0]
    assert ex["image"].shape == (24, 40, 3) and ex["name"] == b"val_000"
    np.testing.assert_array_equal(ex["label"][:, :, 0], dl.raw_label(name))
    assert not (tmp_path / "out" / "downloads").exists()


def test_prepared_palette_png_and_rebuild(tmp_path):
    # A palette PNG is stored as its indices; preparing again into the same folder rebuilds.
    root, info = _ade(tmp_path)
    im = Image.fromarray(dl.raw_label("ade20k"), mode="L").convert("P")
    im.putpalette([255 - v for v in range(256)] * 3)
    im.save(root / "annotations/training/train_000.png")
    out = tmp_path / "out"
    prepare("ade20k", str(root), str(out), splits=("train",))
    label = tfds.data_source("rankseg_ade20k", split="train", data_dir=str(out))[0]["label"]
    np.testing.assert_array_equal(label[:, :, 0], dl.raw_label("ade20k"))
    Image.fromarray(dl.raw_label("ade20k") * 0 + 1, mode="L").save(
        root / "annotations/training/train_001.png")
    prepare("ade20k", str(root), str(out), splits=("train",))
    np.testing.assert_array_equal(ArrayRecordSource(out, info, "train")[1]["label"], 0)
    with pytest.raises(KeyError, match="no split 'val'"):
        ArrayRecordSource(out, info, "val")
    with pytest.raises(ValueError, match="prepared for 'ade20k'"):
        ArrayRecordSource(out, datasets.get_dataset_info("coco_lvis"), "train")
    with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
        ArrayRecordSource(tmp_path, info, "train")


def test_prepare_writes_nothing_for_a_bad_pair(tmp_path):
    root, _ = _ade(tmp_path)
    label = dl.raw_label("ade20k")
    label[0, 0] = 201
    _png8(root / "annotations/validation/val_001.png", label)
    with pytest.raises(BadExampleError, match=r"val_001.png.*\[200\]"):
        prepare("ade20k", str(root), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "metadata.json").exists()
    assert not list((tmp_path / "out").rglob("*.array_record*"))


# --------------------------------------------------------------------------- bad input


def _ade(tmp_path):
    root = dl.write_dataset(tmp_path / "ade", "ade20k", n_per_split=2)
    return root, datasets.get_dataset_info("ade20k")


def _png8(path, label):
    Image.fromarray(label.astype(np.uint8), mode="L").save(path)


def test_bad_truncated_jpeg(tmp_path):
    root, info = _ade(tmp_path)
    path = root / "images/training/train_001.jpg"
    path.write_bytes(path.read_bytes()[:-200])
    src = FolderSource(root, info, "train")
    src[0]  # the good one still loads
    with pytest.raises(BadExampleError, match="train_001.jpg.*truncated"):
        src[1]
    with pytest.raises(BadExampleError, match="train_001.jpg"):
        prepare("ade20k", str(root), str(tmp_path / "out"))


def test_bad_corrupt_image(tmp_path):
    root, info = _ade(tmp_path)
    (root / "images/training/train_000.jpg").write_bytes(b"this is not a jpeg at all")
    with pytest.raises(BadExampleError, match="train_000.jpg"):
        FolderSource(root, info, "train")[0]


def test_bad_label_value(tmp_path):
    root, info = _ade(tmp_path)
    label = dl.raw_label("ade20k")
    label[3, 3] = 200  # ADE raw ids stop at 150 (255 is allowed: it stays ignore)
    _png8(root / "annotations/training/train_001.png", label)
    with pytest.raises(BadExampleError, match=r"train_001.png.*\[199\] outside \[0, 150\)"):
        FolderSource(root, info, "train")[1]
    assert prepare_main(["--dataset=ade20k", f"--src={root}", f"--out={tmp_path / 'o'}"]) == 1


def test_bad_size_mismatch(tmp_path):
    root, info = _ade(tmp_path)
    _png8(root / "annotations/validation/val_000.png", dl.raw_label("ade20k", (24, 41)))
    with pytest.raises(BadExampleError, match="val_000.png.*size"):
        FolderSource(root, info, "val")[0]


def test_bad_missing_pair(tmp_path):
    root, info = _ade(tmp_path)
    (root / "annotations/training/train_001.png").unlink()
    with pytest.raises(BadExampleError, match="train_001.png: missing"):
        FolderSource(root, info, "train")
    root2 = dl.write_dataset(tmp_path / "ade2", "ade20k", n_per_split=2)
    (root2 / "images/validation/val_000.jpg").unlink()
    with pytest.raises(BadExampleError, match="val_000.png: label without image"):
        FolderSource(root2, info, "val")
    # list-file layouts: a listed name without files
    root3 = dl.write_dataset(tmp_path / "pc", "pascal_context60", n_per_split=1)
    with open(root3 / "ImageSets/SegmentationContext/train.txt", "a") as f:
        f.write("2008_000123\n")
    with pytest.raises(BadExampleError, match="2008_000123.jpg: missing"):
        FolderSource(root3, datasets.get_dataset_info("pascal_context60"), "train")


def test_bad_bit_depth(tmp_path):
    # 16-bit dataset given an 8-bit PNG, and an 8-bit dataset given a 16-bit PNG.
    root = dl.write_dataset(tmp_path / "lvis", "coco_lvis", n_per_split=1)
    _png8(root / "lvis_mask/train2017/train_000.png", np.ones((24, 40)))
    with pytest.raises(BadExampleError, match="train_000.png.*expected 16-bit"):
        FolderSource(root, datasets.get_dataset_info("coco_lvis"), "train")[0]
    root, info = _ade(tmp_path)
    cv2.imwrite(str(root / "annotations/training/train_000.png"),
                np.full((24, 40), 3, np.uint16))
    with pytest.raises(BadExampleError, match="train_000.png.*8-bit"):
        FolderSource(root, info, "train")[0]


def test_int16_wraparound_is_rejected(tmp_path):
    # uint16 40000 reads as int16 -25536: neither a class nor the ignore value.
    root = dl.write_dataset(tmp_path / "full", "ade20k_full", n_per_split=1)
    import tifffile
    tifffile.imwrite(str(root / "train/label/train_000.tif"), np.full((24, 40), 40000, np.uint16))
    with pytest.raises(BadExampleError, match="train_000.tif"):
        FolderSource(root, datasets.get_dataset_info("ade20k_full"), "train")[0]


def test_png_label_is_not_read_as_palette_colours(tmp_path):
    # mmseg reads palette ('P') PNGs as indices; a colour conversion would break labels.
    root, info = _ade(tmp_path)
    im = Image.fromarray(dl.raw_label("ade20k"), mode="L").convert("P")
    im.putpalette(list(range(256)) * 3)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    (root / "annotations/training/train_000.png").write_bytes(buf.getvalue())
    label = FolderSource(root, info, "train")[0]["label"]
    np.testing.assert_array_equal(label, dl.expected_ids("ade20k"))


def test_data_config_values_pass_the_pipeline_checks():
    from rankseg_jax.config import base_config
    from rankseg_jax.data.pipeline import dataset_info

    for name in REAL:
        c = base_config()
        c.data.update(datasets.data_config_values(name))
        c.data.format = "folder"
        c.model.num_classes = datasets.get_dataset_info(name).num_classes
        assert dataset_info(c).name == name
    pc = datasets.data_config_values("pascal_context60")
    assert pc["crop_size"] == (480, 480) and pc["test_scale"] == (4160, 520)
