"""Multi-label (image-level) metrics of RankSeg with the official semantics.

The official helpers (`img_recall`, `pixel_recall`, `img_accuracy`, `get_average_precision`
in the official `mmseg/models/losses/accuracy.py`) return batch scalars; here they are
per-image values (``*_per_image``, jit-able) returning ``(values, valid)`` so they can be
summed across batches and hosts, and :class:`MultiLabelMetricAccumulator` forms the
dataset-level means with the official NaN exclusion and "recall is 1 when no image has a GT
class" rule. Numpy ports of the official batch functions are in the tests.

Inputs: ``hist`` [B, K] per-image label class histogram (`ranking.class_histogram`) and a
ranked class list ``topk`` [B, kappa] (or a full ranking [B, K] for AP).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# --------------------------------------------------------------------------------------------
# Multi-label metrics: jit-able JAX per-image values + validity
# --------------------------------------------------------------------------------------------


def _gt_in_list(hist: jax.Array, topk: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(gt [B,K] float32, gt gathered along the list [B,κ] float32)."""
    gt = (jnp.asarray(hist) > 0).astype(jnp.float32)
    return gt, jnp.take_along_axis(gt, jnp.asarray(topk).astype(jnp.int32), axis=1)


def _img_valid(valid: jax.Array, img_valid: jax.Array | None) -> jax.Array:
    return valid if img_valid is None else valid & jnp.asarray(img_valid).astype(bool)


