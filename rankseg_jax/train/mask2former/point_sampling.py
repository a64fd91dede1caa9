"""Point sampling of mask maps (PointRend) for Mask2Former's matcher and mask losses.

`point_sample` is detectron2's `point_sample` (`projects/PointRend/point_rend/
point_features.py:19-42`): `F.grid_sample(maps, 2 * coords - 1, mode="bilinear",
padding_mode="zeros", align_corners=False)`, i.e. the value at pixel coordinate
(x * W - 0.5, y * H - 0.5) with zero padding outside the map. It runs on the bilinear
corner gather of multi-scale deformable attention (one level, one head, unit weights), so the
corner rule lives in one place.

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

from rankseg_jax.models.deformable_attention import ms_deform_attn_core

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
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    clead, p = coords.shape[:-2], coords.shape[-2]
    if coords.shape[-1] != 2 or tuple(lead[:len(clead)]) != tuple(clead):
        raise ValueError(f"coords {coords.shape} do not index maps {maps.shape}")
    rest = lead[len(clead):]
    g, r = math.prod(clead), math.prod(rest)
    # Shared points: the r maps are the channels of one head (one gather of r-vectors).
    value = maps.astype(jnp.float32).reshape(g, r, h * w)
    value = value[:, 0, :, None, None] if r == 1 else value.transpose(0, 2, 1)[:, :, None, :]
    loc = coords.astype(jnp.float32).reshape(g, p, 1, 1, 1, 2)
    ones = jnp.ones((g, p, 1, 1, 1), jnp.float32)
    out = ms_deform_attn_core(value, ((h, w),), loc, ones)  # [g, P, r]
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
