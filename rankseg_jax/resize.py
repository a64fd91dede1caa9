"""PyTorch-exact resampling as separable matrices (bicubic, bilinear, adaptive average pool).

Why matrices: `jax.image.resize` does not reproduce PyTorch's bicubic (it uses Keys A=-0.5,
renormalises border weights and antialiases when downsampling; up to 0.3-0.4 off on
unit-variance data) and has no adaptive pooling. Each op here is `out = M_h @ x @ M_w^T` with
small constant matrices built on the host from static shapes, so it is jit friendly and runs
as matmuls on every backend.

The bilinear and bicubic weights are torch's own float32 values, bit for bit: torch computes
the source coordinate in float32 (scale = float(n_in) / n_out, src = scale * (o + 0.5) - 0.5,
one rounding) and the weights from it in float32. Exact float64 coordinates differ from them
by up to ~5e-5 (e.g. 683 -> 96); only exact ratios (512 -> 2048, 24 -> 32) agree. What stays
different is the summation order of the weighted taps (a matmul vs torch's nested
multiply-adds), i.e. float32 rounding of the output (a few ulp of max|x|).

All functions act on the two spatial axes given by `axes` (default: the last two, NCHW-style).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_F32 = np.float32
_CUBIC_A = _F32(-0.75)  # torch's cubic convolution coefficient


def fma32(a, b, c) -> np.ndarray:
    """Correctly rounded float32 fused multiply-add a * b + c (float32 array in, out).

    torch's CPU kernels are compiled with FMA contraction, so some of their `x * y + z` round
    once. The product of two float32 values is exact in float64; the float64 sum is exact up to
    its TwoSum error `e`, which only matters when the float64 sum lies exactly on a float32
    rounding midpoint (then `e` decides the side).
    """
    a, b, c = (np.asarray(v, _F32).astype(np.float64) for v in (a, b, c))
    p = a * b
    s = p + c
    bb = s - p
    e = (p - (s - bb)) + (c - bb)  # TwoSum: p + c == s + e exactly
    r = s.astype(_F32)
    toward = np.nextafter(r, np.where(s > r, _F32(np.inf), _F32(-np.inf))).astype(_F32)
    mid = (r.astype(np.float64) + toward.astype(np.float64)) / 2
    # On a midpoint (s rounded to even r) the exact value s + e lies on e's side of it.
    fix = (s == mid) & (e != 0) & (np.sign(e) == np.sign(toward.astype(np.float64) - s))
    return np.where(fix, toward, r).astype(_F32)


def source_index(n_in: int, n_out: int) -> np.ndarray:
    """torch's float32 source coordinates for align_corners=False: [n_out] float32.

    `area_pixel_compute_scale` / `area_pixel_compute_source_index` (ATen/native/UpSample.h):
    scale = float(n_in) / n_out in float32, src = scale * (o + 0.5f) - 0.5f, the multiply-add
    contracted to one FMA as in the compiled kernel (bilinear weights match torch to the bit
    only that way). Not clamped here.
    """
    scale = _F32(n_in) / _F32(n_out)
    o = np.arange(n_out, dtype=_F32) + _F32(0.5)
    return fma32(scale, o, _F32(-0.5))


def _cubic_near(x: np.ndarray) -> np.ndarray:
    # cubic_convolution1: ((A + 2) * x - (A + 3)) * x * x + 1, float32, the inner multiply-add
    # fused (as torch's compiled CPU kernel rounds it).
    a = _CUBIC_A
    t = fma32(a + _F32(2), x, -(a + _F32(3)))
    return ((t * x).astype(_F32) * x).astype(_F32) + _F32(1)


def _cubic_far(x: np.ndarray) -> np.ndarray:
    # cubic_convolution2: ((A * x - 5 * A) * x + 8 * A) * x - 4 * A, float32, the first two
    # multiply-adds fused (as torch's compiled CPU kernel rounds it).
    a = _CUBIC_A
    t = fma32(a, x, _F32(-5) * a)
    t = fma32(t, x, _F32(8) * a)
    return (t * x).astype(_F32) - _F32(4) * a


def _accumulate(n_in: int, idx: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    # Taps clamped onto the same input index add up (in float32, tap order, as torch sums).
    m = np.zeros((idx.shape[1], n_in), _F32)
    rows = np.arange(idx.shape[1])
    for k, w in enumerate(weights):
        np.add.at(m, (rows, idx[k]), w.astype(_F32))
    return m


@functools.lru_cache(maxsize=256)
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Returns the [n_out, n_in] float32 matrix of torch bicubic (align_corners=False).

    As torch's CPU kernel (`HelperInterpCubic`, UpSampleKernel.cpp): src from
    `source_index` (not clamped), i0 = min(floor(src), n_in - 1), t = clamp(src - i0, 0, 1),
    coefficients `get_cubic_upsample_coefficients(t)` in float32 (A = -0.75; x + 1 and 1 - t
    rounded to float32), taps i0-1..i0+2 clamped to the border, no antialiasing (also when
    downsampling). Read-only (cached).
    """
    src = source_index(n_in, n_out)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    t = np.clip(src - i0.astype(_F32), _F32(0), _F32(1)).astype(_F32)
    t2 = (_F32(1) - t).astype(_F32)
    weights = [_cubic_far((t + _F32(1)).astype(_F32)), _cubic_near(t), _cubic_near(t2),
               _cubic_far((t2 + _F32(1)).astype(_F32))]
    idx = np.stack([np.clip(i0 + k - 1, 0, n_in - 1) for k in range(4)])
    m = _accumulate(n_in, idx, weights)
    m.flags.writeable = False
    return m


