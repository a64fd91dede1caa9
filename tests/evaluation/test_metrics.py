"""Tests of evaluation.metrics, .multilabel and .reports: official mmseg fixtures, hand cases."""

import csv
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankseg_jax.evaluation import metrics as M
from rankseg_jax.evaluation import multilabel as ML
from rankseg_jax.evaluation import reports as R
from tests.reference import mmseg_metrics as P
from tests.reference import official_multilabel as O

K = 20
IGNORE = 255
TAGS = ("rzl0", "rzl1")
NAMES = [f"class{i:02d}" for i in range(K)]


@pytest.fixture(scope="module")
def fx(fixtures_dir):
    with np.load(fixtures_dir / "metrics.npz") as d:
        return {k: d[k] for k in d.files}


def _pairs(fx, tag):
    """(pred, reduced label) pairs; rzl1 labels are raw and must be reduced like mmseg."""
    out = []
    for i in range(5):
        pred = fx[f"{tag}.pred_{i}"]
        label = fx[f"{tag}.label_{i}"]
        if tag == "rzl1":
            label = P.reduce_zero_label(label)
        out.append((pred, label))
    return out


# mmseg area key -> our Areas field
AREA_KEYS = {
    "area_intersect": "area_intersect",
    "area_union": "area_union",
    "area_pred_label": "area_pred",
    "area_label": "area_label",
}


def _check_areas(areas, fx, tag):
    for fkey, field in AREA_KEYS.items():
        got = np.asarray(getattr(areas, field))
        assert got.dtype.kind == "i"
        np.testing.assert_array_equal(got, fx[f"{tag}.{fkey}"].astype(np.int64), err_msg=fkey)


# --------------------------------------------------------------------------------------------
# mmseg fixtures
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", TAGS)
def test_areas_numpy_and_jax_match_fixture(fx, tag):
    iau = jax.jit(P.intersect_and_union, static_argnums=(2, 3))
    acc_np = M.SegMetricAccumulator(K)
    acc_jax = M.SegMetricAccumulator(K)
    for pred, label in _pairs(fx, tag):
        a_np = M.intersect_and_union_np(pred, label, K, IGNORE)
        a_jax = iau(jnp.asarray(pred), jnp.asarray(label), K, IGNORE)
        # On-device (scatter-add) and host (boolean-index + bincount) paths agree per image.
        for x, y in zip(a_np, a_jax, strict=True):
            np.testing.assert_array_equal(x, np.asarray(y))
        acc_np.update(a_np)
        acc_jax.update(a_jax)
    _check_areas(acc_np.totals, fx, tag)
    _check_areas(acc_jax.totals, fx, tag)
    assert acc_np.totals.area_label.dtype == np.int64


@pytest.mark.parametrize("tag", TAGS)
def test_metrics_match_fixture(fx, tag):
    acc = M.SegMetricAccumulator(K)
    for pred, label in _pairs(fx, tag):
        acc.update(M.intersect_and_union_np(pred, label, K, IGNORE))
    m = acc.compute(NAMES)
    for key in ("IoU", "Acc", "Dice", "Fscore", "Precision", "Recall"):
        ref = fx[f"{tag}.{key}"]
        np.testing.assert_array_equal(np.isnan(m[key]), np.isnan(ref), err_msg=key)
        np.testing.assert_allclose(m[key], ref, rtol=0, atol=1e-6, err_msg=key)
    for key in ("aAcc", "mIoU", "mAcc"):
        assert abs(m[key] - float(fx[f"{tag}.{key}"])) <= 1e-6, key
    # The float32 pre_eval path of mmseg agrees up to float32 rounding.
    np.testing.assert_allclose(m["IoU"], fx[f"{tag}.pre_eval_IoU"], rtol=1e-6, atol=1e-7)
    # mmseg_round / CustomDataset.evaluate: exact equality, NaN positions included.
    res = P.mmseg_eval_results(m)
    for key in ("aAcc", "mIoU", "mAcc"):
        assert res[key] == float(fx[f"{tag}.dataset_eval_{key}"]), key
    for key in ("IoU", "Acc"):
        got = np.array([res[f"{key}.{n}"] for n in NAMES])
        ref = fx[f"{tag}.dataset_eval_{key}_per_class"]
        assert np.array_equal(got, ref, equal_nan=True), key


