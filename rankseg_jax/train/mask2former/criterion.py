"""Mask2Former's training criterion (`mask2former/modeling/criterion.py`, `SetCriterion`).

For every prediction (the final one and each auxiliary decoder layer, deep supervision), the
queries are matched to the targets (`matching.hungarian_match`, re-matched independently per
prediction, `criterion.py:288-295`), then:

  loss_ce    softmax cross-entropy over all B*Q queries, unmatched queries target the
             no-object class (last column), class weights `empty_weight` = 1 for classes and
             `no_object_weight` (0.1) for no-object, weighted mean sum(w * nll) / sum(w)
             (`criterion.py:129-153`);
  loss_mask  sigmoid BCE of the matched masks at importance-sampled points, mean over points,
             summed over pairs / num_masks (`criterion.py:46-65,155-206`);
  loss_dice  smoothed dice at the same points, summed over pairs / num_masks
             (`criterion.py:21-40`).

`num_masks` is the number of targets, all-reduced by the caller across devices and clamped to
>= 1 (`criterion.py:273-279`). Keys: `loss_ce`, `loss_mask`, `loss_dice` for the final
prediction, `_i` suffixes for auxiliary prediction i; `weighted` multiplies them by the
official weights (ce 2, mask 5, dice 5; `maskformer_model.py:142-155`).

RankSeg (`maskformer_model.py:294-349`, `criterion.py:242-265,316-400`): the class logits are
in rank space (kappa + 1 columns, no-object last); target labels are remapped to their rank
(targets whose class is outside the top-kappa are dropped with their masks); the multi-label
head gets `loss_ml` = 10 * AsymmetricLoss(gamma_neg 2, gamma_pos 0, clip 0.05) on the image's
ground-truth class set.

All point draws are inputs (`point_sampling.PointDraws`): recorded draws reproduce the
official losses; `point_sampling.draw_points` makes them for training.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from rankseg_jax.rankseg import losses as rankseg_losses
from rankseg_jax.rankseg import ranking
from rankseg_jax.train.mask2former import matching as matching_lib
from rankseg_jax.train.mask2former import point_sampling

LOSS_NAMES = ("loss_ce", "loss_mask", "loss_dice")


class Targets(NamedTuple):
    """Ground truth of a batch with T target slots per image (padded, static shapes).

    labels [B, T] int class ids (rank positions once remapped); masks [B, T, H, W] 0/1
    (bool or float) at the padded input size, background in the padding; valid [B, T] bool.
    """
    labels: jax.Array
    masks: jax.Array
    valid: jax.Array


@dataclasses.dataclass(frozen=True)
class CriterionConfig:
    """Weights and point counts (official values: `maskformer_model.py:126-155`).

    The matcher uses the same class / mask / dice weights as the losses, as officially.
    """
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = point_sampling.NUM_POINTS
    oversample_ratio: float = point_sampling.OVERSAMPLE_RATIO
    importance_ratio: float = point_sampling.IMPORTANCE_SAMPLE_RATIO
    # RankSeg multi-label loss (`maskformer_model.py:169,344-348`; RANKSEG.LOSS_WEIGHT).
    ml_weight: float = 10.0
    ml_gamma_neg: float = 2.0
    ml_gamma_pos: float = 0.0
    ml_clip: float = 0.05
    ml_eps: float = 1e-5

    @property
    def weights(self) -> dict[str, float]:
        """Loss name -> weight of the `weighted` dict."""
        return {"loss_ce": self.class_weight, "loss_mask": self.mask_weight,
                "loss_dice": self.dice_weight}


class CriterionOutput(NamedTuple):
    """weighted / raw: {name: float32 scalar}; matchings: Matching with [P, B, T] fields;
    costs: [P, B, Q, T] matching costs (prediction axis in the input's order)."""
    weighted: dict
    raw: dict
    matchings: matching_lib.Matching
    costs: jax.Array


def classification_loss(logits: jax.Array, match: matching_lib.Matching, labels: jax.Array,
                        no_object_weight: float) -> jax.Array:
    """Weighted cross-entropy over all queries (`criterion.py:129-153`).

    logits: [B, Q, C+1] (no-object last); match: Matching [B, T]; labels: [B, T] int.
    Matched queries target their target's label, all others the no-object class C.
    Returns sum(w * nll) / sum(w), float32. (Officially the mean is per GPU and DDP averages
    the GPUs; over a global batch this weighted mean differs from that by how unevenly the
    matched queries are spread over the devices.)
    """
    b, q, c1 = logits.shape
    no_object = c1 - 1
    matched = jnp.where(match.valid, jnp.take_along_axis(labels, match.tgt, axis=1), no_object)
    target = jnp.full((b, q), no_object, jnp.int32)
    target = target.at[jnp.arange(b)[:, None], match.src].set(matched.astype(jnp.int32))
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), target)
    w = jnp.where(target == no_object, jnp.float32(no_object_weight), jnp.float32(1.0))
    return (w * nll).sum() / w.sum()


