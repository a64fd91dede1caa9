"""Independent NumPy re-implementation of Pillow's uint8 BILINEAR `Image.resize` (no box, no
reducing_gap), the resize detectron2's `ResizeTransform` applies to uint8 images.

Written from Pillow's `src/libImaging/Resample.c` (`precompute_coeffs`, `normalize_coeffs_8bpc`,
`ImagingResampleHorizontal_8bpc` / `Vertical_8bpc`, `ImagingResampleInner`); it does not call
PIL. Per axis: scale = in / out, filterscale = max(scale, 1) (the triangle widens when
downscaling: antialiasing), support = filterscale; output pixel o has centre (o + 0.5) * scale,
taps xmin = int(centre - support + 0.5) .. int(centre + support + 0.5) (clamped to the image),
weights triangle((x - centre + 0.5) / filterscale) normalised to sum 1, converted to 22-bit fixed
point (round half away from zero), accumulated from 2^21 in integers and shifted right by 22
with clipping to 0..255. Horizontal pass first (only when the width changes), then vertical
(only when the height changes), each rounding to uint8.
"""

from __future__ import annotations

import numpy as np

PRECISION_BITS = 32 - 8 - 2


def _triangle(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def fixed_point_weights(n_in: int, n_out: int) -> np.ndarray:
    """int64 [n_out, n_in] matrix of Pillow's 8-bit fixed-point bilinear coefficients."""
    scale = float(n_in) / n_out
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    m = np.zeros((n_out, n_in), np.int64)
    for o in range(n_out):
        center = (o + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in)
        taps = np.arange(xmin, xmax)
        w = _triangle((taps - center + 0.5) * (1.0 / filterscale))  # Pillow multiplies by ss
        total = w.sum()
        if total != 0.0:
            w = w / total
        fixed = np.where(w < 0, np.trunc(-0.5 + w * (1 << PRECISION_BITS)),
                         np.trunc(0.5 + w * (1 << PRECISION_BITS)))
        m[o, xmin:xmax] = fixed.astype(np.int64)
    return m


def _pass(x: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """One fixed-point pass of uint8 x along `axis` -> uint8."""
    # Integer sums < 2^53: a float64 matrix product is exact (and uses BLAS).
    acc = np.tensordot(weights.astype(np.float64), x.astype(np.float64), axes=([1], [axis]))
    acc = acc.astype(np.int64) + (1 << (PRECISION_BITS - 1))
    out = np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def resize_bilinear_uint8(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """uint8 [H, W(, C)] -> uint8 [out_h, out_w(, C)], bit-exact to Pillow's BILINEAR resize."""
    h, w = image.shape[:2]
    out = np.asarray(image, np.uint8)
    if out_w != w:
        out = _pass(out, fixed_point_weights(w, out_w), axis=1)
    if out_h != h:
        out = _pass(out, fixed_point_weights(h, out_h), axis=0)
    return out
