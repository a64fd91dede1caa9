"""Point sampling of mask maps (PointRend) for Mask2Former's matcher and mask losses.

`point_sample` is detectron2's `point_sample` (`projects/PointRend/point_rend/
point_features.py:19-42`): `F.grid_sample(maps, 2 * coords - 1, mode="bilinear",
padding_mode="zeros", align_corners=False)`, i.e. the value at pixel coordinate
(x * W - 0.5, y * H - 0.5) with zero padding outside the map. Its corner rule is the one of
multi-scale deformable attention (`deformable_attention.bilinear_corners`); its gathers are
its own, shaped for small memory on TPUs (see `point_sample_xy`).

`importance_coords` is the deterministic half of `get_uncertain_point_coords_with_randomness`
(`point_features.py:63-116`): given the random candidates and the random fill, keep the most
uncertain candidates (uncertainty -|logit|, `mask2former/modeling/criterion.py:72-86`) and
append the fill. The random draws themselves are inputs so recorded draws reproduce the
official losses; `draw_points` makes them with `jax.random` for training.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rankseg_jax.models.deformable_attention import bilinear_corners

# Official sizes (`mask2former/maskformer_model.py:126-155`, config TRAIN_NUM_POINTS,
# OVERSAMPLE_RATIO, IMPORTANCE_SAMPLE_RATIO).
NUM_POINTS = 12544
OVERSAMPLE_RATIO = 3.0
IMPORTANCE_SAMPLE_RATIO = 0.75


def point_sample(maps: jax.Array, coords: jax.Array) -> jax.Array:
    """Bilinear samples of maps at normalised points (grid_sample, zeros, align_corners=False).

    maps: [*lead, H, W]; coords: [*clead, P, 2] normalised (x, y), (0, 0) the top-left corner
    of the map and (1, 1) the bottom-right one, where `clead` is a prefix of `lead`: every map
    of the trailing `lead` axes is sampled at the same points (e.g. maps [Q, H, W] with coords
    [P, 2], or maps [B, Q, H, W] with coords [B, P, 2] or [B, Q, P, 2]).
    Returns [*lead, P] float32 (computed in float32 whatever the maps' dtype).
    """
    if coords.shape[-1:] != (2,):
        raise ValueError(f"coords {coords.shape} do not index maps {maps.shape}")
    return point_sample_xy(maps, coords[..., 0], coords[..., 1])


def point_sample_xy(maps: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """`point_sample` with the coordinates as two arrays: x, y [*clead, P] (clead a prefix of
    maps' leading axes). Returns [*lead, P] float32.

    Written for every backend's memory layout: the maps are flattened to [G, H*W] (one map per
    point set) or [G, H*W, R] (R maps sharing a point set, gathered as rows of R values), and
    each of the 4 bilinear corners is one gather with a [G, P] index array. A TPU tiles the two
    minor dimensions of an array by (8, 128), so a trailing axis of size 1 or 2 (an [.., P, 1]
    gather index, [.., P, 2] coordinates, [.., P, 4] corners) is stored 64-128x its size; an
    earlier version sampled through `ms_deform_attn_core` (index [G, 1, 4P, 1]), and
    Mask2Former's criterion then planned 36.5 G on a v5e chip for one 320² image at the
    official 12544 points, 1.7 GiB with these gathers (BENCHMARKS.md, "TPU compile without a
    TPU").
    The 4 weighted corners are added in grid_sample's order (nw, ne, sw, se).
    """
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    clead, p = x.shape[:-1], x.shape[-1]
    if x.shape != y.shape or tuple(lead[:len(clead)]) != tuple(clead):
        raise ValueError(f"coordinates x {x.shape} and y {y.shape} do not index maps "
                         f"{maps.shape}")
    rest = lead[len(clead):]
    g, r = math.prod(clead), math.prod(rest)
    value = maps.astype(jnp.float32).reshape(g, r, h * w)
    corners = bilinear_corners(x.reshape(g, p), y.reshape(g, p), h, w)
    out = None
    if r == 1:
        flat = value[:, 0]  # [G, H*W]
        for idx, weight in corners:
            term = jnp.take_along_axis(flat, idx, axis=1, mode="clip") * weight  # [G, P]
            out = term if out is None else out + term
        return out.reshape(*lead, p)
    rows = value.transpose(0, 2, 1)  # [G, H*W, R]: the R maps' values of a pixel in a row
    take_rows = jax.vmap(lambda v, i: jnp.take(v, i, axis=0, mode="clip"))
    for idx, weight in corners:
        term = take_rows(rows, idx) * weight[..., None]  # [G, P, R]
        out = term if out is None else out + term
    return out.transpose(0, 2, 1).reshape(*lead, p)


def num_importance_points(num_points: int, importance_ratio: float) -> int:
    """How many of the num_points are the most uncertain candidates: int(ratio * num_points),
    as `point_features.py:63-116` (9408 of 12544 officially); the rest is random fill."""
    return int(importance_ratio * num_points)


def importance_coords(logits: jax.Array, candidates: jax.Array, random_fill: jax.Array,
                      num_uncertain: int) -> jax.Array:
    """Importance-sampled point coordinates of the mask losses (no gradient).

    logits: [N, H, W] mask logits; candidates: [N, C, 2] uniform (x, y) candidates (C = the
    oversampled count, 3 * P officially); random_fill: [N, F, 2] uniform points;
    num_uncertain: k = `num_importance_points(P, ratio)` with P = k + F. The k candidates with
    the largest uncertainty -|logit| (logit sampled bilinearly at the candidate) are kept in
    `top_k` order (only the set matters for the losses), followed by the fill.
    Returns [N, k + F, 2].
    """
    logits = jax.lax.stop_gradient(logits)
    uncertainty = -jnp.abs(point_sample(logits, candidates))  # [N, C]
    _, idx = jax.lax.top_k(uncertainty, num_uncertain)
    chosen = jnp.take_along_axis(candidates, idx[..., None], axis=-2)
    coords = jnp.concatenate([chosen, random_fill.astype(chosen.dtype)], axis=-2)
    return jax.lax.stop_gradient(coords)


class PointDraws(NamedTuple):
    """The random points of one criterion call, for P predictions, B images, T target slots.

    matcher: [P, B, M, 2] the matcher's points of each (prediction, image), shared by all its
      queries and targets. candidates: [P, B, T, C, 2] the loss's oversampled candidates of
      each matched pair (slot t = the t-th pair in query order). random_fill: [P, B, T, F, 2].
    All (x, y) in [0, 1).
    """
    matcher: jax.Array
    candidates: jax.Array
    random_fill: jax.Array


def draw_points(key: jax.Array, num_predictions: int, batch: int, max_targets: int, *,
                num_points: int = NUM_POINTS, oversample_ratio: float = OVERSAMPLE_RATIO,
                importance_ratio: float = IMPORTANCE_SAMPLE_RATIO) -> PointDraws:
    """Uniform random points of one training step, as the official code draws them.

    Matcher: `num_points` per (prediction, image) (`matcher.py:120`); losses, per (prediction,
    image, target slot): int(num_points * oversample_ratio) candidates and
    num_points - int(importance_ratio * num_points) fill points (`point_features.py:63-116`).
    Returns a PointDraws with matcher [P, B, num_points, 2], candidates [P, B, T, C, 2] and
    random_fill [P, B, T, F, 2], float32 in [0, 1).
    """
    k_match, k_cand, k_fill = jax.random.split(key, 3)
    num_candidates = int(num_points * oversample_ratio)
    num_fill = num_points - num_importance_points(num_points, importance_ratio)
    lead = (num_predictions, batch)
    return PointDraws(
        matcher=jax.random.uniform(k_match, (*lead, num_points, 2), jnp.float32),
        candidates=jax.random.uniform(k_cand, (*lead, max_targets, num_candidates, 2),
                                      jnp.float32),
        random_fill=jax.random.uniform(k_fill, (*lead, max_targets, num_fill, 2),
                                       jnp.float32))