def mask_point_losses(mask_logits: jax.Array, match: matching_lib.Matching,
                      target_masks: jax.Array, candidates: jax.Array, random_fill: jax.Array,
                      num_uncertain: int) -> tuple[jax.Array, jax.Array]:
    """Per-pair sigmoid-BCE and dice of the matched masks at importance-sampled points.

    mask_logits: [B, Q, h, w]; match: Matching [B, T]; target_masks: [B, T, H, W];
    candidates: [B, T, C, 2] and random_fill: [B, T, F, 2] for pair slot t (the t-th pair in
    query order); num_uncertain: how many candidates are kept. Pair (b, t) compares query
    src[b, t] with target tgt[b, t] at the same points. Returns (bce [B, T], dice [B, T])
    float32, not masked by validity.
    """
    b, t = match.src.shape
    pred = jnp.take_along_axis(mask_logits, match.src[:, :, None, None], axis=1)  # [B,T,h,w]
    coords = point_sampling.importance_coords(
        pred.reshape(b * t, *pred.shape[2:]), candidates.reshape(b * t, *candidates.shape[2:]),
        random_fill.reshape(b * t, *random_fill.shape[2:]), num_uncertain)
    coords = coords.reshape(b, t, *coords.shape[1:])  # [B, T, P, 2]
    x = point_sampling.point_sample(pred, coords)  # [B, T, P]
    # Sample each target mask where its pair's points are instead of gathering the (large)
    # target masks into pair order: tgt is a permutation of the slots.
    by_target = jnp.zeros_like(coords).at[jnp.arange(b)[:, None], match.tgt].set(coords)
    y = point_sampling.point_sample(target_masks, by_target)  # [B, T (target), P]
    y = jnp.take_along_axis(y, match.tgt[:, :, None], axis=1)  # pair order
    bce = optax.sigmoid_binary_cross_entropy(x, y).mean(-1)
    s = jax.nn.sigmoid(x)
    dice = matching_lib.dice_from_sums((s * y).sum(-1), s.sum(-1), y.sum(-1))
    return bce, dice


def prediction_losses(logits: jax.Array, mask_logits: jax.Array, targets: Targets,
                      draws: point_sampling.PointDraws, num_masks: jax.Array,
                      cfg: CriterionConfig) -> tuple[dict, matching_lib.Matching, jax.Array]:
    """Matching and unweighted losses of ONE prediction.

    logits: [B, Q, C+1]; mask_logits: [B, Q, h, w]; draws: PointDraws without the prediction
    axis (matcher [B, M, 2], candidates [B, T, C, 2], random_fill [B, T, F, 2]);
    num_masks: float32 scalar (>= 1). Returns ({'loss_ce', 'loss_mask', 'loss_dice'},
    Matching [B, T], cost [B, Q, T]).
    """
    k = point_sampling.num_importance_points(cfg.num_points, cfg.importance_ratio)
    if draws.candidates.shape[-2] < k or k + draws.random_fill.shape[-2] != cfg.num_points:
        raise ValueError(f"draws of {draws.candidates.shape[-2]} candidates and "
                         f"{draws.random_fill.shape[-2]} fill points do not give "
                         f"{cfg.num_points} points with {k} importance-sampled")
    match, cost = matching_lib.hungarian_match(
        logits, mask_logits, targets.labels, targets.masks, targets.valid, draws.matcher,
        cost_class=cfg.class_weight, cost_mask=cfg.mask_weight, cost_dice=cfg.dice_weight)
    bce, dice = mask_point_losses(mask_logits.astype(jnp.float32), match, targets.masks,
                                  draws.candidates, draws.random_fill, k)
    raw = {"loss_ce": classification_loss(logits, match, targets.labels, cfg.no_object_weight),
           "loss_mask": jnp.where(match.valid, bce, 0.0).sum() / num_masks,
           "loss_dice": jnp.where(match.valid, dice, 0.0).sum() / num_masks}
    return raw, match, cost


def count_masks(targets: Targets) -> jax.Array:
    """Number of valid targets in the batch, float32.

    Officially each GPU divides its mask losses by (global count / number of GPUs) and DDP
    averages the gradients, i.e. the gradient of (sum over all pairs) / global count. A step
    jitted over the global (sharded) batch gets exactly that from this global count; a
    per-device (shard_map / pmap) caller passes its psum divided by the device count.
    """
    return targets.valid.sum().astype(jnp.float32)


