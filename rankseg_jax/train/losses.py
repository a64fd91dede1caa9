"""Segmenter's training losses with the official (mmseg-0.17) numerics.

`segmentation_losses` is the one entry point the trainer uses: it takes the model's output
dict and the label crops and returns named scalars (`loss` is the total). The pixel loss is
mmseg's cross-entropy; RankSeg's image-level loss comes from `rankseg_jax.rankseg.losses`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections as mlc

from rankseg_jax import resize
from rankseg_jax.rankseg import losses as rankseg_losses
from rankseg_jax.rankseg import ranking


def cross_entropy_and_accuracy(logits: jax.Array, labels: jax.Array, ignore_index: int,
                               average: str = "all_pixels") -> tuple[jax.Array, jax.Array]:
    """Softmax cross-entropy over the channel axis with an ignore label, and mmseg's pixel
    accuracy, from one pass over the logits.

    logits: [B, C, H, W]; labels: [B, H, W] int in [0, C) or `ignore_index` (any value outside
    [0, C) is ignored). average: 'all_pixels' divides the sum over valid pixels by B*H*W
    (mmseg 0.17: ignored pixels stay in the denominator); 'valid_pixels' by the number of
    valid pixels (0 when there are none). Returns (loss float32 [], accuracy float32 [] in
    [0, 100]).

    The loss is `jax.nn.log_softmax` written out (max-shift, log-sum-exp) so its class-axis
    max is reused: the label's logit equals that max exactly when the label is an argmax,
    which gives mmseg's `accuracy` (`mmseg/models/losses/accuracy.py:48`: % of ALL pixels
    whose top-1 class is the label; ignored pixels count as wrong) without a second K-way
    argmax over the full-resolution logits. Only exact ties differ: a tied label counts as
    correct here, while argmax (and torch's topk) may pick the other tied class.
    """
    c = logits.shape[1]
    x = logits.astype(jnp.float32)
    in_range = (labels >= 0) & (labels < c)
    valid = in_range & (labels != ignore_index)
    safe = jnp.where(in_range, labels, 0).astype(jnp.int32)
    shifted = x - jax.lax.stop_gradient(jnp.max(x, axis=1, keepdims=True))
    lse = jnp.log(jnp.sum(jnp.exp(shifted), axis=1))
    picked = jnp.take_along_axis(shifted, safe[:, None], axis=1)[:, 0]
    total = jnp.where(valid, lse - picked, 0.0).sum()
    if average == "all_pixels":
        loss = total / labels.size
    else:  # 'valid_pixels' (loss.seg_average is validated)
        loss = total / jnp.maximum(valid.sum(), 1)
    # picked == 0 <=> the label's logit is the max (shifted <= 0 everywhere).
    correct = in_range & (jax.lax.stop_gradient(picked) >= 0)
    return loss, 100.0 * correct.mean(dtype=jnp.float32)


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int,
                  average: str = "all_pixels") -> jax.Array:
    """The loss of `cross_entropy_and_accuracy` alone (float32 scalar)."""
    return cross_entropy_and_accuracy(logits, labels, ignore_index, average)[0]


def pixel_accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """mmseg `accuracy` by a K-way argmax: % of all pixels whose argmax equals the label
    (ignored count wrong). The trainer uses `cross_entropy_and_accuracy` instead.

    logits: [B, C, H, W]; labels: [B, H, W]. Returns a float32 scalar in [0, 100].
    """
    return 100.0 * (jnp.argmax(logits, axis=1) == labels).mean()


def segmentation_losses(outputs: dict, labels: jax.Array, cfg: mlc.ConfigDict,
                        num_classes: int, ignore_index: int) -> dict[str, jax.Array]:
    """Loss terms of the Segmenter baseline or RankSeg head (the `losses` of the official
    `decode_heads/mask_transformer_head.py` and `mask_transformer_rankseg_head.py`).

    outputs: the model dict (`mask_logits` [B, k or K, h, w]; RankSeg adds `image_logits`
    [B, K] and `topk_index` [B, k]). labels: [B, H, W] int, the padded augmented crop.
    The mask logits are resized bilinearly (align_corners=False) to (H, W). For RankSeg the
    labels are remapped to rank positions (classes outside the top-k become ignored) and the
    image-level target is the crop's class presence. Returns {'loss', 'loss_seg', 'acc_seg'}
    plus {'loss_img'} for RankSeg; losses are already multiplied by their weights.
    """
    logits = resize.resize_bilinear(outputs["mask_logits"], labels.shape[1:])
    if "topk_index" in outputs:
        seg_labels = ranking.remap_labels(labels, outputs["topk_index"], num_classes,
                                          ignore_index)
    else:
        seg_labels = labels
    loss_seg, acc_seg = cross_entropy_and_accuracy(logits, seg_labels, ignore_index,
                                                   cfg.seg_average)
    out = {"loss_seg": cfg.seg_weight * loss_seg, "acc_seg": acc_seg}
    total = out["loss_seg"]
    if "image_logits" in outputs:
        target = ranking.class_presence(labels, num_classes)
        out["loss_img"] = cfg.img_weight * rankseg_losses.image_loss(
            outputs["image_logits"], target, cfg)
        total = total + out["loss_img"]
    out["loss"] = total
    return out
