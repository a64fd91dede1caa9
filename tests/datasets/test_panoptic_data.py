"""Panoptic datasets: registry entries, COCO-panoptic encoding, the ADE20K-panoptic (Mask2Former
preparation) and COCO-panoptic layouts, TFDS preparation, and the named errors for bad input."""

import json

import data_layouts as dl
import numpy as np
import pytest
from PIL import Image

from data.prepare import main as prepare_main
from rankseg_jax.data import registry
from rankseg_jax.data.panoptic import (
    PanopticArrayRecordSource,
    PanopticFolderSource,
    id2rgb,
    read_panoptic_png,
    rgb2id,
)
from rankseg_jax.data.prepare_panoptic import prepare_panoptic
from rankseg_jax.data.sources import BadExampleError

HW = (24, 40)


def test_registry_entries():
    ade, coco = (registry.get_dataset_info(n) for n in ("ade20k_panoptic", "coco_panoptic"))
    assert registry.PANOPTIC_DATASETS == ("ade20k_panoptic", "coco_panoptic")
    assert ade.num_classes == 150 and len(ade.thing_classes) == 100 and ade.stuff_under_things
    assert ade.category_ids == tuple(range(150)) and ade.class_names[7] == "bed"
    assert [c for c in range(12) if c in ade.thing_classes] == [7, 8, 10]  # bed, window, cabinet
    assert coco.num_classes == 133 and coco.thing_classes == tuple(range(80))
    assert (coco.category_ids[0], coco.category_ids[79], coco.category_ids[80],
            coco.category_ids[-1]) == (1, 90, 92, 200)
    assert coco.class_names[80] == "banner" and tuple(coco.palette[0]) == (220, 20, 60)
    assert not coco.stuff_under_things and not registry.get_dataset_info("ade20k").is_panoptic
    assert ade.split("val").panoptic_json == "ade20k_panoptic_val.json"


def test_rgb_id_roundtrip():
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 0x123456, (1 << 24) - 1]])
    rgb = id2rgb(ids)
    assert rgb.dtype == np.uint8 and tuple(rgb[1, 2]) == (0x56, 0x34, 0x12)
    np.testing.assert_array_equal(rgb2id(rgb), ids)
    with pytest.raises(ValueError):
        id2rgb(np.array([[1 << 24]]))


# --------------------------------------------------------------------------- layouts


def example(info, seed):
    """(id map, raw segments_info, training-id semantic map) of one image.

    Left: stuff A; right top: stuff B; right bottom: two instances of thing class T and (COCO) a
    crowd of T; column 20 is VOID. ADE20K's quirk: A's JSON area counts the pixels that thing 1
    took over, and a stuff segment C lies entirely under the things (JSON only).
    """
    stuff = [c for c in range(info.num_classes) if c not in info.thing_classes]
    a, b, c, t = stuff[seed % 3], stuff[3], stuff[4], info.thing_classes[seed % 2]
    ids = np.zeros(HW, np.int64)
    ids[:, :20] = 0x010203
    ids[:12, 21:] = 77
    ids[12:, 21:30] = 5000 + seed
    ids[12:, 30:] = 6000
    ids[10:14, 14:20] = 5000 + seed  # thing 1 covers part of stuff A
    sem = np.full(HW, 255, np.int32)
    segs = [(0x010203, a, 0), (77, b, 0), (5000 + seed, t, 0), (6000, t, 0)]
    crowd = not info.stuff_under_things
    if crowd:
        ids[20:, 30:] = 9
        segs.append((9, t, 1))
    out = []
    for sid, cls, iscrowd in segs:
        m = ids == sid
        ys, xs = np.nonzero(m)
        area = int(m.sum()) + (24 if info.stuff_under_things and sid == 0x010203 else 0)
        out.append({"id": sid, "category_id": info.category_ids[cls], "area": area,
                    "iscrowd": iscrowd, "bbox": [int(xs.min()), int(ys.min()),
                                                 int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]})
        sem[m] = cls
    if info.stuff_under_things:
        out.insert(2, {"id": 4242, "category_id": info.category_ids[c], "area": 7,
                       "iscrowd": 0, "bbox": [0, 0, 1, 1]})
    return ids, out, sem


