"""Segmentation metrics with mmseg 0.17 semantics (multi-label ones: multilabel_metrics.py).

Two layers:

* **On device (JAX, jit-able)**: per-image / per-batch area vectors
  (:func:`intersect_and_union`, :func:`intersect_and_union_per_image`) and the per-image label
  class histogram (:func:`class_histogram`).
  Everything is a scatter-add / bincount, O(H·W + K) memory, never a [K, H, W] one-hot.
* **On host (numpy)**: exact int64 accumulation (:class:`SegMetricAccumulator`), the metric
  formulas of ``mmseg.core.evaluation.eval_metrics`` (:func:`compute_metrics`), the rounding of
  ``CustomDataset.evaluate`` (:func:`mmseg_eval_results`), console table, JSON and CSV writers.
Area semantics (official_spec.md §9): pixels whose label equals ``ignore_index`` are removed
from both prediction and label *before* counting; predictions / labels outside ``[0, K)``
are counted nowhere (``torch.histc(bins=K, min=0, max=K-1)`` drops them).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rankseg_jax.rankseg import ranking

__all__ = [
    "Areas",
    "intersect_and_union",
    "intersect_and_union_per_image",
    "intersect_and_union_np",
    "confusion_matrix",
    "class_histogram",
    "reduce_zero_label",
    "SegMetricAccumulator",
    "compute_metrics",
    "mmseg_round",
    "mmseg_eval_results",
    "format_table",
    "write_metrics_json",
    "write_metrics_csv",
]


class Areas(NamedTuple):
    """The four mmseg area vectors, each [K] (or [B, K] for the per-image variant).

    A NamedTuple is a JAX pytree, so it can be returned from ``jax.jit`` directly.
    """

    area_intersect: Any
    area_union: Any
    area_pred: Any
    area_label: Any


# --------------------------------------------------------------------------------------------
# On-device area counting (JAX)
# --------------------------------------------------------------------------------------------


def _area_masks(pred, label, num_classes, ignore_index, valid):
    """Shared masking logic of the JAX area functions (inputs already [B, N] int32)."""
    # mmseg drops ignored pixels from *both* pred and label before histc.
    keep = label != ignore_index
    if valid is not None:
        keep = keep & valid
    # histc over [0, K-1]: anything outside is not counted (an explicit range check is needed
    # because the sentinel trick only protects values that are masked out).
    pred_in = keep & (pred >= 0) & (pred < num_classes)
    label_in = keep & (label >= 0) & (label < num_classes)
    inter = label_in & (pred == label)
    return pred_in, label_in, inter


def intersect_and_union_per_image(
    pred: jax.Array,
    label: jax.Array,
    num_classes: int,
    ignore_index: int = 255,
    valid: jax.Array | None = None,
) -> Areas:
    """Per-image mmseg areas on device.

    Args:
        pred: [B, H, W] (any trailing shape) integer class map (argmax prediction).
        label: [B, H, W] integer label map, already ``reduce_zero_label``-ed if applicable.
        num_classes: K (static under jit).
        ignore_index: label value dropped from both pred and label (static).
        valid: optional [B, H, W] bool; False marks padding pixels / padded images, which are
            excluded exactly like ignored pixels.

    Returns:
        :class:`Areas` of int32 [B, K] arrays (intersect, union, pred, label).
    """
    pred = jnp.asarray(pred)
    label = jnp.asarray(label)
    b = pred.shape[0]
    pred = pred.reshape(b, -1).astype(jnp.int32)
    label = label.reshape(b, -1).astype(jnp.int32)
    if valid is not None:
        valid = jnp.asarray(valid).reshape(b, -1).astype(bool)
    pred_in, label_in, inter = _area_masks(pred, label, num_classes, ignore_index, valid)
    area_intersect = ranking.batched_bincount(label, inter, num_classes)
    area_pred = ranking.batched_bincount(pred, pred_in, num_classes)
    area_label = ranking.batched_bincount(label, label_in, num_classes)
    area_union = area_pred + area_label - area_intersect
    return Areas(area_intersect, area_union, area_pred, area_label)


def intersect_and_union(
    pred: jax.Array,
    label: jax.Array,
    num_classes: int,
    ignore_index: int = 255,
    valid: jax.Array | None = None,
) -> Areas:
    """Areas summed over all pixels of ``pred`` / ``label`` (one image or a whole batch).

    Args:
        pred: [H, W] or [B, H, W] integer prediction.
        label: same shape as ``pred``; pixels equal to ``ignore_index`` are dropped.
        num_classes: K (static under jit).
        ignore_index: ignored label value (static).
        valid: optional bool mask of the same shape (False = padding, not counted).

    Returns:
        :class:`Areas` of int32 [K] vectors. Summing over images is what mmseg does
        (dataset-level totals), so a batch sum is the same as a sum of per-image areas.
    """
    pred = jnp.asarray(pred).reshape(1, -1)
    label = jnp.asarray(label).reshape(1, -1)
    if valid is not None:
        valid = jnp.asarray(valid).reshape(1, -1)
    areas = intersect_and_union_per_image(pred, label, num_classes, ignore_index, valid)
    return Areas(*(a[0] for a in areas))


def confusion_matrix(
    pred: jax.Array,
    label: jax.Array,
    num_classes: int,
    ignore_index: int = 255,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Confusion matrix on device: ``cm[t, p]`` = #pixels with label t predicted as p.

    Args:
        pred, label: integer maps of the same shape (any shape); ``valid`` optional bool mask.
        num_classes: K (static).

    Returns:
        int32 [K, K]. Only the K² output is allocated (one bincount over ``t*K + p``); pixels
        with label or prediction outside [0, K) or with label == ignore_index are dropped.
    """
    pred = jnp.asarray(pred).reshape(1, -1).astype(jnp.int32)
    label = jnp.asarray(label).reshape(1, -1).astype(jnp.int32)
    if valid is not None:
        valid = jnp.asarray(valid).reshape(1, -1).astype(bool)
    pred_in, label_in, _ = _area_masks(pred, label, num_classes, ignore_index, valid)
    k2 = num_classes * num_classes
    cm = ranking.batched_bincount(label * num_classes + pred, pred_in & label_in, k2)
    return cm[0].reshape(num_classes, num_classes)


