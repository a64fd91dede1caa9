"""Test-only ports of mmseg-0.17 metric code (not used by the library).

On-device (JAX) area counting (`intersect_and_union`, per image, confusion matrix, class
histogram), mmseg's `reduce_zero_label` and the rounding of `CustomDataset.evaluate`
(`mmseg_eval_results`). The tests use them to check the library's host-side metrics
(`rankseg_jax.evaluation.metrics`) against the official fixtures from a second direction.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rankseg_jax.evaluation.metrics import Areas, _nanmean
from rankseg_jax.rankseg import ranking


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


def reduce_zero_label(label, int16: bool = False):
    """mmseg ``reduce_zero_label`` as a pure function (the input is never modified).

    uint8-style datasets (ADE20K, COCO-Stuff-10k; ignore 255): 0 -> 255, then label - 1,
    then 254 -> 255; i.e. 0 ("other") and 255 both end up as 255, L -> L-1 otherwise.
    int16-style datasets (ignore -1): label - 1, then -2 -> -1.

    mmseg's ``intersect_and_union`` does this in place on a tensor sharing memory with the
    caller's numpy array (a side effect on the caller's array); we copy instead.

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
