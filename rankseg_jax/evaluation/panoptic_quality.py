"""Panoptic quality (PQ / SQ / RQ) with the rules of panopticapi (`evaluation.py`, 7bb4655).

Per image (`pq_image_stats`, = `pq_compute_single_core`, `evaluation.py:77-165`):
  * predicted areas are recounted from the predicted map; a non-zero predicted id without a
    segment, or a predicted segment without pixels, is an error (`:94-106`);
  * GT areas are the GT segments' JSON `area` (ADE20K: may exceed the pixel count, see
    `data/panoptic.py`), as the official code uses them (`:126`);
  * a (GT, prediction) pair of the same category with a non-crowd GT and intersection > 0 is a
    TP iff IoU > 0.5, with union = pred_area + gt_area - inter - inter(GT VOID, pred): predicted
    pixels on VOID leave the union (`:113-134`). Every such pair counts (IoU > 0.5 makes them
    unique for consistent areas);
  * unmatched non-crowd GT -> FN; the *last* crowd GT segment of each category (a dict keyed by
    category, `:141-149`) is that category's crowd region;
  * unmatched prediction -> FP unless (inter with VOID + inter with its category's crowd
    region) / pred_area > 0.5 (`:152-163`).
Pixels of GT ids that are in no GT segment (and not 0) are skipped as panopticapi skips them.
All counting is vectorised: segment indices by `searchsorted`, one `bincount` of the combined
(GT segment, predicted segment) index, no loop over segments or pixels in Python.

Dataset level (`pq_average`, `:49-73`): per category PQ = ΣIoU / (TP + FP/2 + FN/2), SQ = ΣIoU /
TP (0 if TP = 0), RQ = TP / (TP + FP/2 + FN/2); averaged over the categories with TP + FP + FN > 0
for All, Things and Stuff. Exact accumulation: the IoU of a TP lies in (0.5, 1], where float64
is a multiple of 2**-53, so ΣIoU is kept as an exact integer number of 2**-53 units (two int64
halves) and is independent of image order and sharding; panopticapi's running float sum
differs from it by rounding only (≲ 1e-15 relative). Deviations, for malformed input only: a
repeated segment id raises (panopticapi keeps the last), a GT `area` smaller than the segment's
pixel count raises (panopticapi would compute an IoU > 1), so does a segment with id 0
(= VOID), and a group with no category to
average gives NaN (panopticapi divides by zero).
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from rankseg_jax.data.panoptic import VOID, read_panoptic_png, segment_lookup
from rankseg_jax.evaluation.reports import json_number, text_table

_UNIT = 1 << 53  # IoU units: an IoU in (0.5, 1] is k / 2**53 with an integer k


class PQStats(NamedTuple):
    """Per-category PQ counts, each int64 [C]; ΣIoU = (iou_hi * 2**32 + iou_lo) / 2**53."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    iou_hi: np.ndarray
    iou_lo: np.ndarray


class SegmentTable(NamedTuple):
    """Segments of one image as arrays: ids [S], categories [S] (index 0..C-1), iscrowd [S]
    bool and areas [S] (the GT JSON `area`; unused for predictions)."""

    ids: np.ndarray
    categories: np.ndarray
    iscrowd: np.ndarray
    areas: np.ndarray


def segment_table(segments: Sequence[dict], category_index: dict[int, int] | None = None
                  ) -> SegmentTable:
    """`segments_info` dicts -> `SegmentTable`.

    `category_index` maps `category_id` to 0..C-1 (None: `category_id` is already the index).
    Missing `iscrowd` / `area` read as 0. Raises ValueError for an unknown category.
    """
    cats = [int(s["category_id"]) for s in segments]
    if category_index is not None:
        unknown = sorted({c for c in cats if c not in category_index})
        if unknown:
            raise ValueError(f"unknown category_id {unknown}")
        cats = [category_index[c] for c in cats]
    return SegmentTable(np.array([int(s["id"]) for s in segments], np.int64),
                        np.array(cats, np.int64),
                        np.array([int(s.get("iscrowd", 0)) == 1 for s in segments], bool),
                        np.array([int(s.get("area", 0)) for s in segments], np.int64))


