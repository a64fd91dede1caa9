"""The literal full-K inference path of mmseg-0.17 `EncoderDecoder` (for checks and benchmarks).

`encode_decode` resizes the head's K-way logits bilinearly to the input size; `slide_logits`
places windows exactly as mmseg (`windows.slide_windows`), lets each window choose its own
top-kappa, and averages logits (including the -100 fill) by the per-pixel window count.
This is O(K * H * W); evaluation uses the memory-light path of `inference.py`, which equals it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rankseg_jax import resize
from rankseg_jax.evaluation import windows


def encode_decode(model, images: jax.Array, gt_present: jax.Array | None = None) -> jax.Array:
    """K-way logits at the input size (mmseg `encode_decode`).

    images: [B, H, W, 3]. Returns [B, K, H, W] float32: the head's eval logits (-100 outside
    the top-kappa for RankSeg) resized bilinearly (align_corners=False) to (H, W). When H or W
    is not a multiple of the patch size the padded grid is stretched onto (H, W), as mmseg.
    """
    out = model(images, train=False, gt_present=gt_present, full_logits=True)
    return resize.resize_bilinear(out["full_logits"], images.shape[1:3])


def slide_logits(model, images: jax.Array, crop: tuple[int, int], stride: tuple[int, int],
                 gt_present: jax.Array | None = None) -> jax.Array:
    """Sliding-window K-way logits (mmseg `slide_inference`, rescale=False).

    images: [B, H, W, 3]. All windows have the same size, so they run as one batch of
    B * n_windows (the model is batch-size invariant, so this equals one window at a time).
    Each window picks its own top-kappa; logits, including the -100 fill, are summed and
    divided by the per-pixel window count. Returns [B, K, H, W] float32.
    """
    b, hgt, wid, _ = images.shape
    boxes = windows.slide_windows(hgt, wid, crop, stride)
    crops = jnp.concatenate([images[:, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes], axis=0)
    gt = None if gt_present is None else jnp.tile(gt_present, (len(boxes), 1))
    window_logits = encode_decode(model, crops, gt)  # [n*B, K, ch, cw]
    canvas = jnp.zeros((b, window_logits.shape[1], hgt, wid), jnp.float32)
    count = np.zeros((hgt, wid), np.float32)
    for n, (y1, y2, x1, x2) in enumerate(boxes):
        canvas = canvas.at[:, :, y1:y2, x1:x2].add(window_logits[n * b:(n + 1) * b])
        count[y1:y2, x1:x2] += 1
    return canvas / jnp.asarray(count)


def inference_logits(model, images: jax.Array, *, mode: str,
                     crop: tuple[int, int] = (512, 512), stride: tuple[int, int] = (512, 512),
                     gt_present: jax.Array | None = None) -> jax.Array:
    """Whole or slide K-way logits at the (resized) input size, [B, K, H, W]."""
    if mode == "whole":
        return encode_decode(model, images, gt_present)
    return slide_logits(model, images, tuple(crop), tuple(stride), gt_present)


def naive_scores(model, images, *, mode, crop, stride, ori, flip, softmax):
    """The full-K scores of one view in the official order of operations.

    images: [B, h, w, 3] (already flipped when `flip`); ori: (H0, W0). Returns [B, K, H0, W0]
    float32: logits (softmax=False) or softmax probabilities, un-flipped.
    """
    logits = inference_logits(model, images, mode=mode, crop=crop, stride=stride)
    logits = resize.resize_bilinear(logits, ori)
    out = jax.nn.softmax(logits, axis=1) if softmax else logits
    return out[..., ::-1] if flip else out
