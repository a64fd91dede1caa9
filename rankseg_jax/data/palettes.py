"""Class colour palettes that people can tell apart: generated, or an official one repaired.

Distances are CIE76 colour differences (Euclidean in CIELAB, D65): 2.3 is about the smallest
difference a viewer notices, ~10 is easy to see side by side, ~40 is a different hue.

* `generated_palette(K)`: farthest-point sampling in CIELAB over an sRGB grid (15 steps per
  channel) restricted to lightness 30..90, so no colour is near-black or near-white (they
  vanish in overlays and collide with the black ignore colour). Colour i+1 is the grid colour
  farthest from colours 0..i, so the first colours are maximally spread, and neighbouring
  class ids, which often co-occur in an image, are never close: at K=150 every pair differs
  by > 16, at K=1284 every neighbouring pair by > 8. Deterministic.
* `repaired_palette(base)`: keeps an official palette (ADE20K's) but replaces each entry that
  is indistinguishable from an earlier one (difference < `min_pair`) or too close to the
  previous class id (< `min_neighbour`) by the grid colour farthest from all others.

Palettes come back as read-only uint8 [K, 3] RGB arrays (cached: the registry asks often).
"""

from __future__ import annotations

import functools

import numpy as np

_D65_WHITE = np.array([0.95047, 1.0, 1.08883])
_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
_START = (230, 25, 75)  # the first generated colour: the grid colour nearest this red


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB colours. Takes uint8 [..., 3]; returns float64 [..., 3] (L, a, b)."""
    c = np.asarray(rgb, np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = c @ _RGB_TO_XYZ.T / _D65_WHITE
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], -1)


def delta_e(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CIE76 difference of sRGB colours a and b (uint8 [..., 3], broadcast); float64 [...]."""
    return np.linalg.norm(srgb_to_lab(a) - srgb_to_lab(b), axis=-1)


def neighbour_delta_e(palette: np.ndarray) -> np.ndarray:
    """Difference between the colours of class ids i and i+1: float64 [K-1]."""
    return delta_e(palette[1:], palette[:-1])


def min_pair_delta_e(palette: np.ndarray) -> float:
    """Smallest difference between any two colours of a palette (uint8 [K, 3])."""
    lab = srgb_to_lab(palette)
    d = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return float(d.min())


@functools.cache
def _candidates() -> tuple[np.ndarray, np.ndarray]:
    v = np.arange(0, 256, 15)
    rgb = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(-1, 3)
    lab = srgb_to_lab(rgb)
    keep = (lab[:, 0] >= 30) & (lab[:, 0] <= 90)
    return rgb[keep].astype(np.uint8), lab[keep]


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@functools.cache
def generated_palette(num_classes: int) -> np.ndarray:
    """K well-separated colours (module doc); read-only uint8 [K, 3] RGB."""
    rgb, lab = _candidates()
    if num_classes > len(rgb):
        raise ValueError(f"generated palettes have at most {len(rgb)} colours, "
                         f"not {num_classes}")
    i = int(np.argmin(np.abs(rgb.astype(np.int64) - _START).sum(1)))
    dist = np.full(len(rgb), np.inf)
    order = []
    for _ in range(num_classes):
        order.append(i)
        dist = np.minimum(dist, np.sum((lab - lab[i]) ** 2, axis=1))
        i = int(np.argmax(dist))
    return _read_only(rgb[order])


@functools.cache
def repaired_palette(base: tuple, min_pair: float = 2.3,
                     min_neighbour: float = 15.0) -> tuple[np.ndarray, tuple[int, ...]]:
    """An official palette with its indistinguishable entries replaced (module doc).

    Takes K RGB triples as a tuple of tuples (hashable: results are cached); returns
    (read-only uint8 [K, 3], the replaced class ids in order).
    """
    cand_rgb, cand_lab = _candidates()
    pal = np.array(base, np.uint8)
    lab = srgb_to_lab(pal)
    replaced = []
    for i in range(1, len(pal)):
        d = np.linalg.norm(lab[:i] - lab[i], axis=1)
        if d.min() >= min_pair and d[-1] >= min_neighbour:
            continue
        others = np.delete(lab, i, axis=0)
        far = np.min(np.sum((cand_lab[:, None] - others[None]) ** 2, axis=-1), axis=1)
        j = int(np.argmax(far))
        pal[i], lab[i] = cand_rgb[j], cand_lab[j]
        replaced.append(i)
    return _read_only(pal), tuple(replaced)