def _index(ids: np.ndarray, table: SegmentTable, what: str) -> np.ndarray:
    if len(np.unique(table.ids)) != len(table.ids) or (table.ids == VOID).any():
        raise ValueError(f"{what}: repeated segment ids or a segment with the VOID id 0")
    return segment_lookup(ids, table.ids).ravel()


def pq_image_stats(gt_ids: np.ndarray, gt: SegmentTable, pred_ids: np.ndarray,
                   pred: SegmentTable, num_categories: int) -> PQStats:
    """PQ counts of one image (module doc).

    Args:
      gt_ids, pred_ids: int [H, W] segment id maps (0 = VOID).
      gt, pred: their segment tables; categories index 0..C-1.
      num_categories: C.
    Returns:
      `PQStats` of int64 [C] arrays. Raises ValueError like panopticapi's KeyErrors (an id in
      the predicted map without a segment, a predicted segment without pixels) and for
      malformed input (module doc).
    """
    gt_ids, pred_ids = np.asarray(gt_ids, np.int64), np.asarray(pred_ids, np.int64)
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(f"GT map {gt_ids.shape} and prediction {pred_ids.shape} differ in size")
    n_cat = num_categories
    for t, what in ((gt, "GT"), (pred, "prediction")):
        if len(t.categories) and (t.categories.min() < 0 or t.categories.max() >= n_cat):
            raise ValueError(f"{what}: category index outside [0, {n_cat})")
    g, p = len(gt.ids), len(pred.ids)
    gi, pi = _index(gt_ids, gt, "GT"), _index(pred_ids, pred, "prediction")
    stray = np.unique(pred_ids.ravel()[(pi == p) & (pred_ids.ravel() != VOID)])
    if stray.size:
        raise ValueError(f"prediction: ids {stray[:8].tolist()} in the map have no segment")
    pred_area = np.bincount(pi, minlength=p + 1)[:p]
    if (pred_area == 0).any():
        raise ValueError(f"prediction: segments {pred.ids[pred_area == 0][:8].tolist()} have no "
                         "pixels in the map")
    gt_count = np.bincount(gi, minlength=g + 1)[:g]
    if (gt.areas < gt_count).any():
        raise ValueError(f"GT: segments {gt.ids[gt.areas < gt_count][:8].tolist()} have a JSON "
                         "area smaller than their pixel count")
    # inter[i, j] = #pixels of GT segment i and predicted segment j (row g: GT ids in no segment)
    inter = np.bincount(gi * (p + 1) + pi, minlength=(g + 1) * (p + 1)).reshape(g + 1, p + 1)
    inter = inter[:g, :p]
    void = np.bincount(pi[gt_ids.ravel() == VOID], minlength=p + 1)[:p]
    cand = ((inter > 0) & ~gt.iscrowd[:, None]
            & (gt.categories[:, None] == pred.categories[None, :]))
    union = pred_area[None, :] + gt.areas[:, None] - inter - void[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(cand, inter / np.maximum(union, 1), 0.0)
    match = cand & (iou > 0.5)
    rows, cols = np.nonzero(match)
    units = (iou[rows, cols] * _UNIT).astype(np.int64)  # exact: iou in (0.5, 1]
    tp_cat = gt.categories[rows]
    tp = np.bincount(tp_cat, minlength=n_cat)
    hi = np.bincount(tp_cat, weights=units >> 32, minlength=n_cat)
    lo = np.bincount(tp_cat, weights=units & 0xFFFFFFFF, minlength=n_cat)
    gt_matched, pred_matched = match.any(1), match.any(0)
    fn = np.bincount(gt.categories[~gt_matched & ~gt.iscrowd], minlength=n_cat)
    # Crowd region per category: the last crowd segment in JSON order (a dict overwritten).
    crowd_of = np.full(n_cat, -1, np.int64)
    crowd_idx = np.flatnonzero(gt.iscrowd)
    crowd_of[gt.categories[crowd_idx]] = crowd_idx  # later indices win, like the dict
    own = crowd_of[pred.categories]
    crowd_inter = np.where(own >= 0, inter[np.maximum(own, 0), np.arange(p)], 0) if g else 0
    ignored = (void + crowd_inter) / pred_area > 0.5
    fp = np.bincount(pred.categories[~pred_matched & ~ignored], minlength=n_cat)
    as64 = lambda x: np.asarray(x).astype(np.int64)  # noqa: E731 (bincount weights are float)
    return PQStats(as64(tp), as64(fp), as64(fn), as64(hi), as64(lo))


def iou_sums(stats: PQStats) -> list[float]:
    """Exact ΣIoU per category (Python ints -> correctly rounded float)."""
    return [((int(h) << 32) + int(lo)) / _UNIT
            for h, lo in zip(stats.iou_hi, stats.iou_lo, strict=True)]


class PQAccumulator:
    """Exact sum of per-image `PQStats` over a dataset; mergeable across hosts.

    Usage: `acc.update(pq_image_stats(...))` per image, `acc.merge(other)`, `acc.compute()`.
    """

    def __init__(self, num_categories: int, thing_classes: Sequence[int],
                 class_names: Sequence[str] | None = None):
        self.num_categories = int(num_categories)
        self.isthing = np.zeros(self.num_categories, bool)
        self.isthing[list(thing_classes)] = True
        self.class_names = (list(class_names) if class_names is not None
                            else [str(i) for i in range(self.num_categories)])
        if len(self.class_names) != self.num_categories:
            raise ValueError(f"{len(self.class_names)} names for {num_categories} categories")
        self.reset()

    def reset(self) -> None:
        """Zero all totals."""
        z = np.zeros(self.num_categories, np.int64)
        self.totals = PQStats(z, z.copy(), z.copy(), z.copy(), z.copy())
        self.num_images = 0

    def update(self, stats: PQStats) -> PQAccumulator:
        """Adds one image's (or any number of images') `PQStats`."""
        if len(stats.tp) != self.num_categories:
            raise ValueError(f"expected {self.num_categories} categories, got {len(stats.tp)}")
        self.totals = PQStats(*(t + np.asarray(a, np.int64)
                                for t, a in zip(self.totals, stats, strict=True)))
        self.num_images += 1
        return self

    def merge(self, other: PQAccumulator) -> PQAccumulator:
        """Adds another accumulator's totals (e.g. from another process)."""
        if other.num_categories != self.num_categories:
            raise ValueError("cannot merge accumulators with different num_categories")
        self.totals = PQStats(*(a + b for a, b in zip(self.totals, other.totals, strict=True)))
        self.num_images += other.num_images
        return self

    def state_dict(self) -> dict:
        """Totals as int64 arrays (checkpoints, cross-host gathers)."""
        return {**{k: v.copy() for k, v in self.totals._asdict().items()},
                "num_images": self.num_images}

    def load_state_dict(self, state: dict) -> None:
        """Restores totals written by `state_dict`."""
        self.totals = PQStats(*(np.asarray(state[k], np.int64) for k in PQStats._fields))
        self.num_images = int(state.get("num_images", 0))

    def compute(self) -> dict:
        """Metrics of the totals; see `compute_pq`."""
        return compute_pq(self.totals, self.isthing, self.class_names)


def compute_pq(stats: PQStats, isthing: np.ndarray, class_names: Sequence[str]) -> dict:
    """panopticapi's `pq_average` for All / Things / Stuff, plus the per-class values.

    Returns {'All'|'Things'|'Stuff': {'pq', 'sq', 'rq', 'n'} (fractions; NaN when n = 0),
    'per_class': {'pq', 'sq', 'rq'} float64 [C] (NaN where TP + FP + FN = 0, panopticapi
    writes 0 there), 'tp', 'fp', 'fn' int64 [C], 'iou_sum' float64 [C], 'isthing' bool [C],
    'valid' bool [C], 'class_names'}.
    """
    tp, fp, fn = (np.asarray(x, np.int64) for x in stats[:3])
    iou = np.array(iou_sums(stats), np.float64)
    valid = (tp + fp + fn) > 0
    denom = tp + 0.5 * fp + 0.5 * fn
    with np.errstate(divide="ignore", invalid="ignore"):
        pq = np.where(valid, iou / denom, np.nan)
        sq = np.where(valid, np.where(tp > 0, iou / np.maximum(tp, 1), 0.0), np.nan)
        rq = np.where(valid, tp / denom, np.nan)
    out = {"per_class": {"pq": pq, "sq": sq, "rq": rq}, "tp": tp, "fp": fp, "fn": fn,
           "iou_sum": iou, "isthing": np.asarray(isthing, bool), "valid": valid,
           "class_names": list(class_names)}
    for name, sel in (("All", np.ones_like(valid)), ("Things", out["isthing"]),
                      ("Stuff", ~out["isthing"])):
        idx = np.flatnonzero(sel & valid)
        n = len(idx)
        # Sequential sums in category order, as pq_average accumulates them.
        mean = lambda v, idx=idx, n=n: sum(float(v[i]) for i in idx) / n if n else float("nan")
        out[name] = {"pq": mean(pq), "sq": mean(sq), "rq": mean(rq), "n": n}
    return out


# --------------------------------------------------------------------------- reports

_GROUPS = ("All", "Things", "Stuff")


def format_pq_table(metrics: dict, digits: int = 1) -> str:
    """Console tables: per class (name, thing/stuff, PQ SQ RQ in %, TP FP FN) and the
    panopticapi summary (All / Things / Stuff: PQ SQ RQ N). Returns a string."""
    pct = lambda x: "nan" if np.isnan(x) else f"{100 * x:.{digits}f}"  # noqa: E731
    rows = [[n, "thing" if metrics["isthing"][i] else "stuff",
             *(pct(metrics["per_class"][k][i]) for k in ("pq", "sq", "rq")),
             *(str(int(metrics[k][i])) for k in ("tp", "fp", "fn"))]
            for i, n in enumerate(metrics["class_names"])]
    summary = [[g, *(pct(metrics[g][k]) for k in ("pq", "sq", "rq")), str(metrics[g]["n"])]
               for g in _GROUPS]
    return "\n".join([
        "per class results:",
        text_table(["Class", "Kind", "PQ", "SQ", "RQ", "TP", "FP", "FN"], rows, True),
        "Summary:", text_table(["", "PQ", "SQ", "RQ", "N"], summary, True)])


def write_pq_json(path: str | os.PathLike, metrics: dict, extra: dict | None = None) -> None:
    """Writes {'All'|'Things'|'Stuff': {pq, sq, rq, n}, 'per_class': {name: {pq, sq, rq,
    isthing, tp, fp, fn, iou_sum}}} (fractions; NaN as null); `extra` under 'extra'."""
    doc: dict = {g: {k: (json_number(v) if k != "n" else v) for k, v in metrics[g].items()}
                 for g in _GROUPS}
    doc["per_class"] = {
        n: {**{k: json_number(metrics["per_class"][k][i]) for k in ("pq", "sq", "rq")},
            "isthing": bool(metrics["isthing"][i]),
            **{k: int(metrics[k][i]) for k in ("tp", "fp", "fn")},
            "iou_sum": float(metrics["iou_sum"][i])}
        for i, n in enumerate(metrics["class_names"])}
    if extra is not None:
        doc["extra"] = extra
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)