def class_histogram(
    label: jax.Array,
    num_classes: int,
    ignore_index: int = 255,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Per-image label class histogram on device (the official ``torch.histc`` of the label).

    Args:
        label: [B, H, W] integer labels.
        num_classes: K (static).
        ignore_index: not counted (nor is anything outside [0, K)).
        valid: optional [B, H, W] bool mask (False = padding, not counted).

    Returns:
        int32 [B, K] pixel counts; ``hist > 0`` is the multi-label target.
    """
    label = jnp.asarray(label)
    keep = label != ignore_index
    if valid is not None:
        keep = keep & jnp.asarray(valid).astype(bool)
    return ranking.class_histogram(label, num_classes, valid=keep)


# --------------------------------------------------------------------------------------------
# Host-side numpy path
# --------------------------------------------------------------------------------------------


def intersect_and_union_np(
    pred: np.ndarray,
    label: np.ndarray,
    num_classes: int,
    ignore_index: int = 255,
    valid: np.ndarray | None = None,
) -> Areas:
    """Numpy twin of :func:`intersect_and_union` (int64, any shape, summed over all pixels).

    Written the mmseg way (boolean-index the kept pixels, then histogram) so that it is an
    independent check of the scatter-add JAX path.

    Returns:
        :class:`Areas` of int64 [K] vectors.
    """
    pred = np.asarray(pred).astype(np.int64).ravel()
    label = np.asarray(label).astype(np.int64).ravel()
    mask = label != ignore_index
    if valid is not None:
        mask &= np.asarray(valid, dtype=bool).ravel()
    pred, label = pred[mask], label[mask]

    def hist(x):
        # torch.histc(bins=K, min=0, max=K-1) on integers == bincount of values in [0, K).
        x = x[(x >= 0) & (x < num_classes)]
        return np.bincount(x, minlength=num_classes).astype(np.int64)

    area_intersect = hist(pred[pred == label])
    area_pred = hist(pred)
    area_label = hist(label)
    return Areas(area_intersect, area_pred + area_label - area_intersect, area_pred, area_label)


def reduce_zero_label(label, int16: bool = False):
    """mmseg ``reduce_zero_label`` as a pure function (the input is never modified).

    uint8-style datasets (ADE20K, COCO-Stuff-10k; ignore 255): 0 -> 255, then label - 1,
    then 254 -> 255; i.e. 0 ("other") and 255 both end up as 255, L -> L-1 otherwise.
    int16-style datasets (ignore -1): label - 1, then -2 -> -1.

    mmseg's ``intersect_and_union`` does this in place on a tensor sharing memory with the
    caller's numpy array (official_spec.md §Bugs 4); we copy instead.

    Args:
        label: integer array (numpy or JAX), any shape.
        int16: use the int16 rule.

    Returns:
        A new array of the same shape and dtype (numpy in -> numpy out, JAX in -> JAX out).
    """
    xp = jnp if isinstance(label, jax.Array) else np
    label = xp.asarray(label)
    dtype = label.dtype
    if int16:
        out = label - xp.asarray(1, dtype=dtype)
        return xp.where(out == -2, xp.asarray(-1, dtype=dtype), out).astype(dtype)
    # Same three steps as mmseg; with 0 already moved to 255 the subtraction never wraps
    # for uint8.
    out = xp.where(label == 0, xp.asarray(255, dtype=dtype), label)
    out = out - xp.asarray(1, dtype=dtype)
    return xp.where(out == 254, xp.asarray(255, dtype=dtype), out).astype(dtype)


def _as_areas_np(areas) -> Areas:
    """Convert 4 arrays ([K] or [..., K], numpy or JAX) to int64 [K] totals."""
    if isinstance(areas, dict):
        areas = (
            areas["area_intersect"],
            areas["area_union"],
            areas["area_pred"],
            areas["area_label"],
        )
    arrs = [np.asarray(a) for a in areas]
    if len(arrs) != 4:
        raise ValueError(f"expected 4 area arrays, got {len(arrs)}")
    out = []
    for a in arrs:
        if np.issubdtype(a.dtype, np.floating):
            # Float areas (e.g. mmseg's float64 totals) must hold exact integers.
            if not np.all(a == np.round(a)):
                raise ValueError("area arrays must contain integer counts")
        a = a.astype(np.int64)
        # Leading axes (images of a batch) are summed: totals are dataset-level sums.
        out.append(a.reshape(-1, a.shape[-1]).sum(0))
    return Areas(*out)


class SegMetricAccumulator:
    """Exact host-side accumulation of mmseg areas over a dataset (int64 totals).

    Usage::

        acc = SegMetricAccumulator(K)
        for batch: acc.update(jitted_intersect_and_union(pred, label, valid=valid))
        metrics = acc.compute(class_names)

    mmseg sums per-image float32 histograms (``pre_eval``); int64 avoids the rounding and
    makes the result independent of batch order / sharding.
    """

    def __init__(self, num_classes: int):
        """Create an empty accumulator for ``num_classes`` classes."""
        self.num_classes = int(num_classes)
        self.reset()

    def reset(self) -> None:
        """Zero all totals."""
        z = np.zeros(self.num_classes, np.int64)
        self.totals = Areas(z.copy(), z.copy(), z.copy(), z.copy())
        self.num_updates = 0

    def update(self, areas) -> SegMetricAccumulator:
        """Add areas: an :class:`Areas` / 4-tuple / dict of [K] or [B, K] arrays (JAX ok)."""
        add = _as_areas_np(areas)
        if add.area_label.shape[0] != self.num_classes:
            raise ValueError(f"expected K={self.num_classes}, got {add.area_label.shape[0]}")
        self.totals = Areas(*(t + a for t, a in zip(self.totals, add, strict=True)))
        self.num_updates += 1
        return self

    def merge(self, other: SegMetricAccumulator) -> SegMetricAccumulator:
        """Add another accumulator's totals into this one (e.g. from another host)."""
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge accumulators with different num_classes")
        self.totals = Areas(*(t + a for t, a in zip(self.totals, other.totals, strict=True)))
        self.num_updates += other.num_updates
        return self

    def compute(self, class_names: Sequence[str] | None = None, beta: float = 1.0) -> dict:
        """Metrics of the current totals; see :func:`compute_metrics`."""
        return compute_metrics(self.totals, class_names=class_names, beta=beta)

    def state_dict(self) -> dict:
        """Totals as plain int64 numpy arrays (for checkpointing / cross-host gathers)."""
        return {**{k: v.copy() for k, v in self.totals._asdict().items()},
                "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore totals written by :meth:`state_dict`."""
        self.totals = _as_areas_np(state)
        self.num_updates = int(state.get("num_updates", 0))


def _div(a, b):
    """float64 a / b with 0/0 -> NaN and no warnings (mmseg's torch division semantics)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(a, np.float64) / np.asarray(b, np.float64)


def _nanmean(x) -> float:
    """np.nanmean without the all-NaN RuntimeWarning (result is NaN then, like mmseg)."""
    x = np.asarray(x, np.float64)
    if np.all(np.isnan(x)):
        return float("nan")
    return float(np.nanmean(x))


def compute_metrics(totals, class_names: Sequence[str] | None = None, beta: float = 1.0) -> dict:
    """mmseg ``eval_metrics(metrics=['mIoU', 'mDice', 'mFscore'])`` from dataset totals.

    Args:
        totals: :class:`Areas` (or 4-tuple / dict) of [K] (or [B, K], summed) counts.
        class_names: K names; defaults to ``"0".."K-1"``.
        beta: F-score beta (mmseg default 1).

    Returns:
        dict with float64 per-class arrays [K] ``IoU, Acc, Dice, Fscore, Precision, Recall``
        (NaN where 0/0: IoU for classes neither predicted nor labelled, Acc/Recall for
        classes absent from the labels, Precision for never-predicted classes), scalars
        ``aAcc`` (ΣI/Σlabel), ``mIoU, mAcc, mDice, mFscore, mPrecision, mRecall`` (nanmean,
        i.e. NaN classes excluded; a class predicted but absent from the labels has IoU 0
        and counts), the int64 ``area_*`` totals and ``class_names``.
    """
    t = _as_areas_np(totals)
    k = t.area_label.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} classes")
    inter, union, apred, alabel = (x.astype(np.float64) for x in t)
    iou = _div(inter, union)
    acc = _div(inter, alabel)
    dice = _div(2 * inter, apred + alabel)
    precision = _div(inter, apred)
    recall = acc.copy()
    # mmseg f_score: (1+β²)·P·R / (β²·P + R), evaluated per class in torch (0/0 -> NaN).
    fscore = _div((1 + beta**2) * precision * recall, beta**2 * precision + recall)
    out = {
        "aAcc": float(_div(inter.sum(), alabel.sum())),
        "IoU": iou,
        "Acc": acc,
        "Dice": dice,
        "Fscore": fscore,
        "Precision": precision,
        "Recall": recall,
    }
    for key in ("IoU", "Acc", "Dice", "Fscore", "Precision", "Recall"):
        out["m" + key] = _nanmean(out[key])
    out.update(
        area_intersect=t.area_intersect,
        area_union=t.area_union,
        area_pred=t.area_pred,
        area_label=t.area_label,
        class_names=names,
    )
    return out


def mmseg_round(x):
    """``round(100·x, 2) / 100`` exactly as ``CustomDataset.evaluate`` (np.round, half-even)."""
    return np.round(np.asarray(x, np.float64) * 100, 2) / 100.0


def mmseg_eval_results(
    metrics: dict,
    class_names: Sequence[str] | None = None,
    keys: Sequence[str] = ("IoU", "Acc"),
) -> dict:
    """The flat dict returned by mmseg ``CustomDataset.evaluate`` (rounded values).

    Args:
        metrics: output of :func:`compute_metrics`.
        class_names: defaults to ``metrics['class_names']``.
        keys: per-class metrics to report; ``('IoU', 'Acc')`` is ``metric='mIoU'``,
            add ``'Dice'`` / ``'Fscore', 'Precision', 'Recall'`` for mDice / mFscore.

    Returns:
        ``{'aAcc': .., 'mIoU': .., 'mAcc': .., 'IoU.<name>': .., 'Acc.<name>': .., ...}``;
        summaries are ``round(100·nanmean(x), 2)/100``, per-class ``round(100·x, 2)/100``.
    """
    names = list(class_names) if class_names is not None else list(metrics["class_names"])
    res = {"aAcc": float(mmseg_round(metrics["aAcc"]))}
    for key in keys:
        res["m" + key] = float(mmseg_round(_nanmean(metrics[key])))
    for key in keys:
        vals = mmseg_round(metrics[key])
        for i, name in enumerate(names):
            res[f"{key}.{name}"] = float(vals[i])
    return res


def _fmt(x: float, digits: int) -> str:
    return "nan" if x is None or math.isnan(x) else f"{100 * x:.{digits}f}"


def format_table(
    metrics: dict,
    class_names: Sequence[str] | None = None,
    keys: Sequence[str] = ("IoU", "Acc"),
    digits: int = 2,
) -> str:
    """Console table: one row per class (name, IoU, Acc in %), then the summary row.

    Args:
        metrics: output of :func:`compute_metrics`.
        class_names: defaults to ``metrics['class_names']``.
        keys: per-class columns.
        digits: decimals of the percentages.

    Returns:
        A multi-line string (no trailing newline).
    """
    names = list(class_names) if class_names is not None else list(metrics["class_names"])
    header = ["Class", *keys]
    rows = [[n, *(_fmt(float(metrics[k][i]), digits) for k in keys)] for i, n in enumerate(names)]
    summary_header = ["aAcc", *("m" + k for k in keys)]
    summary = [_fmt(metrics["aAcc"], digits), *(_fmt(metrics["m" + k], digits) for k in keys)]

    def block(head, body, name_col):
        widths = [max(len(str(r[c])) for r in [head, *body]) for c in range(len(head))]
        sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
        # Class names left-aligned, numbers right-aligned, so decimal points line up.
        line = lambda r: "| " + " | ".join(
            str(v).ljust(w) if (name_col and c == 0) else str(v).rjust(w)
            for c, (v, w) in enumerate(zip(r, widths, strict=True))
        ) + " |"
        return [sep, line(head), sep, *(line(r) for r in body), sep]

    return "\n".join(["per class results:", *block(header, rows, True),
                      "Summary:", *block(summary_header, [summary], False)])


def _json_num(x):
    """JSON has no NaN: write null (strict JSON parsers reject NaN literals)."""
    x = float(x)
    return None if math.isnan(x) else x


_PER_CLASS = ("IoU", "Acc", "Dice", "Fscore", "Precision", "Recall")
_AREAS = ("area_intersect", "area_union", "area_pred", "area_label")


def write_metrics_json(path: str | os.PathLike, metrics: dict, extra: dict | None = None) -> None:
    """Write metrics as JSON: summaries, ``per_class`` {name: {IoU, Acc, ..., areas}}.

    NaN becomes ``null``. ``extra`` (JSON-serializable) is stored under ``"extra"``.
    """
    summary_keys = ["aAcc", *("m" + k for k in _PER_CLASS)]
    doc: dict[str, Any] = {k: _json_num(metrics[k]) for k in summary_keys if k in metrics}
    per_class = {}
    for i, name in enumerate(metrics["class_names"]):
        row = {k: _json_num(metrics[k][i]) for k in _PER_CLASS if k in metrics}
        row.update({k: int(metrics[k][i]) for k in _AREAS if k in metrics})
        per_class[name] = row
    doc["per_class"] = per_class
    if extra is not None:
        doc["extra"] = extra
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)


def write_metrics_csv(path: str | os.PathLike, metrics: dict) -> None:
    """Write one CSV row per class: class, IoU, Acc, Dice, Fscore, Precision, Recall, areas.

    Values are fractions (not %) written with ``repr`` (round-trips float64 exactly), NaN as
    ``nan``. Two summary rows follow: ``mean`` (the nanmeans mIoU, mAcc, ...) and ``aAcc``
    (overall pixel accuracy, in the ``Acc`` column).
    """
    cols = [k for k in _PER_CLASS if k in metrics]
    areas = [k for k in _AREAS if k in metrics]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", *cols, *areas])
        for i, name in enumerate(metrics["class_names"]):
            w.writerow([name, *(repr(float(metrics[k][i])) for k in cols),
                        *(int(metrics[k][i]) for k in areas)])
        w.writerow(["mean", *(repr(float(metrics["m" + k])) for k in cols), *([""] * len(areas))])
        w.writerow(["aAcc", *(repr(float(metrics["aAcc"])) if k == "Acc" else "" for k in cols),
                    *([""] * len(areas))])
