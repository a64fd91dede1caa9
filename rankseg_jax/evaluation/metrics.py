"""Segmentation metrics with mmseg-0.17 semantics: exact dataset totals and the formulas.

`intersect_and_union_np` counts one image's areas (int64) the mmseg way;
`SegMetricAccumulator` sums them exactly over a dataset (and across hosts);
`compute_metrics` applies `mmseg.core.evaluation.eval_metrics` (IoU, Acc, Dice, F-score,
aAcc, their NaN-excluding means). Report writers are in `reports.py`, multi-label metrics
in `multilabel.py`.

Area semantics (mmseg `core/evaluation/metrics.py` `intersect_and_union`): pixels whose label
equals `ignore_index` are removed from both prediction and label *before* counting;
predictions / labels outside [0, K) are counted nowhere (`torch.histc(bins=K, min=0,
max=K-1)` drops them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np


class Areas(NamedTuple):
    """The four mmseg area vectors, each [K] (or [B, K] for the per-image variant).

    A NamedTuple is a JAX pytree, so it can be returned from ``jax.jit`` directly.
    """

    area_intersect: Any
    area_union: Any
    area_pred: Any
    area_label: Any


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
        for pred, label in images: acc.update(intersect_and_union_np(pred, label, K))
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