def write_pq_csv(path: str | os.PathLike, metrics: dict) -> None:
    """Writes one CSV row per class (class, isthing, pq, sq, rq, tp, fp, fn, iou_sum; values as
    fractions with `repr`, NaN as `nan`), then one row per group (All, Things, Stuff) with the
    category count in the `tp` column's place under the header `n`."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "isthing", "pq", "sq", "rq", "tp", "fp", "fn", "iou_sum"])
        for i, n in enumerate(metrics["class_names"]):
            w.writerow([n, int(metrics["isthing"][i]),
                        *(repr(float(metrics["per_class"][k][i])) for k in ("pq", "sq", "rq")),
                        *(int(metrics[k][i]) for k in ("tp", "fp", "fn")),
                        repr(float(metrics["iou_sum"][i]))])
        w.writerow(["group", "", "pq", "sq", "rq", "n", "", "", ""])
        for g in _GROUPS:
            w.writerow([g, "", *(repr(float(metrics[g][k])) for k in ("pq", "sq", "rq")),
                        metrics[g]["n"], "", "", ""])


# --------------------------------------------------------------------------- files


def pq_from_files(gt_json_file: str | os.PathLike, pred_json_file: str | os.PathLike,
                  gt_folder: str | os.PathLike | None = None,
                  pred_folder: str | os.PathLike | None = None) -> dict:
    """panopticapi's `pq_compute` on COCO-panoptic files (`evaluation.py:168-220`).

    Folders default to the JSON path without '.json'. Categories, their order (the index of a
    category) and `isthing` come from the GT JSON; predictions are paired with GT annotations
    by `image_id`. Returns the `compute_pq` dict (use `panopticapi_results` for pq_compute's
    layout). Raises ValueError for an image without a prediction, an unknown category, or a
    predicted PNG whose ids disagree with its `segments_info`.
    """
    gt_json_file, pred_json_file = pathlib.Path(gt_json_file), pathlib.Path(pred_json_file)
    gt_folder = pathlib.Path(gt_folder or str(gt_json_file).replace(".json", ""))
    pred_folder = pathlib.Path(pred_folder or str(pred_json_file).replace(".json", ""))
    gt_doc, pred_doc = (json.loads(f.read_text()) for f in (gt_json_file, pred_json_file))
    cats = gt_doc["categories"]
    index = {int(c["id"]): i for i, c in enumerate(cats)}
    acc = PQAccumulator(len(cats), [i for i, c in enumerate(cats) if c["isthing"] == 1],
                        [c.get("name", str(c["id"])) for c in cats])
    preds = {a["image_id"]: a for a in pred_doc["annotations"]}
    for gt_ann in gt_doc["annotations"]:
        if gt_ann["image_id"] not in preds:
            raise ValueError(f"no prediction for the image with id: {gt_ann['image_id']}")
        pred_ann = preds[gt_ann["image_id"]]
        maps = [read_panoptic_png((folder / ann["file_name"]).read_bytes(),
                                  str(folder / ann["file_name"]))
                for folder, ann in ((gt_folder, gt_ann), (pred_folder, pred_ann))]
        where = f"image {gt_ann['image_id']}"
        try:
            stats = pq_image_stats(maps[0], segment_table(gt_ann["segments_info"], index),
                                   maps[1], segment_table(pred_ann["segments_info"], index),
                                   len(cats))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e
        acc.update(stats)
    return acc.compute()


def panopticapi_results(metrics: dict, category_ids: Sequence[int]) -> dict:
    """`compute_pq` output -> `pq_compute`'s return value: {'All'|'Things'|'Stuff': {pq, sq,
    rq, n}, 'per_class': {category_id: {pq, sq, rq}}} with 0.0 for categories without TP, FP
    or FN (as `pq_average` writes them)."""
    out = {g: dict(metrics[g]) for g in _GROUPS}
    out["per_class"] = {
        int(cid): {k: float(metrics["per_class"][k][i]) if metrics["valid"][i] else 0.0
                   for k in ("pq", "sq", "rq")}
        for i, cid in enumerate(category_ids)}
    return out
