"""RankSeg's image-level (multi-label) losses, shared by every host.

The target is the image's class presence (`ranking.class_presence` of the label crop, or the
ground-truth class set of a panoptic image); the loss is the official AsymmetricLoss
(Ridnik et al., as in the official code) or BCE, averaged over B*K entries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections as mlc


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
    return bce_with_logits(logits, targets)  # loss.img_type is validated: 'bce'
