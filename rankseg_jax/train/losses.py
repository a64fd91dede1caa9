"""Losses with the official (mmseg-0.17) numerics: cross-entropy, AsymmetricLoss, BCE.

`segmentation_losses` is the one entry point the trainer uses: it takes the model's output
dict and the label crops and returns named scalars (`loss` is the total).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections as mlc

from rankseg_jax import resize
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
    if average == "valid_pixels":
        return total / jnp.maximum(valid.sum(), 1)
    raise ValueError(f"loss.seg_average={average!r} is not 'all_pixels' or 'valid_pixels'")


def pixel_accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """mmseg `accuracy`: % of all pixels whose argmax equals the label (ignored count wrong).

    logits: [B, C, H, W]; labels: [B, H, W]. Returns a float32 scalar in [0, 100].
    """
    return 100.0 * (jnp.argmax(logits, axis=1) == labels).mean()


def asymmetric_loss(logits: jax.Array, targets: jax.Array, *, gamma_neg: float = 4.0,
                    gamma_pos: float = 1.0, clip: float = 0.05, eps: float = 1e-5) -> jax.Array:
    """Official AsymmetricLoss (Ridnik et al.), mean over all B*K entries.

    logits, targets: [B, K] (targets 0/1). p = sigmoid(x), p_neg = min(1 - p + clip, 1);
    L = y log(max(p, eps)) + (1-y) log(max(p_neg, eps)), times the focusing weight
    (1 - p*y - p_neg*(1-y))^(gamma_pos*y + gamma_neg*(1-y)), which is not detached (as
    official). Returns -sum(L) / (B*K).
    """
    x = logits.astype(jnp.float32)
    y = targets.astype(jnp.float32)
    p = jax.nn.sigmoid(x)
    p_neg = jnp.minimum(1.0 - p + clip, 1.0) if clip > 0 else 1.0 - p
    loss = y * jnp.log(jnp.maximum(p, eps)) + (1 - y) * jnp.log(jnp.maximum(p_neg, eps))
    if gamma_neg > 0 or gamma_pos > 0:
        base = 1.0 - p * y - p_neg * (1 - y)
        gamma = gamma_pos * y + gamma_neg * (1 - y)
        # torch: pow(b, 0) = 1 with zero gradient, also at b = 0 (p saturated to 1). In JAX the
        # gradient of b**0 at b = 0 is 0 * inf = NaN, so exponent-0 entries get base 1.
        safe_base = jnp.where(gamma == 0, 1.0, jnp.maximum(base, 0.0))
        weight = jnp.power(safe_base, gamma)
        loss = loss * weight
    return -loss.sum() / y.size


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """torch BCEWithLogitsLoss(reduction='mean'): mean over B*K. Returns a float32 scalar."""
    x = logits.astype(jnp.float32)
    y = targets.astype(jnp.float32)
    return jnp.mean(jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x))))


def image_loss(logits: jax.Array, targets: jax.Array, cfg: mlc.ConfigDict) -> jax.Array:
    """The configured multi-label loss (`loss.img_type`), unweighted."""
    if cfg.img_type == "asl":
        return asymmetric_loss(logits, targets, gamma_neg=cfg.asl_gamma_neg,
                               gamma_pos=cfg.asl_gamma_pos, clip=cfg.asl_clip,
                               eps=cfg.asl_eps)
    if cfg.img_type == "bce":
        return bce_with_logits(logits, targets)
    raise ValueError(f"loss.img_type={cfg.img_type!r} is not 'asl' or 'bce'")


def segmentation_losses(outputs: dict, labels: jax.Array, cfg: mlc.ConfigDict,
                        num_classes: int, ignore_index: int) -> dict[str, jax.Array]:
    """Loss terms of the Segmenter baseline or RankSeg head (official_spec.md §3.2, §3.4).

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
        out["loss_img"] = cfg.img_weight * image_loss(outputs["image_logits"], target, cfg)
        total = total + out["loss_img"]
    out["loss"] = total
    return out
