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


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int,
                  average: str = "all_pixels") -> jax.Array:
    """Softmax cross-entropy over the channel axis with an ignore label.

    logits: [B, C, H, W]; labels: [B, H, W] int in [0, C) or `ignore_index` (any value outside
    [0, C) is ignored). average: 'all_pixels' divides the sum over valid pixels by B*H*W
    (mmseg 0.17: ignored pixels stay in the denominator); 'valid_pixels' by the number of
    valid pixels (0 when there are none). Returns a float32 scalar.
    """
    c = logits.shape[1]
    valid = (labels >= 0) & (labels < c) & (labels != ignore_index)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=1)
    safe = jnp.where(valid, labels, 0).astype(jnp.int32)
    nll = -jnp.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    total = jnp.where(valid, nll, 0.0).sum()
    if average == "all_pixels":
        return total / labels.size
    return total / jnp.maximum(valid.sum(), 1)  # 'valid_pixels' (loss.seg_average is validated)


def pixel_accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """mmseg `accuracy`: % of all pixels whose argmax equals the label (ignored count wrong).

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
    out = {"loss_seg": cfg.seg_weight * cross_entropy(logits, seg_labels, ignore_index,
                                                      cfg.seg_average),
           "acc_seg": pixel_accuracy(logits, seg_labels)}
    total = out["loss_seg"]
    if "image_logits" in outputs:
        target = ranking.class_presence(labels, num_classes)
        out["loss_img"] = cfg.img_weight * rankseg_losses.image_loss(
            outputs["image_logits"], target, cfg)
        total = total + out["loss_img"]
    out["loss"] = total
    return out
