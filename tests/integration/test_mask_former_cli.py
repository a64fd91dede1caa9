"""main.py --mode=eval / predict for Mask2Former(+RankSeg), end to end in subprocesses:

* official weights: the tiny official RankSeg checkpoint converted by `python -m
  rankseg_jax.convert`, evaluated (mIoU, multi-label metrics) and predicted (semantic and
  panoptic files) through main.py;
* ADE20K panoptic data in the exact folder layout of Mask2Former's preparation (images/,
  annotations/, ade20k_panoptic_val/ PNGs + ade20k_panoptic_val.json, 150 classes, JSON stuff
  areas above the pixel counts): a K = 150 tiny model (random weights, config.json beside its
  params) evaluated through main.py; its PQ equals the panopticapi port's `pq_compute` on the
  prediction files main.py wrote and the dataset's own GT files.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # subprocesses: conversion, compilation

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "official_mask2former"


def _run(*args, timeout=900):
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def test_convert_eval_predict_official_weights(tmp_path):
    pytest.importorskip("torch")
    cfg = tmp_path / "tiny_m2f.py"
    cfg.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from helpers import mask2former_fixture_config\n\n"
        "def get_config():\n    return mask2former_fixture_config('pan_rankseg')\n")
    params = tmp_path / "params"
    _run("-m", "rankseg_jax.convert", f"--config={cfg}", f"--src={FIX / 'rankseg.pth'}",
         f"--out={params}")
    work = tmp_path / "work"
    log = _run("main.py", f"--config={cfg}", "--mode=eval", f"--checkpoint={params}",
               f"--workdir={work}")
    report = json.loads((work / "eval_val.json").read_text())
    assert 0.0 <= report["mIoU"] <= 1.0 and report["extra"]["num_images"] == 2
    assert 0.0 < report["extra"]["multilabel"]["img_AP"] <= 1.0
    assert "has no panoptic annotations: PQ is not computed" in log  # semantic synthetic data
    images = tmp_path / "images"
    images.mkdir()
    inputs = np.load(FIX / "inputs.npz")
    for b in range(2):
        Image.fromarray(inputs[f"image.img{b}"].transpose(1, 2, 0)).save(images / f"i{b}.png")
    out = tmp_path / "pred"
    _run("main.py", f"--config={cfg}", "--mode=predict", f"--checkpoint={params}",
         f"--input={images}", f"--output={out}")
    names = {p.name for p in out.iterdir()}
    for b in range(2):
        assert {f"i{b}_labels.png", f"i{b}_panel.png", f"i{b}_scores.png",
                f"i{b}_panoptic.png"} <= names
        assert (out / "panoptic" / f"i{b}.png").is_file()
    doc = json.loads((out / "panoptic.json").read_text())
    assert [a["image_id"] for a in doc["annotations"]] == ["i0", "i1"]


def _write_ade20k_panoptic(root: pathlib.Path, n: int = 3):
    """A val split in the layout of Mask2Former's `prepare_ade20k_pan_seg.py` output, made
    from synthetic panoptic scenes (4 thing and 4 stuff classes mapped to ADE20K's)."""
    from rankseg_jax.data import registry
    from rankseg_jax.data.panoptic import encode_panoptic_png
    from rankseg_jax.data.synthetic_panoptic import SyntheticPanopticSource

    info = registry.get_dataset_info("ade20k_panoptic")
    things = list(info.thing_classes[:4])
    stuff = [c for c in range(150) if c not in info.thing_classes][:4]
    to_ade = np.array(things + stuff)
    split = dict(info.splits)["val"]
    for d in (split.image_dir, split.label_dir, split.panoptic_dir):
        (root / d).mkdir(parents=True)
    src = SyntheticPanopticSource(n, (72, 100), num_things=4, num_stuff=4, crowd_prob=0.0,
                                  split="val")
    anns = []
    for i in range(n):
        ex, stem = src[i], f"ADE_val_{i:08d}"
        ids = np.zeros_like(ex["panoptic"])
        segs = []
        for j, s in enumerate(ex["segments_info"]):
            sid = 0x0A0B00 + 17 * j + 1  # 24-bit RGB ids, as the official colours are
            ids[ex["panoptic"] == s["id"]] = sid
            segs.append({"id": sid, "category_id": int(to_ade[s["category_id"]]),
                         "iscrowd": 0, "bbox": s["bbox"],
                         "area": s["area"] + (9 if j == 0 and not s["isthing"] else 0)})
        Image.fromarray(ex["image"]).save(root / split.image_dir / f"{stem}.jpg", quality=95)
        sem = np.where(ex["label"] == 255, 0, to_ade[np.minimum(ex["label"], 7)] + 1)
        Image.fromarray(sem.astype(np.uint8)).save(root / split.label_dir / f"{stem}.png")
        (root / split.panoptic_dir / f"{stem}.png").write_bytes(encode_panoptic_png(ids))
        anns.append({"image_id": stem, "file_name": f"{stem}.png", "segments_info": segs})
    cats = [{"id": i, "name": info.class_names[i], "isthing": int(i in info.thing_classes)}
            for i in range(150)]
    (root / split.panoptic_json).write_text(json.dumps(
        {"images": [{"id": a["image_id"], "file_name": a["image_id"] + ".jpg"} for a in anns],
         "annotations": anns, "categories": cats}))
    return split


def test_eval_and_predict_ade20k_panoptic_folder(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import mask2former_fixture_config

    from rankseg_jax import checkpointing, models
    from rankseg_jax.config import serialization
    from rankseg_jax.data import registry
    from tests.reference import panopticapi_pq

    data = tmp_path / "ade20k_panoptic"
    split = _write_ade20k_panoptic(data)
    c = mask2former_fixture_config("pan_rankseg")
    c.model.num_classes = 150
    c.model.rankseg.topk = 150
    d = c.data
    d.name, d.format, d.root = "ade20k_panoptic", "folder", str(data)
    d.mean, d.std = registry.IMAGENET_MEAN, registry.IMAGENET_STD
    d.reduce_zero_label = True
    c.test.max_images, c.test.save_panoptic = 0, True
    # Random weights: keep every query whose class is not no-object, so segments exist.
    c.model.mask2former.object_mask_threshold = 0.0
    model = models.build_model(c)
    ckpt = tmp_path / "model"
    checkpointing.save_params(ckpt, checkpointing.params_tree(model), {"source": "random"})
    serialization.save(c, ckpt)  # main.py reads the config from beside the params
    work = tmp_path / "work"
    log = _run("main.py", "--mode=eval", f"--checkpoint={ckpt}", f"--workdir={work}")
    assert "Things" in log and "PQ" in log
    pq = json.loads((work / "eval_val_pq.json").read_text())
    assert pq["extra"]["num_panoptic_images"] == 3
    ref = panopticapi_pq.pq_compute_files(data / split.panoptic_json,
                                          work / "eval_val_panoptic.json",
                                          data / split.panoptic_dir, work / "eval_val_panoptic")
    for g in ("All", "Things", "Stuff"):
        assert ref[g]["n"] == pq[g]["n"]
        for key in ("pq", "sq", "rq"):
            assert abs(ref[g][key] - (pq[g][key] or 0.0)) < 1e-12, (g, key)
    assert sum(v["fp"] for v in pq["per_class"].values()) > 0
    semantic = json.loads((work / "eval_val.json").read_text())
    assert 0.0 <= semantic["mIoU"] <= 1.0
    out = tmp_path / "pred"
    _run("main.py", "--mode=predict", f"--checkpoint={ckpt}",
         f"--input={data / split.image_dir}", f"--output={out}",
         f"--labels={data / split.label_dir}")
    doc = json.loads((out / "panoptic.json").read_text())
    assert len(doc["annotations"]) == 3 and (out / "ADE_val_00000000_panoptic.png").is_file()
    assert sum(c["isthing"] for c in doc["categories"]) == 100
