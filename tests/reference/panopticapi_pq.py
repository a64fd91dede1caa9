"""Test-only port of panopticapi's PQ (cocodataset/panopticapi@7bb4655, `evaluation.py`).

Written independently of `rankseg_jax.evaluation.panoptic_quality`, mirroring the official
code structure line by line: dicts of segments, `np.unique` of the combined id
`gt * 256**3 + pred`, Python loops over the (gt, pred) pairs and segments, a running float sum
of IoUs and `pq_average` over the `categories` dict. Only the multiprocessing, the printing
and the `@get_traceback` wrapper are left out. `pq_compute_files` reads PNGs with PIL as
`np.uint32` and decodes `rgb2id` exactly like the official `pq_compute_single_core`.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np
from PIL import Image

OFFSET = 256 * 256 * 256
VOID = 0


def rgb2id(color):  # panopticapi/utils.py:73-78
    if isinstance(color, np.ndarray) and len(color.shape) == 3:
        if color.dtype == np.uint8:
            color = color.astype(np.int32)
        return color[:, :, 0] + 256 * color[:, :, 1] + 256 * 256 * color[:, :, 2]
    return int(color[0] + 256 * color[1] + 256 * 256 * color[2])


class PQStatCat:
    def __init__(self):
        self.iou = 0.0
        self.tp = 0
        self.fp = 0
        self.fn = 0

    def __iadd__(self, other):
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self


class PQStat:
    def __init__(self):
        self.pq_per_cat = defaultdict(PQStatCat)

    def __getitem__(self, i):
        return self.pq_per_cat[i]

    def __iadd__(self, other):
        for label, stat in other.pq_per_cat.items():
            self.pq_per_cat[label] += stat
        return self

    def pq_average(self, categories, isthing):
        pq, sq, rq, n = 0, 0, 0, 0
        per_class_results = {}
        for label, label_info in categories.items():
            if isthing is not None:
                cat_isthing = label_info["isthing"] == 1
                if isthing != cat_isthing:
                    continue
            iou = self.pq_per_cat[label].iou
            tp = self.pq_per_cat[label].tp
            fp = self.pq_per_cat[label].fp
            fn = self.pq_per_cat[label].fn
            if tp + fp + fn == 0:
                per_class_results[label] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            pq_class = iou / (tp + 0.5 * fp + 0.5 * fn)
            sq_class = iou / tp if tp != 0 else 0
            rq_class = tp / (tp + 0.5 * fp + 0.5 * fn)
            per_class_results[label] = {"pq": pq_class, "sq": sq_class, "rq": rq_class}
            pq += pq_class
            sq += sq_class
            rq += rq_class
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class_results


def pq_single_image(pq_stat, image_id, pan_gt, gt_segments, pan_pred, pred_segments,
                    categories):
    """The body of the official per-image loop (`evaluation.py:84-163`) on decoded id maps.

    gt_segments / pred_segments: `segments_info` lists (dicts are copied). Mutates pq_stat.
    """
    gt_segms = {el["id"]: dict(el) for el in gt_segments}
    pred_segms = {el["id"]: dict(el) for el in pred_segments}

    # predicted segments area calculation + prediction sanity checks
    pred_labels_set = set(el["id"] for el in pred_segments)
    labels, labels_cnt = np.unique(pan_pred, return_counts=True)
    for label, label_cnt in zip(labels, labels_cnt, strict=True):
        if label not in pred_segms:
            if label == VOID:
                continue
            raise KeyError(f"In the image with ID {image_id} segment with ID {label} is "
                           "presented in PNG and not presented in JSON.")
        pred_segms[label]["area"] = label_cnt
        pred_labels_set.remove(label)
        if pred_segms[label]["category_id"] not in categories:
            raise KeyError(f"In the image with ID {image_id} segment with ID {label} has "
                           f"unknown category_id {pred_segms[label]['category_id']}.")
    if len(pred_labels_set) != 0:
        raise KeyError(f"In the image with ID {image_id} the following segment IDs "
                       f"{list(pred_labels_set)} are presented in JSON and not presented in PNG.")

    # confusion matrix calculation
    pan_gt_pred = pan_gt.astype(np.uint64) * OFFSET + pan_pred.astype(np.uint64)
    gt_pred_map = {}
    labels, labels_cnt = np.unique(pan_gt_pred, return_counts=True)
    for label, intersection in zip(labels, labels_cnt, strict=True):
        gt_id = label // OFFSET
        pred_id = label % OFFSET
        gt_pred_map[(gt_id, pred_id)] = intersection

    # count all matched pairs
    gt_matched = set()
    pred_matched = set()
    for label_tuple, intersection in gt_pred_map.items():
        gt_label, pred_label = label_tuple
        if gt_label not in gt_segms:
            continue
        if pred_label not in pred_segms:
            continue
        if gt_segms[gt_label]["iscrowd"] == 1:
            continue
        if gt_segms[gt_label]["category_id"] != pred_segms[pred_label]["category_id"]:
            continue
        union = (pred_segms[pred_label]["area"] + gt_segms[gt_label]["area"] - intersection
                 - gt_pred_map.get((VOID, pred_label), 0))
        iou = intersection / union
        if iou > 0.5:
            pq_stat[gt_segms[gt_label]["category_id"]].tp += 1
            pq_stat[gt_segms[gt_label]["category_id"]].iou += iou
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)

    # count false negatives
    crowd_labels_dict = {}
    for gt_label, gt_info in gt_segms.items():
        if gt_label in gt_matched:
            continue
        # crowd segments are ignored
        if gt_info["iscrowd"] == 1:
            crowd_labels_dict[gt_info["category_id"]] = gt_label
            continue
        pq_stat[gt_info["category_id"]].fn += 1

    # count false positives
    for pred_label, pred_info in pred_segms.items():
        if pred_label in pred_matched:
            continue
        # intersection of the segment with VOID
        intersection = gt_pred_map.get((VOID, pred_label), 0)
        # plus intersection with corresponding CROWD region if it exists
        if pred_info["category_id"] in crowd_labels_dict:
            intersection += gt_pred_map.get(
                (crowd_labels_dict[pred_info["category_id"]], pred_label), 0)
        # predicted segment is ignored if more than half of it is VOID and CROWD
        if intersection / pred_info["area"] > 0.5:
            continue
        pq_stat[pred_info["category_id"]].fp += 1
    return pq_stat


def summarize(pq_stat, categories):
    """`pq_compute`'s result dict (`evaluation.py:205-215`)."""
    results = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        results[name], per_class_results = pq_stat.pq_average(categories, isthing=isthing)
        if name == "All":
            results["per_class"] = per_class_results
    return results


def pq_compute_files(gt_json_file, pred_json_file, gt_folder, pred_folder):
    """`pq_compute` on files, single process (returns the same dict)."""
    with open(gt_json_file) as f:
        gt_json = json.load(f)
    with open(pred_json_file) as f:
        pred_json = json.load(f)
    categories = {el["id"]: el for el in gt_json["categories"]}
    pred_annotations = {el["image_id"]: el for el in pred_json["annotations"]}
    pq_stat = PQStat()
    for gt_ann in gt_json["annotations"]:
        pred_ann = pred_annotations[gt_ann["image_id"]]
        pan_gt = np.array(Image.open(os.path.join(gt_folder, gt_ann["file_name"])),
                          dtype=np.uint32)
        pan_gt = rgb2id(pan_gt)
        pan_pred = np.array(Image.open(os.path.join(pred_folder, pred_ann["file_name"])),
                            dtype=np.uint32)
        pan_pred = rgb2id(pan_pred)
        pq_single_image(pq_stat, gt_ann["image_id"], pan_gt, gt_ann["segments_info"],
                        pan_pred, pred_ann["segments_info"], categories)
    return summarize(pq_stat, categories)
