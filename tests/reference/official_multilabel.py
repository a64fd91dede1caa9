"""Test-only NumPy ports of the official multi-label metrics (batch scalars).

Ports of `img_recall`, `pixel_recall`, `img_accuracy` and `get_average_precision` in the
official `mmseg/models/losses/accuracy.py`, returning the batch scalar exactly as the official
functions do (NaN exclusion, "return 1 if no image has a GT class"). The tests check the
library's per-image JAX versions (`rankseg_jax.evaluation.multilabel`) against them.
"""

from __future__ import annotations

import numpy as np

from rankseg_jax.evaluation.metrics import _div


def _finite_mean(x: np.ndarray) -> float:
    """``x[x < inf].mean()`` like torch: NaN (and +inf) excluded; empty -> NaN."""
    with np.errstate(invalid="ignore"):
        keep = x < np.inf  # NaN < inf is False, so NaN is dropped here.
    return float(x[keep].mean()) if keep.any() else float("nan")


def img_recall(hist: np.ndarray, topk: np.ndarray) -> float:
    """Official ``img_recall``: per image #GT classes in topk / #GT classes, then mean.

    Args:
        hist: [B, K] label class histogram (counts; GT classes are ``hist > 0``).
        topk: [B, κ] selected class indices (or a full ranking [B, K]).

    Returns:
        Mean over images with a finite value (0/0 -> NaN excluded); 1.0 if no image of the
        batch has any GT class.
    """
    hist = np.asarray(hist)
    gt = (hist > 0).astype(np.float64)
    topk = np.asarray(topk)
    rec = _div(np.take_along_axis(gt, topk, 1).sum(1), gt.sum(1))
    if not (hist > 0).any():
        return 1.0
    return _finite_mean(rec)


def pixel_recall(hist: np.ndarray, topk: np.ndarray) -> float:
    """Official ``pixel_recall``: per image Σ_{c∈topk} hist[c] / Σ_c hist[c], then mean.

    Args / returns as :func:`img_recall` (same NaN exclusion and "return 1" rule).
    """
    hist = np.asarray(hist, np.float64)
    topk = np.asarray(topk)
    rec = _div(np.take_along_axis(hist, topk, 1).sum(1), hist.sum(1))
    if not (hist > 0).any():
        return 1.0
    return _finite_mean(rec)


def img_accuracy(hist: np.ndarray, topk: np.ndarray) -> float:
    """Official ``img_accuracy`` (precision@κ): per image #GT classes in topk / κ, then mean.

    Args:
        hist: [B, K]; topk: [B, κ].

    Returns:
        Mean over images (never NaN for κ > 0; no "return 1" rule in the official code).
    """
    gt = (np.asarray(hist) > 0).astype(np.float64)
    topk = np.asarray(topk)
    prec = np.take_along_axis(gt, topk, 1).sum(1) / topk.shape[1]
    return _finite_mean(prec)


def average_precision(hist: np.ndarray, ranking: np.ndarray) -> float:
    """Official ``get_average_precision``: per-image ranking AP, mean over finite APs.

    For image b with GT classes G (``hist > 0``): rank_c = position of c in ``ranking[b]``
    (0-based) or ∞ if absent; sort the GT ranks V_1 <= ... <= V_n;
    AP = Σ_i i / (V_i + 1) / n (absent classes contribute i/∞ = 0).

    Args:
        hist: [B, K] histogram; ranking: [B, κ] top-κ list or [B, K] full argsort.

    Returns:
        Mean AP over images with a GT class (0/0 = NaN excluded). NaN if no image has any
        (the official AP has no "return 1" rule; torch ``mean()`` of an empty tensor).
    """
    hist = np.asarray(hist)
    ranking = np.asarray(ranking)
    b, k = hist.shape
    # Literal port (scatter of rank positions + sort), independent of the JAX cumsum form.
    inv = np.full((b, k), np.inf)
    np.put_along_axis(inv, ranking, np.arange(ranking.shape[1], dtype=np.float64)[None]
                      .repeat(b, 0), 1)
    ap = np.zeros(b)
    for i in range(b):
        g = hist[i] > 0
        v = np.sort(inv[i, g])
        idx = np.arange(1, len(v) + 1, dtype=np.float64)
        ap[i] = _div((idx / (v + 1)).sum(), g.sum())
    return _finite_mean(ap)