def write_layout(root, name, n=2):
    info = registry.get_dataset_info(name)
    cats = [{"id": cid, "name": info.class_names[i], "isthing": int(i in info.thing_classes),
             "color": info.palette[i].tolist()} for i, cid in enumerate(info.category_ids)]
    truth = {}
    for split, s in info.splits:
        anns = []
        for i in range(n):
            stem = f"{split}_{i:03d}"
            ids, segs, sem = example(info, i)
            dl.write_image(root / s.image_dir / f"{stem}.jpg", dl.image(HW, seed=i))
            (root / s.panoptic_dir).mkdir(parents=True, exist_ok=True)
            Image.fromarray(id2rgb(ids), mode="RGB").save(root / s.panoptic_dir / f"{stem}.png")
            if s.label_dir:  # ADE20K semantic annotation: raw = class + 1, 0 = other
                dl.write_label(root / s.label_dir / f"{stem}.png",
                               np.where(sem == 255, 0, sem + 1), "png8")
            anns.append({"image_id": stem, "file_name": f"{stem}.png", "segments_info": segs})
            truth[stem] = (ids, segs, sem)
        (root / s.panoptic_json).parent.mkdir(parents=True, exist_ok=True)
        (root / s.panoptic_json).write_text(json.dumps(
            {"images": [{"id": a["image_id"], "file_name": a["image_id"] + ".jpg"}
                        for a in anns], "annotations": anns, "categories": cats}))
    return info, truth


@pytest.mark.parametrize("name", ["ade20k_panoptic", "coco_panoptic"])
def test_folder_layout_decodes(tmp_path, name):
    info, truth = write_layout(tmp_path, name)
    index = {cid: i for i, cid in enumerate(info.category_ids)}
    for split in ("train", "val"):
        src = PanopticFolderSource(tmp_path, info, split)
        assert len(src) == 2
        for i in range(2):
            ex = src[i]
            ids, segs, sem = truth[ex["name"]]
            assert ex["name"] == f"{split}_{i:03d}"
            np.testing.assert_array_equal(ex["panoptic"], ids)
            # ADE20K: the semantic annotation; COCO: painted from the segments, crowd included.
            np.testing.assert_array_equal(ex["label"], sem)
            assert np.abs(ex["image"].mean((0, 1)) - dl.RGB).max() < 4
            assert [(s["id"], s["category_id"], s["iscrowd"], s["area"]) for s in
                    ex["segments_info"]] == [(s["id"], index[s["category_id"]], s["iscrowd"],
                                              s["area"]) for s in segs]
            assert all(s["isthing"] == (s["category_id"] in info.thing_classes)
                       for s in ex["segments_info"])
    if name == "coco_panoptic":  # contiguous mapping of non-contiguous COCO ids
        assert {s["category_id"] for s in src[1]["segments_info"]} >= {1, 83}