def test_fixture_quirks_rzl0(fx):
    # README: class 18 only predicted -> Acc NaN, IoU 0 (and it counts in mIoU); class 19
    # never appears -> NaN IoU and Acc (excluded from the means).
    acc = M.SegMetricAccumulator(K)
    for pred, label in _pairs(fx, "rzl0"):
        acc.update(M.intersect_and_union_np(pred, label, K, IGNORE))
    m = acc.compute()
    assert m["IoU"][18] == 0.0 and math.isnan(m["Acc"][18])
    assert math.isnan(m["IoU"][19]) and math.isnan(m["Acc"][19])
    assert m["mIoU"] == pytest.approx(np.sum(m["IoU"][:19]) / 19, abs=1e-12)


@pytest.mark.parametrize("tag", TAGS)
def test_batched_with_padding_equals_per_image_sums(fx, tag):
    pairs = _pairs(fx, tag)
    hmax = max(p.shape[0] for p, _ in pairs)
    wmax = max(p.shape[1] for p, _ in pairs)
    b = len(pairs) + 1  # one extra, fully padded image
    rng = np.random.RandomState(0)
    # Padding is filled with *valid-looking* class ids so that only the mask can exclude it.
    pred = rng.randint(0, K, size=(b, hmax, wmax))
    label = rng.randint(0, K, size=(b, hmax, wmax))
    valid = np.zeros((b, hmax, wmax), bool)
    for i, (p, lab) in enumerate(pairs):
        h, w = p.shape
        pred[i, :h, :w] = p
        label[i, :h, :w] = lab
        valid[i, :h, :w] = True
    f = jax.jit(P.intersect_and_union, static_argnums=(2, 3))
    _check_areas(f(pred, label, K, IGNORE, jnp.asarray(valid)), fx, tag)

    fpi = jax.jit(P.intersect_and_union_per_image, static_argnums=(2, 3))
    per = fpi(pred, label, K, IGNORE, jnp.asarray(valid))
    for i, (p, lab) in enumerate(pairs):
        ref = M.intersect_and_union_np(p, lab, K, IGNORE)
        for x, y in zip(ref, per, strict=True):
            np.testing.assert_array_equal(x, np.asarray(y[i]))
    for y in per:
        assert not np.asarray(y[-1]).any()  # the padded image counts nowhere
    acc = M.SegMetricAccumulator(K).update(per)  # [B, K] areas are summed over B
    _check_areas(acc.totals, fx, tag)

    # Accumulators over two halves merge to the same totals.
    a1 = M.SegMetricAccumulator(K)
    a2 = M.SegMetricAccumulator(K)
    for i, (p, lab) in enumerate(pairs):
        (a1 if i % 2 else a2).update(M.intersect_and_union_np(p, lab, K, IGNORE))
    _check_areas(a1.merge(a2).totals, fx, tag)


def test_confusion_matrix_consistent_with_areas(fx):
    pred, label = _pairs(fx, "rzl1")[1]
    cm = np.asarray(jax.jit(P.confusion_matrix, static_argnums=(2, 3))(pred, label, K, IGNORE))
    a = M.intersect_and_union_np(pred, label, K, IGNORE)
    np.testing.assert_array_equal(np.diag(cm), a.area_intersect)
    np.testing.assert_array_equal(cm.sum(1), a.area_label)
    np.testing.assert_array_equal(cm.sum(0), a.area_pred)


def test_reduce_zero_label_fixture_and_no_mutation(fx):
    raw = fx["rzl1.label_0"]
    before = raw.copy()
    red = P.reduce_zero_label(raw)
    np.testing.assert_array_equal(raw, before)  # mmseg mutates its input; we must not
    # JAX input gives the same result (usable inside jit).
    np.testing.assert_array_equal(np.asarray(jax.jit(P.reduce_zero_label)(jnp.asarray(raw))), red)