@functools.lru_cache(maxsize=256)
def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Returns the [n_out, n_in] float32 matrix of torch bilinear (align_corners=False).

    As `compute_source_index_and_lambda` (ATen/native/UpSample.h): src = max(source_index, 0),
    i0 = min(floor(src), n_in - 1), l1 = clamp(src - i0, 0, 1), l0 = 1 - l1 (float32); the
    upper neighbour is clamped to n_in - 1. No antialiasing. Every weight equals torch's to the
    bit. Read-only (cached).
    """
    src = np.maximum(source_index(n_in, n_out), _F32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    l1 = np.clip(src - i0.astype(_F32), _F32(0), _F32(1)).astype(_F32)
    l0 = (_F32(1) - l1).astype(_F32)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    m = _accumulate(n_in, np.stack([i0, i1]), [l0, l1])
    m.flags.writeable = False
    return m


@functools.lru_cache(maxsize=256)
def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Returns the [n_out, n_in] averaging matrix of torch AdaptiveAvgPool (1-D factor).

    Bin o covers [floor(o * n_in / n_out), ceil((o + 1) * n_in / n_out)); bins overlap when
    n_in is not divisible by n_out (e.g. 30 -> 8).
    """
    m = np.zeros((n_out, n_in), np.float64)
    for o in range(n_out):
        start = (o * n_in) // n_out
        end = -((-(o + 1) * n_in) // n_out)
        m[o, start:end] = 1.0 / (end - start)
    return m


def apply_separable(x: jax.Array, m_h: np.ndarray, m_w: np.ndarray,
                    axes: tuple[int, int] = (-2, -1)) -> jax.Array:
    """Returns x with spatial axes (h, w) mapped by m_h [H', h] and m_w [W', w].

    x: any float array; axes: positions of the (h, w) axes. Computed in float32 (or x's dtype
    when wider) at highest matmul precision, since these are reference-exact ops.
    """
    ah, aw = (a % x.ndim for a in axes)
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    x = x.astype(dtype)
    hp = jax.lax.Precision.HIGHEST
    x = jnp.moveaxis(x, (ah, aw), (-2, -1))
    if m_h.shape[0] != m_h.shape[1] or not np.array_equal(m_h, np.eye(m_h.shape[0])):
        x = jnp.einsum("Hh,...hw->...Hw", jnp.asarray(m_h, dtype), x, precision=hp)
    if m_w.shape[0] != m_w.shape[1] or not np.array_equal(m_w, np.eye(m_w.shape[0])):
        x = jnp.einsum("Ww,...hw->...hW", jnp.asarray(m_w, dtype), x, precision=hp)
    return jnp.moveaxis(x, (-2, -1), (ah, aw))


def resize_bicubic(x: jax.Array, size: tuple[int, int], axes=(-2, -1)) -> jax.Array:
    """Torch `F.interpolate(mode='bicubic', align_corners=False)` on `axes` to `size` (h, w)."""
    h, w = x.shape[axes[0]], x.shape[axes[1]]
    return apply_separable(x, bicubic_matrix(h, size[0]), bicubic_matrix(w, size[1]), axes)


def resize_bilinear(x: jax.Array, size: tuple[int, int], axes=(-2, -1)) -> jax.Array:
    """Torch `F.interpolate(mode='bilinear', align_corners=False)` on `axes` to `size` (h, w)."""
    h, w = x.shape[axes[0]], x.shape[axes[1]]
    return apply_separable(x, bilinear_matrix(h, size[0]), bilinear_matrix(w, size[1]), axes)


def adaptive_avg_pool(x: jax.Array, size: tuple[int, int], axes=(-2, -1)) -> jax.Array:
    """Torch `AdaptiveAvgPool2d(size)` on `axes` (overlapping bins when not divisible)."""
    h, w = x.shape[axes[0]], x.shape[axes[1]]
    return apply_separable(
        x, adaptive_pool_matrix(h, size[0]), adaptive_pool_matrix(w, size[1]), axes)
