"""PQ / SQ / RQ against a NumPy port of panopticapi (`tests/reference/panopticapi_pq.py`) on
random crafted cases (void, crowd, unlisted ids, JSON areas above the pixel count, JSON-only
segments, unmatched predictions), and `pq_compute` on COCO-panoptic files incl. a hand-computed
case."""

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from rankseg_jax.data.panoptic import id2rgb
from rankseg_jax.evaluation import panoptic_quality as pq
from tests.reference import panopticapi_pq as ref

# Dataset category ids (non-contiguous on purpose); the first three are things.
CAT_IDS = [1, 3, 8, 11, 12, 20]
CATEGORIES = [{"id": c, "name": f"c{c}", "isthing": int(i < 3)} for i, c in enumerate(CAT_IDS)]
INDEX = {c: i for i, c in enumerate(CAT_IDS)}


def random_case(rng):
    """One crafted image: (gt map, gt segments_info, pred map, pred segments_info)."""
    h, w = int(rng.integers(8, 20)), int(rng.integers(8, 24))
    n_gt = int(rng.integers(1, 9))
    gt_ids = 1 + rng.choice((1 << 24) - 1, n_gt + 1, replace=False)
    gt = np.zeros((h, w), np.int64)
    for sid in gt_ids:  # the last id is painted but never listed: "unlisted" pixels
        y, x = rng.integers(0, h), rng.integers(0, w)
        gt[y:y + rng.integers(2, h + 1), x:x + rng.integers(2, w + 1)] = sid
    gt[rng.random((h, w)) < rng.uniform(0, 0.15)] = 0  # VOID sprinkles
    if rng.random() < 0.5:
        gt[rng.integers(0, h), :] = 0  # a VOID line
    counts = {int(k): int(v) for k, v in zip(*np.unique(gt, return_counts=True), strict=True)}
    gt_segments = []
    for sid in gt_ids[:-1]:
        cat = int(rng.choice(CAT_IDS))
        area = counts.get(int(sid), 0)
        if area == 0 or rng.random() < 0.2:
            area += int(rng.integers(1, 6))  # JSON area above the count; JSON-only segments
        gt_segments.append({"id": int(sid), "category_id": cat, "area": area,
                            "iscrowd": int(rng.random() < 0.2), "bbox": [0, 0, 1, 1]})
    # Prediction: a noisy copy of the GT under new ids, then random repaints and VOID holes.
    pred = np.zeros((h, w), np.int64)
    all_gt = np.unique(gt)
    pred_of = dict(zip(all_gt.tolist(),
                       (1 + rng.choice((1 << 24) - 1, len(all_gt), replace=False)).tolist(),
                       strict=True))
    pred_cat = {}
    gt_cat = {s["id"]: s["category_id"] for s in gt_segments}
    for g, p in pred_of.items():
        pred[gt == g] = p
        keep = g in gt_cat and rng.random() < 0.8
        pred_cat[p] = gt_cat[g] if keep else int(rng.choice(CAT_IDS))
    for _ in range(int(rng.integers(0, 5))):
        y, x = rng.integers(0, h), rng.integers(0, w)
        p = int(rng.choice(list(pred_of.values()) + [0, int(rng.integers(1, 1 << 24))]))
        pred_cat.setdefault(p, int(rng.choice(CAT_IDS)))
        pred[y:y + rng.integers(1, 6), x:x + rng.integers(1, 6)] = p
    if rng.random() < 0.5:
        pred[:, rng.integers(0, w)] = 0
    present = [int(v) for v in np.unique(pred) if v != 0]
    pred_segments = [{"id": p, "category_id": pred_cat[p]} for p in present]
    rng.shuffle(pred_segments)
    return gt, gt_segments, pred, pred_segments


def port_stats(cases):
    stat = ref.PQStat()
    categories = {c["id"]: c for c in CATEGORIES}
    for i, (gt, gs, pr, ps) in enumerate(cases):
        ref.pq_single_image(stat, i, gt, gs, pr, ps, categories)
    return stat, categories


def ours(case):
    gt, gs, pr, ps = case
    return pq.pq_image_stats(gt, pq.segment_table(gs, INDEX), pr, pq.segment_table(ps, INDEX),
                             len(CAT_IDS))


def test_per_image_counts_equal_the_port_on_random_cases():
    rng = np.random.default_rng(0)
    seen = {"crowd_ignored": 0, "tp": 0, "fp": 0, "fn": 0}
    for _ in range(300):
        case = random_case(rng)
        stat, _ = port_stats([case])
        mine = ours(case)
        sums = pq.iou_sums(mine)
        for c, i in INDEX.items():
            s = stat[c]
            assert (mine.tp[i], mine.fp[i], mine.fn[i]) == (s.tp, s.fp, s.fn)
            assert abs(sums[i] - s.iou) <= 1e-15 * max(1, s.tp)
        seen["tp"] += int(mine.tp.sum())
        seen["fp"] += int(mine.fp.sum())
        seen["fn"] += int(mine.fn.sum())
    # The cases exercise every rule (not a vacuous comparison).
    assert min(seen["tp"], seen["fp"], seen["fn"]) > 100, seen