# --------------------------------------------------------------------------------------------
# Hand-computed segmentation cases
# --------------------------------------------------------------------------------------------


def test_hand_areas_ignore_and_out_of_range():
    # K=3, ignore 255. Pixel pairs (pred, label):
    #   (0,0) -> I0, P0, L0         (1,1) -> I1, P1, L1       (2,255) -> dropped entirely
    #   (1,2) -> P1, L2             (1,1) -> I1, P1, L1       (5,-1) -> both out of range
    # => intersect [1,2,0], pred [1,3,0], label [1,2,1], union = P+L-I = [1,3,1]
    pred = np.array([[0, 1, 2], [1, 1, 5]])
    label = np.array([[0, 1, 255], [2, 1, -1]])
    exp = ([1, 2, 0], [1, 3, 1], [1, 3, 0], [1, 2, 1])
    for areas in (M.intersect_and_union_np(pred, label, 3),
                  P.intersect_and_union(jnp.asarray(pred), jnp.asarray(label), 3)):
        for got, e in zip(areas, exp, strict=True):
            np.testing.assert_array_equal(np.asarray(got), e)
    m = M.compute_metrics(M.intersect_and_union_np(pred, label, 3))
    # IoU = I/U = [1, 2/3, 0]; Acc = I/L = [1, 1, 0]; aAcc = 3/4; Dice = 2I/(P+L) = [1, .8, 0]
    np.testing.assert_allclose(m["IoU"], [1, 2 / 3, 0])
    np.testing.assert_allclose(m["Acc"], [1, 1, 0])
    np.testing.assert_allclose(m["Dice"], [1, 0.8, 0])
    assert m["aAcc"] == 0.75
    assert m["mIoU"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_hand_reduce_zero_label():
    # uint8: 0 -> 255, L -> L-1, 254 -> 253 (only the *result* 254 maps to 255), 255 -> 255
    x = np.array([0, 1, 2, 254, 255], np.uint8)
    y = P.reduce_zero_label(x)
    np.testing.assert_array_equal(y, [255, 0, 1, 253, 255])
    assert y.dtype == np.uint8
    np.testing.assert_array_equal(x, [0, 1, 2, 254, 255])
    # int16: label - 1, then -2 -> -1: [-1, 0, 1, 5] -> [-1, -1, 0, 4]
    z = np.array([-1, 0, 1, 5], np.int16)
    np.testing.assert_array_equal(P.reduce_zero_label(z, int16=True), [-1, -1, 0, 4])


def test_hand_class_histogram():
    # img0 [0,0,255] -> [2,0,0]; img1 [2,-1,2] -> [0,0,2] (-1 out of range, not class 0)
    label = jnp.array([[[0, 0, 255]], [[2, -1, 2]]])
    h = jax.jit(P.class_histogram, static_argnums=(1, 2))(label, 3, 255)
    np.testing.assert_array_equal(np.asarray(h), [[2, 0, 0], [0, 0, 2]])
    # masking the last pixel of img1 (padding) -> [0,0,1]
    valid = jnp.array([[[True, True, True]], [[True, True, False]]])
    np.testing.assert_array_equal(np.asarray(P.class_histogram(label, 3, 255, valid)),
                                  [[2, 0, 0], [0, 0, 1]])


# --------------------------------------------------------------------------------------------
# Hand-computed multi-label cases
# --------------------------------------------------------------------------------------------

# K=6. img0 GT {0,3} (5+3 px), img1 no GT, img2 GT {1,2,5} (2+2+4 px).
HIST = np.array([[5, 0, 0, 3, 0, 0],
                 [0, 0, 0, 0, 0, 0],
                 [0, 2, 2, 0, 0, 4]])
RANK = np.array([[0, 1, 2, 3, 4, 5],
                 [0, 1, 2, 3, 4, 5],
                 [5, 0, 1, 3, 4, 2]])
TOPK = RANK[:, :2]
# Full ranking AP:
#   img0: GT ranks {0,3} -> (1/1 + 2/4)/2 = 0.75
#   img1: 0/0 -> NaN, excluded
#   img2: GT ranks 5->0, 1->2, 2->5 -> (1/1 + 2/3 + 3/6)/3 = 13/18
AP_FULL = [0.75, 13 / 18]
# Top-2 lists: img0 [0,1], img1 [0,1], img2 [5,0]
#   img_recall:   img0 1/2, img1 NaN, img2 1/3          -> mean 5/12
#   pixel_recall: img0 5/8, img1 NaN, img2 4/8          -> mean 9/16
#   img_accuracy: img0 1/2, img1 0/2, img2 1/2          -> mean 1/3 (no NaN here)
#   AP (top-2):   img0 (1/1 + 0)/2, img1 NaN, img2 (1/1 + 0 + 0)/3 -> mean (1/2 + 1/3)/2 = 5/12
EXP_TOPK = {
    "img_recall": ([1 / 2, 0, 1 / 3], [True, False, True], 5 / 12),
    "pixel_recall": ([5 / 8, 0, 1 / 2], [True, False, True], 9 / 16),
    "img_accuracy": ([1 / 2, 0, 1 / 2], [True, True, True], 1 / 3),
    "img_AP": ([1 / 2, 0, 1 / 3], [True, False, True], 5 / 12),
}
NP_FUNCS = {
    "img_recall": O.img_recall,
    "pixel_recall": O.pixel_recall,
    "img_accuracy": O.img_accuracy,
    "img_AP": O.average_precision,
}
JAX_FUNCS = {
    "img_recall": ML.img_recall_per_image,
    "pixel_recall": ML.pixel_recall_per_image,
    "img_accuracy": ML.img_accuracy_per_image,
    "img_AP": ML.average_precision_per_image,
}


def test_ap_two_gt_ranks_0_and_3():
    hist = np.array([[1, 0, 0, 1, 0]])
    ranking = np.array([[0, 1, 2, 3, 4]])
    expected = (1 / 1 + 2 / 4) / 2  # GT at ranks 0 and 3
    assert O.average_precision(hist, ranking) == pytest.approx(expected)
    v, ok = ML.average_precision_per_image(hist, ranking)
    assert float(v[0]) == pytest.approx(expected) and bool(ok[0])


def test_ap_full_ranking():
    assert O.average_precision(HIST, RANK) == pytest.approx(np.mean(AP_FULL))
    v, ok = jax.jit(ML.average_precision_per_image)(HIST, RANK)
    np.testing.assert_array_equal(np.asarray(ok), [True, False, True])
    np.testing.assert_allclose(np.asarray(v)[[0, 2]], AP_FULL, rtol=1e-6)


@pytest.mark.parametrize("name", list(EXP_TOPK))
def test_multilabel_topk_hand(name):
    vals, valid, mean = EXP_TOPK[name]
    assert NP_FUNCS[name](HIST, TOPK) == pytest.approx(mean)
    v, ok = jax.jit(JAX_FUNCS[name])(jnp.asarray(HIST), jnp.asarray(TOPK))
    np.testing.assert_array_equal(np.asarray(ok), valid)
    np.testing.assert_allclose(np.asarray(v)[np.array(valid)], np.array(vals)[np.array(valid)],
                               rtol=1e-6)


def test_multilabel_no_gt_batch():
    # No image has a GT class: recall / pixel recall return 1 (official rule), precision@2 is
    # 0, AP has no such rule and is the mean of an empty set = NaN.
    hist = np.zeros((2, 4))
    topk = np.array([[0, 1], [2, 3]])
    assert O.img_recall(hist, topk) == 1.0
    assert O.pixel_recall(hist, topk) == 1.0
    assert O.img_accuracy(hist, topk) == 0.0
    assert math.isnan(O.average_precision(hist, topk))
    acc = ML.MultiLabelMetricAccumulator().update(ML.multilabel_metrics_per_image(hist, topk))
    out = acc.compute()
    assert out["img_recall"] == 1.0 and out["pixel_recall"] == 1.0
    assert out["img_accuracy"] == 0.0 and math.isnan(out["img_AP"])


def test_multilabel_all_classes_in_topk():
    # K=4, GT {0,1}, topk = all classes reversed [3,2,1,0]: recall 1, pixel recall 1,
    # precision 2/4, AP: GT ranks {3,2} -> sorted [2,3] -> (1/3 + 2/4)/2 = 5/12
    hist = np.array([[1, 1, 0, 0]])
    topk = np.array([[3, 2, 1, 0]])
    exp = {"img_recall": 1.0, "pixel_recall": 1.0, "img_accuracy": 0.5, "img_AP": 5 / 12}
    for name, e in exp.items():
        assert NP_FUNCS[name](hist, topk) == pytest.approx(e), name
        v, ok = JAX_FUNCS[name](hist, topk)
        assert float(v[0]) == pytest.approx(e) and bool(ok[0]), name


def test_multilabel_accumulator_across_batches_and_padding():
    # Dataset = HIST/TOPK split in two batches; the second one is padded with a fake image
    # (masked by img_valid). Per-image means: AP over the full ranking = mean(AP_FULL).
    f = jax.jit(ML.multilabel_metrics_per_image)
    acc = ML.MultiLabelMetricAccumulator()
    acc.update(f(HIST[:2], TOPK[:2], RANK[:2], jnp.array([True, True])))
    pad_hist = np.concatenate([HIST[2:], [[9, 9, 9, 9, 9, 9]]])
    pad_topk = np.concatenate([TOPK[2:], [[3, 4]]])
    pad_rank = np.concatenate([RANK[2:], [[5, 4, 3, 2, 1, 0]]])
    other = ML.MultiLabelMetricAccumulator().update(
        f(pad_hist, pad_topk, pad_rank, jnp.array([True, False])))
    out = acc.merge(other).compute()
    assert out["img_recall"] == pytest.approx(5 / 12)
    assert out["pixel_recall"] == pytest.approx(9 / 16)
    assert out["img_accuracy"] == pytest.approx(1 / 3)
    assert out["img_AP"] == pytest.approx(np.mean(AP_FULL))


def test_jax_ap_matches_official_port_random():
    # The JAX cumsum formulation vs the literal scatter+sort port, full and top-k lists.
    rng = np.random.RandomState(3)
    hist = rng.randint(0, 3, size=(16, 12)) * (rng.rand(16, 12) < 0.4)
    hist[0] = 0  # an image without GT
    rank = np.argsort(rng.rand(16, 12), axis=1)
    for lst in (rank, rank[:, :5]):
        v, ok = ML.average_precision_per_image(hist, lst)
        v, ok = np.asarray(v, np.float64), np.asarray(ok)
        assert O.average_precision(hist, lst) == pytest.approx(v[ok].mean(), rel=1e-6)
        for name in ("img_recall", "pixel_recall", "img_accuracy"):
            pv, pok = (np.asarray(a) for a in JAX_FUNCS[name](hist, lst))
            assert NP_FUNCS[name](hist, lst) == pytest.approx(pv[pok].mean(), rel=1e-6)


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def test_table_json_csv(fx, tmp_path):
    acc = M.SegMetricAccumulator(K)
    for pred, label in _pairs(fx, "rzl0"):
        acc.update(M.intersect_and_union_np(pred, label, K, IGNORE))
    m = acc.compute(NAMES)
    table = R.format_table(m)
    assert "class00" in table and "57.73" in table and "34.65" in table  # IoU_0, mIoU (%)
    R.write_metrics_json(tmp_path / "m.json", m)
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["mIoU"] == m["mIoU"]
    assert doc["per_class"]["class19"]["IoU"] is None  # NaN -> null
    assert doc["per_class"]["class00"]["area_label"] == 1234
    R.write_metrics_csv(tmp_path / "m.csv", m)
    with open(tmp_path / "m.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["class"] == "class00" and float(rows[0]["IoU"]) == m["IoU"][0]
    assert math.isnan(float(rows[19]["Acc"]))
    assert float(rows[-1]["Acc"]) == m["aAcc"]
