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


@jax.custom_vjp
def _bce_mean(x: jax.Array, y: jax.Array) -> jax.Array:
    # softplus(x) - x*y == (1 - y) * x - log_sigmoid(x), torch's forward, stable for any x.
    return jnp.mean(jax.nn.softplus(x) - x * y)


def _bce_mean_fwd(x, y):
    return _bce_mean(x, y), (x, y)


def _bce_mean_bwd(res, g):
    # torch `binary_cross_entropy_with_logits_backward` (reduction='mean'):
    # (sigmoid(x) - y) * grad / numel, i.e. (0.5 - y) / numel at x = 0. Autodiff through
    # max(x, 0) + log1p(exp(-|x|)) gives -y / numel there; through softplus it is
    # exp(x - softplus(x)), up to ~5 ulp off torch elsewhere (this form: <= 1 ulp).
    x, y = res
    n = jnp.asarray(x.size, x.dtype)
    return (jax.nn.sigmoid(x) - y) * g / n, -(x * g) / n


_bce_mean.defvjp(_bce_mean_fwd, _bce_mean_bwd)


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """torch BCEWithLogitsLoss(reduction='mean'): mean over B*K. Returns a float32 scalar.

    logits, targets: [B, K] (targets in [0, 1]). The gradient is torch's formula
    (sigmoid(x) - y) / (B*K), exact at x = 0.
    """
    return _bce_mean(logits.astype(jnp.float32), targets.astype(jnp.float32))


def image_loss(logits: jax.Array, targets: jax.Array, cfg: mlc.ConfigDict) -> jax.Array:
    """The configured multi-label loss (`loss.img_type`), unweighted."""
    if cfg.img_type == "asl":
        return asymmetric_loss(logits, targets, gamma_neg=cfg.asl_gamma_neg,
                               gamma_pos=cfg.asl_gamma_pos, clip=cfg.asl_clip,
                               eps=cfg.asl_eps)
    return bce_with_logits(logits, targets)  # loss.img_type is validated: 'bce'