def test_dataset_pq_equals_the_port_and_is_order_independent():
    rng = np.random.default_rng(1)
    cases = [random_case(rng) for _ in range(200)]
    stat, categories = port_stats(cases)
    expected = ref.summarize(stat, categories)
    acc = pq.PQAccumulator(len(CAT_IDS), [0, 1, 2], [c["name"] for c in CATEGORIES])
    for case in cases:
        acc.update(ours(case))
    got = pq.panopticapi_results(acc.compute(), CAT_IDS)
    worst = 0.0
    for g in ("All", "Things", "Stuff"):
        assert got[g]["n"] == expected[g]["n"]
        for k in ("pq", "sq", "rq"):
            worst = max(worst, abs(got[g][k] - expected[g][k]))
    for c in CAT_IDS:
        for k in ("pq", "sq", "rq"):
            worst = max(worst, abs(got["per_class"][c][k] - expected["per_class"][c][k]))
    assert worst < 1e-13, worst
    # Two shards in another order, merged, give bit-identical totals and metrics.
    a = pq.PQAccumulator(len(CAT_IDS), [0, 1, 2])
    b = pq.PQAccumulator(len(CAT_IDS), [0, 1, 2])
    for j, case in enumerate(reversed(cases)):
        (a if j % 3 else b).update(ours(case))
    a.merge(b)
    for x, y in zip(a.totals, acc.totals, strict=True):
        np.testing.assert_array_equal(x, y)
    restored = pq.PQAccumulator(len(CAT_IDS), [0, 1, 2])
    restored.load_state_dict(a.state_dict())
    assert restored.compute()["All"] == acc.compute()["All"]
    assert restored.num_images == len(cases)


def test_last_crowd_segment_of_a_category_is_its_crowd_region():
    # Two crowd segments of category 1; a prediction lies on the first one only. panopticapi
    # keeps the last crowd segment per category, so the prediction is NOT ignored (FP).
    gt = np.array([[5, 5, 6, 6]])
    gs = [{"id": 5, "category_id": 1, "area": 2, "iscrowd": 1},
          {"id": 6, "category_id": 1, "area": 2, "iscrowd": 1}]
    pr = np.array([[9, 9, 0, 0]])
    ps = [{"id": 9, "category_id": 1}]
    stat, _ = port_stats([(gt, gs, pr, ps)])
    mine = ours((gt, gs, pr, ps))
    assert mine.fp[INDEX[1]] == stat[1].fp == 1
    gs.reverse()  # now the covered segment is the last one: ignored
    stat, _ = port_stats([(gt, gs, pr, ps)])
    assert ours((gt, gs, pr, ps)).fp[INDEX[1]] == stat[1].fp == 0


def test_malformed_predictions_raise():
    gt = np.array([[1, 1, 0]])
    gs = [{"id": 1, "category_id": 1, "area": 2, "iscrowd": 0}]
    table = pq.segment_table(gs, INDEX)
    with pytest.raises(ValueError, match="ids \\[7\\] in the map have no segment"):
        pq.pq_image_stats(gt, table, np.array([[7, 0, 0]]), pq.segment_table([], INDEX), 6)
    with pytest.raises(ValueError, match="have no pixels"):
        pq.pq_image_stats(gt, table, np.array([[7, 0, 0]]),
                          pq.segment_table([{"id": 7, "category_id": 1},
                                            {"id": 8, "category_id": 1}], INDEX), 6)
    with pytest.raises(ValueError, match="unknown category_id \\[2\\]"):
        pq.segment_table([{"id": 7, "category_id": 2}], INDEX)
    with pytest.raises(ValueError, match="JSON area smaller"):
        small = pq.segment_table([{**gs[0], "area": 1}], INDEX)
        pq.pq_image_stats(gt, small, gt, table, 6)
    with pytest.raises(ValueError, match="repeated segment ids"):
        pq.pq_image_stats(gt, pq.segment_table(gs * 2, INDEX), gt, table, 6)


# --------------------------------------------------------------------------- files


