"""Mask2Former(+RankSeg) evaluation and prediction (`evaluation/mask_former_{engine,evaluate,
predict}.py`): the per-image engine end to end against the official fixtures, the bucketed
post-processing against the unbucketed one, dataset evaluation on a tiny generated panoptic
dataset against independent computations (PQ by the panopticapi port on the files written to
disk, mIoU by `intersect_and_union_np`, multi-label metrics by their formulas), process slicing,
which variants read ground truth, and the prediction files.

Models: the official tiny fixtures (`tests/fixtures/official_mask2former`, K = 12, random
weights chosen so that panoptic inference keeps segments), converted from their `.pth`.
"""

from __future__ import annotations

import copy
import functools
import json

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import M2F_FIXTURES, mask2former_fixture_config
from PIL import Image

import rankseg_jax
from rankseg_jax.data import palettes
from rankseg_jax.data.panoptic import encode_panoptic_png, semantic_from_panoptic
from rankseg_jax.data.registry import DatasetInfo
from rankseg_jax.data.synthetic_panoptic import SyntheticPanopticSource
from rankseg_jax.evaluation import (
    mask_former,
    mask_former_evaluate,
    mask_former_predict,
    metrics,
    panoptic_io,
    panoptic_quality,
    panoptic_visualize,
)
from rankseg_jax.evaluation import mask_former_engine as E
from rankseg_jax.evaluation.mask_former_inputs import PreparedImage
from tests.reference import panopticapi_pq

pytest.importorskip("torch")  # the fixture weights are torch files
JIT_OPTS = {"xla_backend_optimization_level": 0}  # faster XLA:CPU compiles (tests only)
THING_IDS = (7, 8, 10)  # ADE20K things among classes 0..11 (the fixtures' panoptic metadata)
K = 12


