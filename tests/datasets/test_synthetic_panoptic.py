"""The procedural panoptic dataset: determinism, a valid COCO-panoptic example (strict checks),
things with several instances, stuff, crowd, VOID, and a perfect PQ against itself."""

import numpy as np

from rankseg_jax.data import mask_targets as mt
from rankseg_jax.data.panoptic import (
    check_panoptic,
    encode_panoptic_png,
    read_panoptic_png,
    semantic_from_panoptic,
)
from rankseg_jax.data.synthetic_panoptic import SyntheticPanopticSource, synthetic_panoptic_info
from rankseg_jax.evaluation import panoptic_quality as pq


def test_deterministic_and_streams_differ():
    a = SyntheticPanopticSource(4, image_size=(64, 80), seed=3)
    b = SyntheticPanopticSource(4, image_size=(64, 80), seed=3)
    for key in ("image", "panoptic", "label"):
        np.testing.assert_array_equal(a[2][key], b[2][key])
    assert a[2]["segments_info"] == b[2]["segments_info"]
    val = SyntheticPanopticSource(4, image_size=(64, 80), seed=3, split="val")
    assert not np.array_equal(a[2]["image"], val[2]["image"])
    assert not np.array_equal(a[2]["image"], a[3]["image"])
    assert len(a) == 4 and a[0]["name"] == "synthetic_panoptic_train_0000000"


def test_examples_are_valid_panoptic_annotations():
    t, s = 5, 3
    info = synthetic_panoptic_info(t, s)
    assert info.num_classes == 8 and info.thing_classes == (0, 1, 2, 3, 4)
    src = SyntheticPanopticSource(24, image_size=(96, 128), num_things=t, num_stuff=s,
                                  crowd_prob=0.5)
    multi, crowds, void = 0, 0, []
    for i in range(len(src)):
        ex = src[i]
        h, w = ex["panoptic"].shape
        assert ex["image"].shape == (h, w, 3) and ex["image"].dtype == np.uint8
        segs = ex["segments_info"]
        # Strict COCO-panoptic consistency: every PNG id listed, every segment present, areas
        # exact (raises otherwise).
        check_panoptic(ex["panoptic"], segs, info, f"sample {i}")
        assert read_panoptic_png(encode_panoptic_png(ex["panoptic"]), "png").tolist() == \
            ex["panoptic"].tolist()
        np.testing.assert_array_equal(ex["label"], semantic_from_panoptic(ex["panoptic"], segs))
        things = [x["category_id"] for x in segs if x["isthing"] and not x["iscrowd"]]
        assert things and any(not x["isthing"] for x in segs)
        assert all(x["isthing"] == (x["category_id"] < t) for x in segs)
        multi += len(things) > len(set(things))
        crowds += sum(x["iscrowd"] for x in segs)
        void.append((ex["panoptic"] == 0).mean())
        for x in segs:
            ys, xs = np.nonzero(ex["panoptic"] == x["id"])
            assert x["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                 ys.max() - ys.min() + 1]
    assert multi >= 8 and crowds >= 4  # several instances per class; crowds occur
    assert 0.002 < np.mean(void) < 0.1


def test_targets_and_perfect_pq():
    src = SyntheticPanopticSource(6, image_size=(64, 64), num_things=4, num_stuff=2,
                                  crowd_prob=1.0)
    acc = pq.PQAccumulator(6, range(4))
    for i in range(len(src)):
        ex = src[i]
        segs = ex["segments_info"]
        cls, masks, valid = mt.panoptic_targets(ex["panoptic"], **mt.segments_table(segs, 16))
        non_crowd = [x for x in segs if not x["iscrowd"]]
        assert int(valid.sum()) == len(non_crowd) < len(segs)
        assert np.asarray(cls)[: len(non_crowd)].tolist() == [x["category_id"]
                                                              for x in non_crowd]
        table = pq.segment_table(segs)
        pred = [x for x in segs if not x["iscrowd"]]
        pred_map = np.where(np.isin(ex["panoptic"], [x["id"] for x in pred]), ex["panoptic"], 0)
        acc.update(pq.pq_image_stats(ex["panoptic"], table, pred_map, pq.segment_table(pred), 6))
    m = acc.compute()
    assert m["All"]["pq"] == m["Things"]["pq"] == m["Stuff"]["pq"] == 1.0
    assert m["All"]["n"] >= 5