def write_split(folder, name, images, categories):
    """Writes COCO-panoptic PNGs + JSON: images = [(image_id, id map, segments_info)]."""
    (folder / name).mkdir(parents=True)
    anns = []
    for image_id, ids, segments in images:
        Image.fromarray(id2rgb(ids), mode="RGB").save(folder / name / f"{image_id}.png")
        anns.append({"image_id": image_id, "file_name": f"{image_id}.png",
                     "segments_info": segments})
    doc = {"images": [{"id": i, "file_name": f"{i}.jpg", "height": int(m.shape[0]),
                       "width": int(m.shape[1])} for i, m, _ in images],
           "annotations": anns, "categories": categories}
    (folder / f"{name}.json").write_text(json.dumps(doc))
    return folder / f"{name}.json"


def bbox(ids, sid):
    ys, xs = np.nonzero(ids == sid)
    if not len(ys):
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1)]


# The hand-computed case. GT (4x6), A/B person instances, C a person crowd, S sky with JSON
# area 12 (10 pixels: the ADE20K stuff-under-things quirk), W a wall only in the JSON, 0 VOID:
#   A A A S S S      prediction:  a a a s s s
#   A A A S S S                   a a s s s s
#   0 0 B B S S                   a a b b s s
#   C C B B S S                   c c 0 0 s s
# a~A: inter 5, a on VOID 2 -> IoU 5/(7+6-5-2) = 5/6, TP.  s~S: inter 10 -> IoU 10/(11+12-10)
# = 10/13, TP (10/11 with the pixel count).  b~B: IoU 2/(2+4-2) = 0.5, not > 0.5: B is a FN and
# b a FP (it does not touch the crowd).  c lies on the crowd C: ignored.  W: FN.  grass: nothing.
A, B, C, S, W = 0x0A0B0C, 0x000102, 30, 0x123456, 99
HAND_GT = np.array([[A, A, A, S, S, S], [A, A, A, S, S, S], [0, 0, B, B, S, S],
                    [C, C, B, B, S, S]])
HAND_PRED = np.array([[1, 1, 1, 2, 2, 2], [1, 1, 2, 2, 2, 2], [1, 1, 3, 3, 2, 2],
                      [4, 4, 0, 0, 2, 2]])
HAND_CATS = [{"id": 1, "name": "person", "isthing": 1}, {"id": 7, "name": "sky", "isthing": 0},
             {"id": 9, "name": "grass", "isthing": 0}, {"id": 4, "name": "wall", "isthing": 0}]
HAND = {  # (PQ, SQ, RQ) per category, by hand from the comment above
    "person": (5 / 6 / 2, 5 / 6, 0.5), "sky": (10 / 13, 10 / 13, 1.0), "wall": (0.0, 0.0, 0.0)}


def hand_files(tmp_path):
    gt_segments = [
        {"id": A, "category_id": 1, "area": 6, "iscrowd": 0, "bbox": bbox(HAND_GT, A)},
        {"id": S, "category_id": 7, "area": 12, "iscrowd": 0, "bbox": bbox(HAND_GT, S)},
        {"id": B, "category_id": 1, "area": 4, "iscrowd": 0, "bbox": bbox(HAND_GT, B)},
        {"id": C, "category_id": 1, "area": 2, "iscrowd": 1, "bbox": bbox(HAND_GT, C)},
        {"id": W, "category_id": 4, "area": 3, "iscrowd": 0, "bbox": [0, 0, 0, 0]}]
    pred_segments = [{"id": i, "category_id": c} for i, c in ((1, 1), (2, 7), (3, 1), (4, 1))]
    gt_json = write_split(tmp_path, "gt", [("hand", HAND_GT, gt_segments)], HAND_CATS)
    pred_json = write_split(tmp_path, "pred", [("hand", HAND_PRED, pred_segments)], HAND_CATS)
    return gt_json, pred_json


def test_hand_computed_case_from_files(tmp_path):
    gt_json, pred_json = hand_files(tmp_path)
    m = pq.pq_from_files(gt_json, pred_json)
    names = m["class_names"]
    for name, values in HAND.items():
        i = names.index(name)
        got = tuple(m["per_class"][k][i] for k in ("pq", "sq", "rq"))
        np.testing.assert_allclose(got, values, rtol=0, atol=1e-15)
    assert not m["valid"][names.index("grass")]
    assert (m["tp"].tolist(), m["fp"].tolist(), m["fn"].tolist()) == (
        [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 1])
    mean = lambda *xs: sum(xs) / len(xs)  # noqa: E731
    np.testing.assert_allclose(
        [m["All"]["pq"], m["Things"]["pq"], m["Stuff"]["pq"], m["Stuff"]["rq"]],
        [mean(5 / 12, 10 / 13, 0.0), 5 / 12, mean(10 / 13, 0.0), 0.5], rtol=0, atol=1e-15)
    assert (m["All"]["n"], m["Things"]["n"], m["Stuff"]["n"]) == (3, 1, 2)
    expected = ref.pq_compute_files(gt_json, pred_json, tmp_path / "gt", tmp_path / "pred")
    got = pq.panopticapi_results(m, [c["id"] for c in HAND_CATS])
    assert got == expected or all(
        abs(got[g][k] - expected[g][k]) < 1e-15 for g in ("All", "Things", "Stuff")
        for k in ("pq", "sq", "rq"))