def set_criterion(class_logits: jax.Array, mask_logits: jax.Array, targets: Targets,
                  draws: point_sampling.PointDraws, num_masks: jax.Array | float | None = None,
                  cfg: CriterionConfig = CriterionConfig()) -> CriterionOutput:
    """The official losses of all predictions (deep supervision).

    class_logits: [P, B, Q, C+1] and mask_logits: [P, B, Q, h, w], predictions in decoder
    order, the LAST being the final one (no key suffix; prediction i < P-1 gets `_i`);
    targets: Targets [B, T] with T <= Q; draws: PointDraws with the leading [P] axis in the
    same order; num_masks: the normaliser of the mask losses (see `count_masks`), None =
    this call's target count; clamped >= 1.
    Returns CriterionOutput (weighted and raw loss dicts, the P matchings and costs).
    """
    n = count_masks(targets) if num_masks is None else jnp.asarray(num_masks, jnp.float32)
    n = jnp.maximum(n, 1.0)
    per_pred = jax.vmap(functools.partial(prediction_losses, cfg=cfg),
                        in_axes=(0, 0, None, 0, None))
    raw_p, matchings, costs = per_pred(class_logits, mask_logits, targets, draws, n)
    last = class_logits.shape[0] - 1
    raw, weighted = {}, {}
    for p in range(last + 1):
        suffix = "" if p == last else f"_{p}"
        for name in LOSS_NAMES:
            raw[name + suffix] = raw_p[name][p]
            weighted[name + suffix] = cfg.weights[name] * raw_p[name][p]
    return CriterionOutput(weighted, raw, matchings, costs)


def rank_targets(targets: Targets, topk_index: jax.Array, num_classes: int) -> Targets:
    """Target labels as rank positions (`criterion.py:242-265`).

    topk_index: [B, kappa] classes in rank order (a trailing no-object entry, if present,
    must be removed by the caller). Label l becomes r where topk_index[b, r] == l; targets
    whose class is outside the top-kappa become invalid (dropped with their masks; never
    with kappa = K). Returns Targets with remapped labels (0 where invalid) and validity.
    """
    inverse = ranking.rank_of_class(topk_index, num_classes)  # [B, K], -1 outside top-k
    safe = jnp.clip(targets.labels, 0, num_classes - 1).astype(jnp.int32)
    ranks = jnp.take_along_axis(inverse, safe, axis=1)
    valid = targets.valid & (ranks >= 0)
    return Targets(jnp.where(valid, ranks, 0), targets.masks, valid)


def class_presence(targets: Targets, num_classes: int) -> jax.Array:
    """Multi-hot ground truth of each image's valid target classes, [B, K] float32
    (`maskformer_model.py:267-280`: unique(gt_classes))."""
    counts = ranking.batched_bincount(targets.labels, targets.valid, num_classes)
    return (counts > 0).astype(jnp.float32)


def multilabel_loss(image_logits: jax.Array, present: jax.Array,
                    cfg: CriterionConfig = CriterionConfig()) -> jax.Array:
    """RankSeg's `loss_ml`: ml_weight * AsymmetricLoss(image_logits [B, K], present [B, K])
    with the official Mask2Former settings (`maskformer_model.py:169,344-348`), float32."""
    return cfg.ml_weight * rankseg_losses.asymmetric_loss(
        image_logits, present, gamma_neg=cfg.ml_gamma_neg, gamma_pos=cfg.ml_gamma_pos,
        clip=cfg.ml_clip, eps=cfg.ml_eps)


def mask2former_criterion(outputs: Mapping[str, jax.Array], targets: Targets,
                          draws: point_sampling.PointDraws, *, num_classes: int,
                          num_masks: jax.Array | float | None = None,
                          cfg: CriterionConfig = CriterionConfig()) -> CriterionOutput:
    """The whole training loss of Mask2Former (plain, RankSeg or -gt) from its outputs.

    outputs: 'class_logits' [P, B, Q, k+1] and 'mask_logits' [P, B, Q, h, w] (final last);
    RankSeg adds 'image_logits' [B, K] and 'topk_index' [B, kappa] or [B, kappa + 1] (a
    trailing no-object entry is ignored), and then the logits are in rank space. The -gt
    variant differs only in its (masked) logits. targets: class ids with K = num_classes.
    num_masks: as `set_criterion`, but counted AFTER the rank remap when it is None (the
    caller's all-reduced count must also be of the remapped targets).
    Returns CriterionOutput; RankSeg adds 'loss_ml' (already weighted) to `weighted` only.
    """
    class_logits = outputs["class_logits"]
    rankseg = "topk_index" in outputs
    if rankseg:
        present = class_presence(targets, num_classes)
        kappa = class_logits.shape[-1] - 1
        targets = rank_targets(targets, outputs["topk_index"][:, :kappa], num_classes)
    out = set_criterion(class_logits, outputs["mask_logits"], targets, draws, num_masks, cfg)
    if rankseg:
        out.weighted["loss_ml"] = multilabel_loss(outputs["image_logits"], present, cfg)
    return out
