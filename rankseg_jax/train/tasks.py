"""What one training step computes per meta-architecture (`model.arch`): batch keys and loss.

The jitted step (`train/step.py`) is generic: it splits the batch, takes gradients of
`loss_fn(config)` and applies the optimizer. This module holds the host-specific parts:

  segmenter    batch {'image', 'label'}; `step._loss_and_metrics` (pixel cross-entropy and
               RankSeg's image loss, `train/losses.py`).
  mask2former  batch {'image', 'label', 'target_classes', 'target_masks', 'target_valid'}
               (`data/mask_former_mappers.py`); `mask2former_loss`: model forward with the
               step's dropout / drop-path key, uniform point draws from the same key
               (`point_sampling.draw_points`), the set criterion over every prediction
               (Hungarian matching, CE / point-sampled BCE / dice, deep supervision) and, with
               RankSeg, the label -> rank remap and `loss_ml`
               (`train/mask2former/criterion.py`).

Loss functions: (setup, params, batch, rng) -> (loss float32 [], metrics {name: float32 []}),
where `batch` is the (micro-)batch dict of global arrays. Metric keys ending in `_sum` /
`_count` are pooled sums (`step.finalize_metrics`), the others per-step values.

Mask normalisation: the step is jitted over the global (sharded) batch, so the criterion's
count of valid targets is already the count over all devices, the official all-reduced
`num_masks` times the device count, and a mean over the global batch matches the official
per-GPU normalisation followed by DDP's gradient average (`criterion.count_masks`). With
`train.grad_accum` > 1 each micro-batch is normalised by its own count (as an official step
of that micro-batch size would be), and the step averages the micro-batch gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_collections as mlc
from flax import nnx

from rankseg_jax.evaluation import multilabel as multilabel_metrics
from rankseg_jax.train.mask2former import criterion as criterion_lib
from rankseg_jax.train.mask2former import point_sampling

if TYPE_CHECKING:
    from rankseg_jax.train.step import TrainSetup

SEGMENTER_KEYS = ("image", "label")
MASK2FORMER_KEYS = ("image", "label", "target_classes", "target_masks", "target_valid")


def batch_keys(config: mlc.ConfigDict) -> tuple[str, ...]:
    """The keys of a training batch of `config.model.arch` (all batch-leading arrays)."""
    return MASK2FORMER_KEYS if config.model.arch == "mask2former" else SEGMENTER_KEYS


def criterion_config(config: mlc.ConfigDict) -> criterion_lib.CriterionConfig:
    """`CriterionConfig` from `loss.mask2former` (weights, points) and, for RankSeg's
    `loss_ml`, `loss.img_weight` and `loss.asl_*` (validated: `loss.img_type='asl'`)."""
    lm, lo = config.loss.mask2former, config.loss
    return criterion_lib.CriterionConfig(
        class_weight=lm.class_weight, mask_weight=lm.mask_weight, dice_weight=lm.dice_weight,
        no_object_weight=lm.no_object_weight, num_points=lm.num_points,
        oversample_ratio=lm.oversample_ratio, importance_ratio=lm.importance_ratio,
        ml_weight=lo.img_weight, ml_gamma_neg=lo.asl_gamma_neg, ml_gamma_pos=lo.asl_gamma_pos,
        ml_clip=lo.asl_clip, ml_eps=lo.asl_eps)


def mask2former_loss(setup: TrainSetup, params, batch: dict, rng: jax.Array):
    """Mask2Former(+RankSeg, or the -gt oracle) training loss of one (micro-)batch.

    batch: image float32 [B,H,W,3], target_classes int32 [B,T], target_masks bool/uint8
    [B,T,H,W], target_valid bool [B,T] ('label' is not read). rng: the step key; split into
    the model's dropout / drop-path key and the point draws.
    Returns (loss, metrics): loss = sum of the weighted terms of every prediction (+ loss_ml);
    metrics: loss, loss_ce / loss_mask / loss_dice (final prediction, weighted), loss_aux
    (weighted terms of the auxiliary predictions), loss_ml (RankSeg), num_masks (valid
    targets of the batch after the rank remap), and for RankSeg the top-kappa recall /
    precision sums of the ground-truth class sets.
    """
    config = setup.config
    k = config.model.num_classes
    cfg = criterion_config(config)
    targets = criterion_lib.Targets(batch["target_classes"], batch["target_masks"],
                                    batch["target_valid"])
    k_model, k_points = jax.random.split(rng)
    model = nnx.merge(setup.graphdef, params)
    present = criterion_lib.class_presence(targets, k)  # [B, K] unique(gt_classes)
    gt = present if config.model.mask2former.gt_oracle else None
    out = model(batch["image"], rng=k_model, gt_present=gt)
    p, b = out["class_logits"].shape[:2]
    draws = point_sampling.draw_points(
        k_points, p, b, targets.labels.shape[1], num_points=cfg.num_points,
        oversample_ratio=cfg.oversample_ratio, importance_ratio=cfg.importance_ratio)
    crit = criterion_lib.mask2former_criterion(out, targets, draws, num_classes=k, cfg=cfg)
    terms = {name: v.astype(jnp.float32) for name, v in crit.weighted.items()}
    loss = sum(terms.values())
    metrics = {"loss": loss}
    metrics.update({name: terms[name] for name in criterion_lib.LOSS_NAMES})
    metrics["loss_aux"] = sum((v for name, v in terms.items()
                               if name not in criterion_lib.LOSS_NAMES and name != "loss_ml"),
                              jnp.zeros((), jnp.float32))
    if "loss_ml" in terms:
        metrics["loss_ml"] = terms["loss_ml"]
    # Every valid (remapped) target is assigned a query (T <= Q), so this is the count.
    metrics["num_masks"] = crit.matchings.valid[-1].sum().astype(jnp.float32)
    if "topk_index" in out:
        metrics.update(multilabel_metrics.topk_train_sums(present, out["topk_index"]))
    return loss, metrics


def loss_fn(config: mlc.ConfigDict) -> Callable:
    """The (setup, params, batch, rng) -> (loss, metrics) function of `config.model.arch`."""
    if config.model.arch == "mask2former":
        return mask2former_loss
    from rankseg_jax.train import step  # noqa: PLC0415 (step imports this module)

    return lambda setup, params, batch, rng: step._loss_and_metrics(
        setup, params, batch["image"], batch["label"], rng)