def _safe_ratio(num, den):
    """num/den where den > 0 else 0 (the value is masked invalid then; avoids NaN grads)."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), 0.0), ok


def img_recall_per_image(hist, topk, img_valid=None):
    """Per-image ``img_recall`` on device.

    Args:
        hist: [B, K] class histogram; topk: [B, κ] int indices; img_valid: optional [B] bool
            (False = padded image).

    Returns:
        (values float32 [B], valid bool [B]); invalid where the image has no GT class (the
        official 0/0 NaN) or is padding. Accumulate Σ values·valid and Σ valid.
    """
    gt, sel = _gt_in_list(hist, topk)
    val, ok = _safe_ratio(sel.sum(1), gt.sum(1))
    return val, _img_valid(ok, img_valid)


def pixel_recall_per_image(hist, topk, img_valid=None):
    """Per-image ``pixel_recall`` on device: Σ_{c∈topk} hist[c] / Σ hist.

    Returns (values float32 [B], valid bool [B]) like :func:`img_recall_per_image`.
    """
    hist = jnp.asarray(hist).astype(jnp.float32)
    sel = jnp.take_along_axis(hist, jnp.asarray(topk).astype(jnp.int32), axis=1)
    val, ok = _safe_ratio(sel.sum(1), hist.sum(1))
    return val, _img_valid(ok, img_valid)


def img_accuracy_per_image(hist, topk, img_valid=None):
    """Per-image precision@κ on device: #GT classes in topk / κ.

    Returns (values float32 [B], valid bool [B]); valid for every non-padded image.
    """
    _, sel = _gt_in_list(hist, topk)
    val = sel.sum(1) / sel.shape[1]
    return val, _img_valid(jnp.ones(val.shape, bool), img_valid)


def topk_train_sums(hist, topk) -> dict:
    """The training log's top-kappa recall / precision as batch sums, for any host.

    hist: [B, K] (>0 = class present in the image's ground truth); topk: int [B, kappa].
    Returns {'img_recall_sum', 'img_recall_count', 'img_precision_sum',
    'img_precision_count'}: float32 scalars, summed over the images where each is defined
    (the trainer divides sums by counts after the cross-step reduction)."""
    rec, rec_ok = img_recall_per_image(hist, topk)
    prec, prec_ok = img_accuracy_per_image(hist, topk)
    return {"img_recall_sum": jnp.sum(rec * rec_ok),
            "img_recall_count": jnp.sum(rec_ok).astype(jnp.float32),
            "img_precision_sum": jnp.sum(prec * prec_ok),
            "img_precision_count": jnp.sum(prec_ok).astype(jnp.float32)}


def average_precision_per_image(hist, ranking, img_valid=None):
    """Per-image ranking AP on device (same value as the official sort-based formula).

    Walking the list in rank order, the j-th entry (0-based) that is a GT class is the
    i-th GT class found, with i = cumsum of GT hits up to j; it contributes i/(j+1).
    GT classes not in the list contribute 0; divide by the number of GT classes. This is
    O(B·κ) with no sort.

    Args:
        hist: [B, K]; ranking: [B, κ] top-κ list or [B, K] full ranking; img_valid: [B].

    Returns:
        (values float32 [B], valid bool [B]); invalid where no GT class (official NaN).
    """
    gt, hit = _gt_in_list(hist, ranking)
    i = jnp.cumsum(hit, axis=1)
    pos = jnp.arange(1, hit.shape[1] + 1, dtype=jnp.float32)[None]
    val, ok = _safe_ratio((hit * i / pos).sum(1), gt.sum(1))
    return val, _img_valid(ok, img_valid)


def multilabel_metrics_per_image(hist, topk, ranking=None, img_valid=None) -> dict:
    """All four per-image multi-label metrics on device.

    Args:
        hist: [B, K]; topk: [B, κ]; ranking: optional [B, K] full ranking for AP (else the
            top-κ list is used, GT outside it contributing 0); img_valid: optional [B] bool.

    Returns:
        ``{name: (values [B], valid [B])}`` for ``img_recall, pixel_recall, img_accuracy,
        img_AP`` plus ``'has_gt': (gt_any [B] bool, img_valid [B])`` for the "return 1" rule.
    """
    ap_list = topk if ranking is None else ranking
    gt_any = (jnp.asarray(hist) > 0).any(1)
    valid_img = _img_valid(jnp.ones(gt_any.shape, bool), img_valid)
    return {
        "img_recall": img_recall_per_image(hist, topk, img_valid),
        "pixel_recall": pixel_recall_per_image(hist, topk, img_valid),
        "img_accuracy": img_accuracy_per_image(hist, topk, img_valid),
        "img_AP": average_precision_per_image(hist, ap_list, img_valid),
        "has_gt": (gt_any & valid_img, valid_img),
    }


class MultiLabelMetricAccumulator:
    """Host accumulation of per-image multi-label metrics as (sum, count) over a dataset.

    Feed the dict of :func:`multilabel_metrics_per_image` (JAX or numpy arrays). ``compute``
    returns the mean over valid images; like the official helpers, ``img_recall`` and
    ``pixel_recall`` are 1.0 when no image seen had any GT class (the official rule is per
    batch; here it applies to the whole accumulated set), and the other means are NaN when
    nothing valid was seen.
    """

    _ONE_IF_NO_GT = ("img_recall", "pixel_recall")

    def __init__(self):
        """Create an empty accumulator."""
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.any_gt = False

    def update(self, per_image: dict) -> MultiLabelMetricAccumulator:
        """Add ``{name: (values [B], valid [B])}`` (``has_gt`` entry handled specially)."""
        for name, (vals, valid) in per_image.items():
            vals = np.asarray(vals, np.float64)
            valid = np.asarray(valid, bool)
            if name == "has_gt":
                self.any_gt |= bool(vals.astype(bool).any())
                continue
            self.sums[name] = self.sums.get(name, 0.0) + float(vals[valid].sum())
            self.counts[name] = self.counts.get(name, 0) + int(valid.sum())
        return self

    def merge(self, other: MultiLabelMetricAccumulator) -> MultiLabelMetricAccumulator:
        """Add another accumulator into this one."""
        for name in other.sums:
            self.sums[name] = self.sums.get(name, 0.0) + other.sums[name]
            self.counts[name] = self.counts.get(name, 0) + other.counts[name]
        self.any_gt |= other.any_gt
        return self

    def compute(self) -> dict:
        """Means over valid images ({name: float})."""
        out = {}
        for name, s in self.sums.items():
            if name in self._ONE_IF_NO_GT and not self.any_gt:
                out[name] = 1.0
            else:
                c = self.counts[name]
                out[name] = s / c if c else float("nan")
        return out