def test_pq_compute_on_generated_coco_panoptic_files(tmp_path):
    rng = np.random.default_rng(2)
    cases = [random_case(rng) for _ in range(12)]
    for _, gs, _, _ in cases:
        for s in gs:
            s["bbox"] = [0, 0, 1, 1]
    gt_json = write_split(tmp_path, "gt", [(f"im{i}", c[0], c[1]) for i, c in enumerate(cases)],
                          CATEGORIES)
    pred_json = write_split(tmp_path, "pred",
                            [(f"im{i}", c[2], c[3]) for i, c in enumerate(cases)], CATEGORIES)
    expected = ref.pq_compute_files(gt_json, pred_json, tmp_path / "gt", tmp_path / "pred")
    got = pq.panopticapi_results(pq.pq_from_files(gt_json, pred_json), CAT_IDS)
    for g in ("All", "Things", "Stuff"):
        assert got[g]["n"] == expected[g]["n"]
        for k in ("pq", "sq", "rq"):
            assert abs(got[g][k] - expected[g][k]) < 1e-14
    # A predicted PNG id without a segment is an error, as in pq_compute.
    doc = json.loads(pred_json.read_text())
    doc["annotations"][0]["segments_info"].pop()
    pred_json.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="image im0: prediction: ids"):
        pq.pq_from_files(gt_json, pred_json)


def test_reports(tmp_path):
    gt_json, pred_json = hand_files(tmp_path)
    m = pq.pq_from_files(gt_json, pred_json)
    table = pq.format_pq_table(m)
    assert "| person | thing | 41.7 | 83.3 |  50.0 |  1 |  1 |  1 |" in table
    assert "| grass  | stuff |  nan |  nan |   nan |  0 |  0 |  0 |" in table
    assert "| Things | 41.7 | 83.3 | 50.0 | 1 |" in table
    pq.write_pq_json(tmp_path / "pq.json", m, extra={"step": 3})
    doc = json.loads((tmp_path / "pq.json").read_text())
    assert doc["All"]["n"] == 3 and doc["per_class"]["grass"]["pq"] is None
    assert doc["per_class"]["sky"]["pq"] == m["per_class"]["pq"][1] and doc["extra"]["step"] == 3
    pq.write_pq_csv(tmp_path / "pq.csv", m)
    rows = (tmp_path / "pq.csv").read_text().splitlines()
    assert rows[1].startswith("person,1,") and float(rows[2].split(",")[2]) == 10 / 13
    assert rows[-3].startswith("All,") and rows[-3].split(",")[5] == "3"


def test_official_panoptic_outputs_against_the_fixture_gt():
    # The official panoptic inference outputs of the tiny models (eval.npz, image 0 at its GT
    # size) scored against the fixture's GT map: same counts and PQ as the port.
    fix = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "official_mask2former"
    inputs, ev = np.load(fix / "inputs.npz"), np.load(fix / "eval.npz")
    gt = inputs["pan_map.img0"]
    gt_cls = {1: 0, 2: 3, 3: 7, 4: 7, 5: 10, 6: 5}  # the fixture README's segments of image 0
    gs = [{"id": i, "category_id": c, "iscrowd": 0, "area": int((gt == i).sum())}
          for i, c in gt_cls.items()]
    cats = {c: {"id": c, "isthing": int(c in (7, 8, 10))} for c in range(12)}
    for run in ("pan_plain", "pan_rankseg", "pan_gt"):
        pr = ev[f"{run}.panoptic_seg.img0"]
        ps = [{"id": int(i), "category_id": int(c)} for i, c, _ in ev[f"{run}.segments.img0"]]
        stat = ref.PQStat()
        ref.pq_single_image(stat, 0, gt, gs, pr, ps, cats)
        mine = pq.pq_image_stats(gt, pq.segment_table(gs), pr, pq.segment_table(ps), 12)
        for c in range(12):
            assert (mine.tp[c], mine.fp[c], mine.fn[c]) == (stat[c].tp, stat[c].fp, stat[c].fn)
        acc = pq.PQAccumulator(12, (7, 8, 10)).update(mine)
        expected = ref.summarize(stat, cats)
        for g in ("All", "Things", "Stuff"):
            if expected[g]["n"]:
                assert abs(acc.compute()[g]["pq"] - expected[g]["pq"]) < 1e-15