@pytest.mark.parametrize("name", ["ade20k_panoptic", "coco_panoptic"])
def test_prepared_equals_folder(tmp_path, name):
    info, _ = write_layout(tmp_path / "src", name)
    out = tmp_path / "out"
    assert prepare_main([f"--dataset={name}", f"--src={tmp_path / 'src'}", f"--out={out}"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["tfds"]["builder"] == f"rankseg_{name}"
    assert meta["panoptic"]["thing_classes"] == list(info.thing_classes)
    ade = name == "ade20k_panoptic"
    assert meta["splits"]["val"]["segments_absent_from_png"] == (2 if ade else 0)
    assert ("label" in meta["tfds"]["features"]) == ade
    assert len(meta["splits"]["train"]["sha256"]) == (6 if ade else 4)
    for split in ("train", "val"):
        folder = PanopticFolderSource(tmp_path / "src", info, split)
        prepared = PanopticArrayRecordSource(out, info, split)
        assert len(prepared) == 2
        for i in range(2):
            a, b = folder[i], prepared[i]
            assert a["name"] == b["name"] and a["segments_info"] == b["segments_info"]
            for key in ("image", "label", "panoptic"):
                np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(ValueError, match=f"prepared for '{name}'"):
        other = "coco_panoptic" if ade else "ade20k_panoptic"
        PanopticArrayRecordSource(out, registry.get_dataset_info(other), "train")


# --------------------------------------------------------------------------- bad input


def rewrite_json(root, info, split, edit):
    path = root / info.split(split).panoptic_json
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def first_segments(doc):
    return doc["annotations"][0]["segments_info"]


@pytest.mark.parametrize("name,edit,match", [
    ("coco_panoptic", lambda d: first_segments(d).pop(1), r"ids \[77\] in the PNG have no "),
    ("coco_panoptic", lambda d: first_segments(d).append(
        {"id": 31, "category_id": 1, "area": 0, "iscrowd": 0}), "segment 31 .* not in the PNG"),
    ("coco_panoptic", lambda d: first_segments(d)[1].update(area=229),
     "segment 77 has JSON area 229 but 228 pixels"),
    ("ade20k_panoptic", lambda d: first_segments(d)[1].update(area=227),
     "segment 77 has JSON area 227 but 228 pixels"),
    ("coco_panoptic", lambda d: first_segments(d)[0].update(category_id=91),
     "unknown category_id 91"),
    ("coco_panoptic", lambda d: first_segments(d)[0].update(id=77), "77 is 0, out of range or"),
    ("coco_panoptic", lambda d: first_segments(d)[0].update(iscrowd=2), "iscrowd=2"),
])
def test_bad_annotations(tmp_path, name, edit, match):
    info, _ = write_layout(tmp_path, name)
    rewrite_json(tmp_path, info, "train", edit)
    src = PanopticFolderSource(tmp_path, info, "train")
    src[1]  # the other example still loads
    with pytest.raises(BadExampleError, match=match):
        src[0]
    out = tmp_path / "out"
    with pytest.raises(BadExampleError, match="train_000.png"):
        prepare_panoptic(name, str(tmp_path), str(out))
    assert not (out / "metadata.json").exists() and not list(out.rglob("*.array_record*"))


def test_bad_files_and_layout(tmp_path):
    info, _ = write_layout(tmp_path, "coco_panoptic")
    pan = tmp_path / "panoptic_val2017"
    (pan / "val_001.png").unlink()
    with pytest.raises(BadExampleError, match="val_001.png: missing panoptic file"):
        PanopticFolderSource(tmp_path, info, "val")
    assert prepare_main(["--dataset=coco_panoptic", f"--src={tmp_path}",
                         f"--out={tmp_path / 'o'}"]) == 1
    # Size mismatch and a non-RGB PNG.
    Image.fromarray(id2rgb(np.ones((24, 41), np.int64)), "RGB").save(pan / "val_001.png")
    with pytest.raises(BadExampleError, match="val_001.png.*size"):
        PanopticFolderSource(tmp_path, info, "val")[1]
    Image.fromarray(np.ones(HW, np.uint8), "L").save(pan / "val_001.png")
    with pytest.raises(BadExampleError, match="mode 'L', expected RGB"):
        read_panoptic_png((pan / "val_001.png").read_bytes(), "x.png")
    # An image without an annotation, a repeated annotation, foreign categories.
    dl.write_image(tmp_path / "train2017/extra.jpg", dl.image(HW))
    with pytest.raises(BadExampleError, match="extra.jpg: image without an annotation"):
        PanopticFolderSource(tmp_path, info, "train")
    (tmp_path / "train2017/extra.jpg").unlink()
    rewrite_json(tmp_path, info, "train", lambda d: d["annotations"].append(d["annotations"][0]))
    with pytest.raises(BadExampleError, match="two annotations for 'train_000'"):
        PanopticFolderSource(tmp_path, info, "train")
    rewrite_json(tmp_path, info, "train", lambda d: d["categories"].pop(3))
    with pytest.raises(BadExampleError, match="categories .* differ"):
        PanopticFolderSource(tmp_path, info, "train")
    rewrite_json(tmp_path, info, "val", lambda d: d["categories"][0].update(isthing=0))
    with pytest.raises(BadExampleError, match="thing categories differ"):
        PanopticFolderSource(tmp_path, info, "val")
