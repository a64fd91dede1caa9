"""Mask2Former's Hungarian matcher (`mask2former/modeling/matcher.py`), jittable.

Per image and per prediction (final and every auxiliary one), queries are matched one-to-one
to the ground-truth targets by minimising

    C = cost_mask * BCE + cost_class * (-softmax(logits)[:, label]) + cost_dice * dice

(`matcher.py:144-157`; weights 5, 2, 5 at `maskformer_model.py:135-140`), where BCE and dice
compare the predicted mask logits and the target masks at points shared by all queries and
targets of the image (`matcher.py:95-157`), in float32 (autocast off there).

Static shapes: every image has T target slots (a max-targets bound) with a validity mask.
Invalid slots get cost 0 for every query, which leaves the optimum on the valid targets
unchanged when Q >= T (every slot is assigned, so padding adds the same constant to every
assignment). The assignment is the exact optimum (`optax.assignment.hungarian_algorithm`,
the Kuhn-Munkres algorithm with potentials in `lax` loops: no host round trip), the same as
the official `scipy.optimize.linear_sum_assignment` whenever the optimum is unique.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from rankseg_jax.train.mask2former.point_sampling import point_sample

# Official matcher weights (`maskformer_model.py:135-140`: CLASS_WEIGHT, MASK_WEIGHT,
# DICE_WEIGHT).
COST_CLASS, COST_MASK, COST_DICE = 2.0, 5.0, 5.0
_HIGHEST = jax.lax.Precision.HIGHEST
_LARGE = 1e6  # far above any real cost (|class cost| <= 2, mask costs ~ 5 * |logit|)


class Matching(NamedTuple):
    """The assignment of one prediction for a batch: B images, T target slots.

    src [B, T] int32 query indices, tgt [B, T] int32 target slots, valid [B, T] bool.
    Row b lists image b's valid pairs first, sorted by query index as scipy returns them,
    then the pairs of the invalid slots (also assigned, to the remaining queries). tgt is a
    permutation of 0..T-1 and src has no repeats.
    """
    src: jax.Array
    tgt: jax.Array
    valid: jax.Array


def dice_from_sums(intersection: jax.Array, pred_sum: jax.Array,
                   target_sum: jax.Array) -> jax.Array:
    """Smoothed dice loss from its sums: 1 - (2 * inter + 1) / (pred_sum + target_sum + 1).

    Shared by the matcher's pairwise cost (`matcher.py:15-30`) and the loss
    (`criterion.py:21-40`); inputs broadcast.
    """
    return 1 - (2 * intersection + 1) / (pred_sum + target_sum + 1)


def pairwise_mask_costs(pred_points: jax.Array,
                        target_points: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pairwise sigmoid-BCE and dice costs between sampled predictions and targets.

    pred_points: [..., Q, P] mask logits at the points; target_points: [..., T, P] target
    values at the same points (in [0, 1]). BCE is the mean over points, computed as the
    official matrix product `(softplus(-x) @ y.T + softplus(x) @ (1 - y).T) / P`
    (`matcher.py:38-62`); dice as `matcher.py:15-30`. Returns (bce [..., Q, T],
    dice [..., Q, T]), float32.
    """
    x = pred_points.astype(jnp.float32)
    y = target_points.astype(jnp.float32)
    pos = optax.sigmoid_binary_cross_entropy(x, jnp.ones_like(x))
    neg = optax.sigmoid_binary_cross_entropy(x, jnp.zeros_like(x))
    mm = lambda a, b: jnp.einsum("...qp,...tp->...qt", a, b, precision=_HIGHEST)
    bce = (mm(pos, y) + mm(neg, 1 - y)) / x.shape[-1]
    s = jax.nn.sigmoid(x)
    dice = dice_from_sums(mm(s, y), s.sum(-1)[..., :, None], y.sum(-1)[..., None, :])
    return bce, dice


def match_cost(logits: jax.Array, mask_logits: jax.Array, labels: jax.Array,
               target_masks: jax.Array, points: jax.Array, *, cost_class: float = COST_CLASS,
               cost_mask: float = COST_MASK, cost_dice: float = COST_DICE) -> jax.Array:
    """The official matching cost of a batch, without gradient.

    logits: [B, Q, C+1] class logits (no-object last; in rank space for RankSeg);
    mask_logits: [B, Q, h, w]; labels: [B, T] int target classes (any value in [0, C] for
    invalid slots); target_masks: [B, T, H, W] 0/1 (bool or float; padded input size);
    points: [B, M, 2] (x, y) in [0, 1], one set per image. Returns cost [B, Q, T] float32
    (invalid slots are not masked here).
    """
    logits, mask_logits = jax.lax.stop_gradient((logits, mask_logits))
    prob = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    safe = jnp.clip(labels, 0, logits.shape[-1] - 1).astype(jnp.int32)
    class_cost = -jnp.take_along_axis(prob, safe[:, None, :], axis=-1)  # [B, Q, T]
    bce, dice = pairwise_mask_costs(point_sample(mask_logits, points),
                                    point_sample(target_masks, points))
    return cost_mask * bce + cost_class * class_cost + cost_dice * dice


def assign(cost: jax.Array, valid: jax.Array) -> Matching:
    """Minimum-cost assignment of the T target slots of one image to distinct queries.

    cost: [Q, T] float32, Q >= T; valid: [T] bool. Invalid slots get cost 0 in every row
    (which does not move the optimum of the valid ones) and the exact Hungarian algorithm
    assigns every slot. Returns a Matching of 1-D arrays [T] (see `Matching`). Jit- and
    vmap-able (vmap over images: `batched_assign`).
    """
    q, t = cost.shape
    if t > q:
        raise ValueError(f"{t} target slots for {q} queries: the padded matcher needs "
                         "max targets <= num queries")
    # Non-finite costs (a diverged model) become large finite ones: the loop then still ends
    # with a valid assignment, and the NaN losses are left for the trainer to report.
    cost = jnp.clip(jnp.nan_to_num(cost.astype(jnp.float32), nan=_LARGE), -_LARGE, _LARGE)
    cost = jnp.where(valid[None, :], cost, 0.0)
    rows, cols = optax.assignment.hungarian_algorithm(cost)  # t pairs (query, slot)
    query_of_slot = jnp.zeros((t,), jnp.int32).at[cols].set(rows.astype(jnp.int32))
    # Valid pairs first, each group by ascending query (queries are distinct).
    order = jnp.argsort(query_of_slot + q * (~valid).astype(jnp.int32))
    return Matching(src=query_of_slot[order], tgt=order.astype(jnp.int32), valid=valid[order])


def batched_assign(cost: jax.Array, valid: jax.Array) -> Matching:
    """`assign` for each image: cost [B, Q, T], valid [B, T] -> Matching with [B, T] fields."""
    return jax.vmap(assign)(cost, valid)


def hungarian_match(logits: jax.Array, mask_logits: jax.Array, labels: jax.Array,
                    target_masks: jax.Array, valid: jax.Array, points: jax.Array,
                    **weights: float) -> tuple[Matching, jax.Array]:
    """The official matcher for one prediction of a batch.

    Inputs as `match_cost`, plus valid [B, T] bool; weights: optional cost_class / cost_mask /
    cost_dice overrides. Returns (Matching with [B, T] fields, cost [B, Q, T]).
    """
    cost = match_cost(logits, mask_logits, labels, target_masks, points, **weights)
    return batched_assign(cost, valid), cost