@functools.cache
def _npz(name: str) -> dict:
    with np.load(M2F_FIXTURES / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


@functools.cache
def _model(run: str):
    c = mask2former_fixture_config(run)
    c.test.max_images = 0
    _, model = rankseg_jax.load_model(
        M2F_FIXTURES / ("rankseg.pth" if run.endswith("rankseg") else "plain.pth"), c)
    return c, model


@functools.cache
def _engine(run: str, things: tuple = THING_IDS) -> E.MaskFormerInferencer:
    if things != THING_IDS:  # the same compiled functions, other thing classes
        eng = copy.copy(_engine(run))
        eng.thing_ids = things
        return eng
    c, model = _model(run)
    return E.MaskFormerInferencer(c, model, things, compiler_options=JIT_OPTS)


def _use_cached_engine(monkeypatch, module, run: str) -> None:
    """Makes `module` build its engine through `_engine` (one compilation per test session;
    the numbers the test compares come from the same compiled functions)."""
    def factory(config, model, thing_ids=()):
        assert model is _model(run)[1]
        return _engine(run, tuple(thing_ids))

    monkeypatch.setattr(module, "MaskFormerInferencer", factory)


def _fixture_gt(b: int) -> np.ndarray:
    present = np.zeros(K, np.float32)
    present[_npz("inputs")[f"targets.pan.img{b}.labels"]] = 1
    return present


# ------------------------------------------------------------------ the engine vs official


@pytest.mark.parametrize("run", ["pan_plain", "pan_rankseg", "pan_gt"])
def test_engine_end_to_end_matches_official(run):
    """Official normalised/padded inputs -> our forward + bucketed post-processing: semantic
    argmax (where the official top-2 gap > 1e-4), panoptic map and segments, RankSeg ranking,
    equal to the official outputs (image 1 is 56x80 inside 64x96, upscaled to 70x100)."""
    eng, inputs, ev = _engine(run), _npz("inputs"), _npz("eval")
    for b in range(2):
        prep = PreparedImage(inputs["images_normalized_padded"][b].transpose(1, 2, 0),
                             tuple(inputs["image_sizes"][b]), (64, 96),
                             tuple(inputs["out_sizes"][b]))
        res = eng.predict_prepared(prep, _fixture_gt(b))
        sem = ev[f"sem_{run.split('_')[1]}.sem_seg.img{b}"]
        top2 = np.sort(sem, axis=0)[-2:]
        sure = top2[1] - top2[0] > 1e-4
        assert res.sem.shape == sem.shape[1:] and res.sem.dtype == np.int32
        np.testing.assert_array_equal(res.sem[sure], sem.argmax(0)[sure])
        flips = int((res.panoptic != ev[f"{run}.panoptic_seg.img{b}"]).sum())
        print(f"{run}.img{b}: {int((~sure).sum())} unsure semantic pixels, {flips} panoptic "
              "pixel mismatches")
        assert flips <= 2  # the inference parity test allows 2 near-tie pixels too
        got = [[s["id"], s["category_id"], int(s["isthing"])] for s in res.segments_info]
        assert got == ev[f"{run}.segments.img{b}"].tolist()
        if run == "pan_rankseg":
            np.testing.assert_array_equal(res.topk,
                                          ev[f"{run}.multilabel.img{b}.topk_index"][0])
            np.testing.assert_allclose(res.image_logits,
                                       ev[f"{run}.multilabel.img{b}.img_pred"][0], atol=1e-5)
        else:
            assert res.topk is None and res.image_logits is None


def test_bucketed_postprocess_equals_unbucketed():
    """`resize_chain` matrices (zero rows/columns, bucket padding) give the official mask
    resize up to float32 summation order, and the same semantic argmax and panoptic result
    as `mask_former.semantic_inference` / `panoptic_inference` at the exact sizes."""
    rng = np.random.default_rng(0)
    q = 6
    for image_size, padded, out in (((56, 80), (64, 96), (70, 100)), ((64, 91), (64, 96),
                                                                       (48, 68)),
                                    ((40, 64), (64, 64), (40, 64))):
        # Blobs (a logit falling with the distance from a random centre) plus noise.
        yy, xx = np.mgrid[0:padded[0] // 4, 0:padded[1] // 4]
        cy, cx = rng.uniform(0, image_size[0] / 4, q), rng.uniform(0, image_size[1] / 4, q)
        dist = np.hypot(yy[None] - cy[:, None, None], xx[None] - cx[:, None, None])
        logits = jnp.asarray(4 - dist + rng.normal(0, 0.5, dist.shape), jnp.float32)
        cls = jnp.asarray(rng.normal(0, 2, (q, 5)) * np.array([1, 1, 1, 1, 0.1]), jnp.float32)
        cls = cls.at[:, 0].add(4.0)  # confident class-0 queries: segments to compare
        mats = [E.resize_chain(logits.shape[1 + a], padded[a], image_size[a], out[a],
                               E.bucket(out[a], 32)) for a in range(2)]
        x = jnp.einsum("Hh,qhw->qHw", mats[0][0], logits)
        x = jnp.einsum("Ww,qhw->qhW", mats[1][0], x)
        x = jnp.einsum("Hh,qhw->qHw", mats[0][1], x)
        x = jnp.einsum("Ww,qhw->qhW", mats[1][1], x)[:, :out[0], :out[1]]
        want = mask_former.postprocess_masks(logits, image_size, padded, out)
        err = float(jnp.abs(x - want).max())
        print(f"{image_size} in {padded} -> {out}: max|bucketed - exact| {err:.2e}")
        assert err <= 1e-5 * float(jnp.abs(want).max())
        maps = E._postprocess(cls, logits, mats[0][0], mats[1][0], mats[0][1], mats[1][1],
                              jnp.asarray(out, jnp.int32), jnp.float32(0.5), semantic=True,
                              panoptic=True)
        sem = mask_former.semantic_inference(cls, logits, image_size, padded, out)
        np.testing.assert_array_equal(np.asarray(maps["sem"])[:out[0], :out[1]],
                                      np.asarray(sem).argmax(0))
        host = {k: np.asarray(v) for k, v in maps.items()}
        host["ids"], host["fg"] = host["ids"][:out[0], :out[1]], host["fg"][:out[0], :out[1]]
        seg, info = mask_former.panoptic_result(host, (1,), 0.5)
        seg_want, info_want = mask_former.panoptic_inference(
            cls, logits, image_size, padded, out, object_mask_threshold=0.5,
            overlap_threshold=0.5, thing_ids=(1,))
        assert info == info_want and len(info) > 0
        np.testing.assert_array_equal(seg, seg_want)


# ------------------------------------------------------------------ a generated dataset


class _Source:
    """Random-access examples in the panoptic example format, with a thing/stuff split."""

    def __init__(self, examples):
        self.examples = examples
        self.info = DatasetInfo("generated_panoptic", K, tuple(f"class_{i}" for i in range(K)),
                                palettes.generated_palette(K), 255, False, label_format="none",
                                category_ids=tuple(range(K)), thing_classes=THING_IDS)

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return dict(self.examples[i])


def _images() -> list[np.ndarray]:
    """The two fixture images and two synthetic panoptic ones (all padded to 64x96)."""
    inputs = _npz("inputs")
    out = [inputs[f"image.img{b}"].transpose(1, 2, 0) for b in range(2)]
    for i, hw in enumerate(((48, 64), (60, 80))):
        out.append(SyntheticPanopticSource(1, hw, num_things=4, num_stuff=8, seed=i)[0]["image"])
    return out


def _ground_truth(image_index, pred, segments):
    """A panoptic annotation made from a prediction, perturbed so that every PQ rule takes
    part: kept segments (TP), thinned ones (IoU < 0.5: FP + FN), relabelled ones, a thing
    turned into a crowd region (its prediction ignored), a void band, an unpredicted segment
    (FN) and a JSON area above the pixel count (the ADE20K stuff rule)."""
    yy = np.mgrid[0:pred.shape[0], 0:pred.shape[1]][0]
    gt, segs = np.zeros_like(pred), []
    for j, s in enumerate(segments):
        mask, cat, crowd = pred == s["id"], s["category_id"], 0
        mode = (image_index + j) % 4
        if mode == 1:
            mask &= yy % 10 < 8  # IoU ~0.8: still a TP
        elif mode == 2 and s["isthing"]:
            crowd = 1
        elif mode == 2:
            mask &= yy % 10 < 3  # IoU ~0.3
        elif mode == 3:
            cat = (cat + 1) % K
        gt[mask] = 50 + j
        segs.append({"id": 50 + j, "category_id": cat, "iscrowd": crowd})
    gt[:, :3] = 0  # void band
    gt[-6:, -6:] = 99  # a segment nothing predicts
    segs.append({"id": 99, "category_id": 3, "iscrowd": 0})
    ids, counts = np.unique(gt, return_counts=True)
    area = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    segs = [{**s, "area": area[s["id"]], "isthing": s["category_id"] in THING_IDS}
            for s in segs if s["id"] in area]
    stuff = [s for s in segs if not s["isthing"]]
    stuff[0]["area"] += 5
    return gt.astype(np.int32), segs


@functools.cache
def _generated():
    """Examples whose annotations derive from the pan_rankseg model's own predictions."""
    eng = _engine("pan_rankseg")
    examples = []
    for i, image in enumerate(_images()):
        res = eng.predict(image)
        pan, segs = _ground_truth(i, res.panoptic, res.segments_info)
        examples.append({"image": image, "panoptic": pan, "segments_info": segs,
                         "label": semantic_from_panoptic(pan, segs), "name": f"gen_{i}"})
    return examples


def _write_gt(examples, root):
    """The COCO panoptic GT files (PNGs + JSON) of the examples."""
    folder = root / "gt"
    folder.mkdir()
    anns = []
    for ex in examples:
        (folder / f"{ex['name']}.png").write_bytes(encode_panoptic_png(ex["panoptic"]))
        anns.append({"image_id": ex["name"], "file_name": f"{ex['name']}.png",
                     "segments_info": [{k: s[k] for k in ("id", "category_id", "iscrowd",
                                                          "area")}
                                       for s in ex["segments_info"]]})
    cats = [{"id": i, "name": f"class_{i}", "isthing": int(i in THING_IDS)} for i in range(K)]
    (root / "gt.json").write_text(json.dumps({"annotations": anns, "categories": cats}))
    return root / "gt.json", folder


def test_evaluate_equals_independent_computations(tmp_path, monkeypatch):
    examples = _generated()
    c, model = _model("pan_rankseg")
    _use_cached_engine(monkeypatch, mask_former_evaluate, "pan_rankseg")
    c.test.save_panoptic = True
    try:
        out = mask_former_evaluate.evaluate(c, model, tmp_path, source=_Source(examples))
    finally:
        c.test.save_panoptic = False
    # PQ: panopticapi's rules (the test-only port) on the prediction files written to disk.
    gt_json, gt_folder = _write_gt(examples, tmp_path)
    ref = panopticapi_pq.pq_compute_files(gt_json, tmp_path / "eval_val_panoptic.json",
                                          gt_folder, tmp_path / "eval_val_panoptic")
    ours = panoptic_quality.panopticapi_results(out["panoptic"], range(K))
    pq = out["panoptic"]
    print("PQ", {g: ref[g] for g in ("All", "Things", "Stuff")}, "TP", pq["tp"].sum(), "FP",
          pq["fp"].sum(), "FN", pq["fn"].sum())
    assert pq["tp"].sum() >= 2 and pq["fp"].sum() >= 1 and pq["fn"].sum() >= 2
    for g in ("All", "Things", "Stuff"):
        assert ref[g]["n"] == ours[g]["n"] > 0
        for key in ("pq", "sq", "rq"):
            assert abs(ref[g][key] - ours[g][key]) < 1e-12, (g, key)
    for cat in range(K):
        for key in ("pq", "sq", "rq"):
            assert abs(ref["per_class"][cat][key] - ours["per_class"][cat][key]) < 1e-12
    assert out["PQ"] == pq["All"]["pq"] and out["PQ_th"] == pq["Things"]["pq"]
    # mIoU and multi-label metrics from the engine's per-image outputs.
    eng = _engine("pan_rankseg")
    inter, union, ap, recall, precision, pix = 0, 0, [], [], [], []
    for ex in examples:
        res = eng.predict(ex["image"])
        areas = metrics.intersect_and_union_np(res.sem, ex["label"], K, 255)
        inter, union = inter + areas[0], union + areas[1]
        gt = sorted({s["category_id"] for s in ex["segments_info"] if not s["iscrowd"]})
        rank = {int(cls): r for r, cls in enumerate(np.argsort(-res.image_logits,
                                                               kind="stable"))}
        ranks = sorted(rank[c] for c in gt)
        ap.append(sum((i + 1) / (r + 1) for i, r in enumerate(ranks)) / len(gt))
        hits = len(set(gt) & set(res.topk.tolist()))
        recall.append(hits / len(gt))
        precision.append(hits / len(res.topk))
        hist = np.bincount(ex["label"][ex["label"] < K], minlength=K)
        pix.append(hist[res.topk].sum() / hist.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        miou = np.nanmean(inter / np.where(union > 0, union, np.nan))
    assert abs(out["mIoU"] - miou) < 1e-12
    for key, vals in (("img_AP", ap), ("img_recall", recall), ("img_precision", precision),
                      ("pixel_recall", pix)):
        assert abs(out[key] - np.mean(vals)) < 1e-7, key
    # The report files.
    doc = json.loads((tmp_path / "eval_val_pq.json").read_text())
    assert doc["All"]["pq"] == pytest.approx(out["PQ"]) and doc["per_class"]["class_7"][
        "isthing"]
    assert json.loads((tmp_path / "eval_val.json").read_text())["mIoU"] == pytest.approx(
        out["mIoU"])
    assert (tmp_path / "eval_val_pq.csv").read_text().startswith("class,isthing,pq")
    assert out["num_images"] == out["num_panoptic_images"] == len(examples)


def test_process_slicing_sums_to_one_process():
    """Two processes' shares (p::2), summed, give the one-process totals and metrics."""
    c, _ = _model("pan_rankseg")
    eng, src = _engine("pan_rankseg"), _Source(_generated())
    info = src.info
    one = mask_former_evaluate.accumulate(
        eng, mask_former_evaluate.eval_examples(c, src, 0, 1)[0], info).reduce()
    parts = [mask_former_evaluate.accumulate(
        eng, mask_former_evaluate.eval_examples(c, src, p, 2)[0], info) for p in range(2)]
    assert [p.images for p in parts] == [2, 2]
    two = parts[0].merge(parts[1]).reduce()
    for a, b in zip(one.pq.totals, two.pq.totals, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(one.seg.totals, two.seg.totals, strict=True):
        np.testing.assert_array_equal(a, b)
    r1, r2 = (mask_former_evaluate.results(t, semantic=True, rankseg=True) for t in (one, two))
    for key in ("mIoU", "PQ", "SQ", "RQ", "PQ_th", "PQ_st", "num_images"):
        assert r1[key] == r2[key], key
    for key in ("img_AP", "img_recall", "img_precision", "pixel_recall"):
        assert abs(r1[key] - r2[key]) < 1e-12, key


def _predictions(run: str, examples) -> tuple[list, list]:
    """(per-image predictions, ground truth handed to the engine) of `accumulate`."""
    eng, seen, gts = _engine(run), [], []
    predict = eng.predict

    def spy(image, gt_present=None):
        gts.append(None if gt_present is None else np.asarray(gt_present))
        seen.append(predict(image, gt_present))
        return seen[-1]

    eng.predict = spy
    try:
        mask_former_evaluate.accumulate(eng, examples, _Source(examples).info)
    finally:
        del eng.predict
    return seen, gts


def test_only_the_gt_oracle_reads_ground_truth():
    examples = _generated()
    # The same images with other annotations: every class present, segments moved.
    other = []
    for ex in examples:
        pan = np.roll(ex["panoptic"], 7, axis=1)
        segs = [dict(s, category_id=(s["category_id"] + 5) % K) for s in ex["segments_info"]]
        other.append(dict(ex, panoptic=pan, segments_info=segs,
                          label=semantic_from_panoptic(pan, segs)))
    for run in ("pan_plain", "pan_rankseg"):
        (a, gts), (b, _) = _predictions(run, examples), _predictions(run, other)
        assert all(g is None for g in gts)
        for x, y in zip(a, b, strict=True):
            for field in ("sem", "panoptic", "image_logits", "topk"):
                u, v = getattr(x, field), getattr(y, field)
                assert (u is None and v is None) or np.array_equal(u, v), (run, field)
            assert x.segments_info == y.segments_info
    (a, gts), (b, gts_other) = (_predictions("pan_gt", e) for e in (examples, other))
    for ex, g in zip(examples, gts, strict=True):  # the non-crowd segment classes
        want = np.zeros(K, np.float32)
        want[[s["category_id"] for s in ex["segments_info"] if not s["iscrowd"]]] = 1
        np.testing.assert_array_equal(g, want)
    assert any(not np.array_equal(g, h) for g, h in zip(gts, gts_other, strict=True))
    assert any(not np.array_equal(x.sem, y.sem) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="ground-truth classes"):
        _engine("pan_gt").predict(examples[0]["image"])


# ------------------------------------------------------------------ predict


def test_predict_writes_semantic_and_panoptic_files(tmp_path, monkeypatch):
    c, model = _model("pan_rankseg")
    _use_cached_engine(monkeypatch, mask_former_predict, "pan_rankseg")
    images = _images()
    src = tmp_path / "in"
    src.mkdir()
    for i, image in enumerate(images[:2]):
        Image.fromarray(image).save(src / f"img{i}.png")
    written = mask_former_predict.predict(c, model, src, tmp_path / "out")
    out = tmp_path / "out"
    names = {p.name for p in out.iterdir()}
    assert {"img0_labels.png", "img0_panel.png", "img0_scores.png", "img0_panoptic.png",
            "panoptic", "panoptic.json"} <= names
    doc = json.loads((out / "panoptic.json").read_text())
    assert [a["image_id"] for a in doc["annotations"]] == ["img0", "img1"]
    eng = _engine("pan_rankseg", ())  # the config's dataset (synthetic) has no thing classes
    for i, ann in enumerate(doc["annotations"]):
        res = eng.predict(images[i])
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"img{i}_labels.png")),
                                      res.sem)
        pan = panoptic_io.decode_png((out / "panoptic" / ann["file_name"]).read_bytes())
        np.testing.assert_array_equal(pan, res.panoptic)
        assert ann["segments_info"] == [{"id": s["id"], "category_id": s["category_id"]}
                                        for s in res.segments_info]
        assert not any(s["isthing"] for s in res.segments_info)
    assert str(out / "panoptic.json") == written[-1]


def test_panoptic_overlay_colours():
    """Stuff in its class colour, instances of one class in distinct shades of it, white
    boundaries, void darkened; the panel names instances and crowds."""
    palette = palettes.generated_palette(K)
    ids = np.zeros((8, 12), np.int32)
    ids[:, :4], ids[:, 4:8], ids[:4, 8:], ids[4:, 8:] = 1, 2, 3, 0
    ids[6:, :2] = 4
    segs = [{"id": 1, "category_id": 7, "isthing": True},
            {"id": 2, "category_id": 7, "isthing": True},
            {"id": 3, "category_id": 2, "isthing": False},
            {"id": 4, "category_id": 8, "isthing": True, "iscrowd": 1}]
    colours = panoptic_visualize.segment_colours(segs, palette)
    np.testing.assert_array_equal(colours[1], palette[7])
    np.testing.assert_array_equal(colours[3], palette[2])
    assert palettes.delta_e(colours[1], colours[2]) > 10  # two beds, told apart
    image = np.full((8, 12, 3), 100, np.uint8)
    out = panoptic_visualize.panoptic_overlay(image, ids, segs, palette).astype(int)
    assert (out[5:, 9:] == 35).all()  # void: the image darkened
    assert (out[:, 4] == 255).all() and (out[4, 9:] == 255).all()  # boundaries
    want = np.round(0.25 * 100 + 0.75 * colours[2].astype(float)).astype(int)
    assert np.abs(out[1, 6] - want).max() <= 1
    fig = panoptic_visualize.panoptic_figure(image, ids, segs, palette,
                                             [f"c{i}" for i in range(K)])
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert sorted(labels) == ["c2 (stuff)", "c7 #1", "c7 #2", "c8 (crowd)"]


def test_mask2former_test_options_validated():
    from rankseg_jax.config import ConfigError, validate

    c = mask2former_fixture_config("sem_plain")
    c.test.mode = "slide"
    with pytest.raises(ConfigError, match="test.mode='slide'"):
        validate(c, num_devices=1, process_count=1, check_files=False)
    c.test.mode, c.test.flip = "whole", True
    with pytest.raises(ConfigError, match="flip"):
        validate(c, num_devices=1, process_count=1, check_files=False)
