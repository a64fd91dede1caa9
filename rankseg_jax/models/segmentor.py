"""Segmentor = ViT backbone + head, built from a config; whole and slide inference.

`Segmentor.__call__` returns the head's dict at 1/patch resolution. The inference functions
reproduce mmseg-0.17 `EncoderDecoder` (official_spec.md §5): `encode_decode` resizes the
head's K-way logits bilinearly to the input size; `slide_logits` places windows exactly as
mmseg, lets each window choose its own top-kappa, and averages logits (including the -100
fill) by the per-pixel window count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from flax import nnx

from rankseg_jax import resize
from rankseg_jax.models import heads as heads_lib
from rankseg_jax.models import vit as vit_lib

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Segmentor(nnx.Module):
    """Backbone + decode head. Params live under `backbone.*` and `head.*`."""

    def __init__(self, backbone: vit_lib.ViT, head: nnx.Module, *, num_classes: int,
                 use_oracle_train: bool = False, use_oracle_eval: bool = False):
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes
        self.use_oracle_train = use_oracle_train
        self.use_oracle_eval = use_oracle_eval

    @property
    def is_rankseg(self) -> bool:
        return isinstance(self.head, heads_lib.RankSegHead)

    def __call__(self, images: jax.Array, *, train: bool = False,
                 rng: jax.Array | None = None, gt_present: jax.Array | None = None,
                 full_logits: bool = False) -> dict:
        """Runs backbone and head.

        images: [B, H, W, 3] normalised. train: training semantics (oracle selection when
        configured for training); rng: dropout/drop-path key, None = deterministic.
        gt_present: [B, K] ground-truth class presence, used only by oracle modes.
        full_logits: also return the K-way [B, K, h, w] map (-100 outside the top-kappa).
        Returns the head dict (see heads.py) plus 'patch_grid' [B, h, w, C].
        """
        r_bb, r_head = (None, None) if rng is None else tuple(jax.random.split(rng))
        grid, class_tokens = self.backbone(images, r_bb)
        oracle = self.use_oracle_train if train else self.use_oracle_eval
        if oracle and gt_present is None:
            raise ValueError("the head is configured for oracle (ground-truth) class selection "
                             "(model.head.oracle), so gt_present [B, K] must be given")
        out = self.head(grid, class_tokens, train=train, rng=r_head,
                        gt_present=gt_present if oracle else None, full_logits=full_logits)
        out["patch_grid"] = grid
        return out


def build_model(config: mlc.ConfigDict, rngs: nnx.Rngs | None = None) -> Segmentor:
    """Builds the Segmentor described by `config.model` (random official-style init)."""
    m, b, h = config.model, config.model.backbone, config.model.head
    rngs = rngs if rngs is not None else nnx.Rngs(config.seed)
    dtype = _DTYPES[m.dtype]
    backbone = vit_lib.ViT(
        embed_dim=b.embed_dim, depth=b.depth, num_heads=b.num_heads, mlp_ratio=b.mlp_ratio,
        patch_size=b.patch_size, img_size=tuple(b.img_size), qkv_bias=b.qkv_bias,
        drop_rate=b.drop_rate, attn_drop_rate=b.attn_drop_rate,
        drop_path_rate=b.drop_path_rate, final_norm=b.final_norm, ln_eps=b.ln_eps,
        oce_classes=m.num_classes if b.oce else 0, oce_start_layer=b.oce_start_layer,
        dtype=dtype, remat=m.remat, rngs=rngs)
    common = dict(num_classes=m.num_classes, d_encoder=b.embed_dim, d_model=h.d_model,
                  num_heads=h.num_heads, d_ff=h.d_ff, n_layers=h.n_layers, dropout=h.dropout,
                  drop_path_rate=h.drop_path_rate, ln_eps=h.ln_eps,
                  cls_emb_from_backbone=b.oce, dtype=dtype, remat=m.remat, rngs=rngs)
    if h.type == "segmenter":
        head = heads_lib.SegmenterHead(**common)
    elif h.type == "rankseg":
        head = heads_lib.RankSegHead(
            topk=h.topk, downsample=h.downsample, ml_encoder=h.ml_encoder,
            temperature=h.temperature, dec_num_heads=h.dec_num_heads, dec_d_ff=h.dec_d_ff,
            dec_layers=h.dec_layers, dynamic_k_threshold=h.dynamic_k_threshold, **common)
    else:
        raise ValueError(f"model.head.type={h.type!r} is not 'segmenter' or 'rankseg'")
    return Segmentor(backbone, head, num_classes=m.num_classes,
                     use_oracle_train=h.oracle == "train_eval",
                     use_oracle_eval=h.oracle in ("train_eval", "eval"))


def encode_decode(model: Segmentor, images: jax.Array,
                  gt_present: jax.Array | None = None) -> jax.Array:
    """K-way logits at the input size (mmseg `encode_decode`).

    images: [B, H, W, 3]. Returns [B, K, H, W] float32: the head's eval logits (-100 outside
    the top-kappa for RankSeg) resized bilinearly (align_corners=False) to (H, W). When H or W
    is not a multiple of the patch size the padded grid is stretched onto (H, W), as mmseg.
    """
    out = model(images, train=False, gt_present=gt_present, full_logits=True)
    return resize.resize_bilinear(out["full_logits"], images.shape[1:3])


def slide_windows(height: int, width: int, crop: tuple[int, int],
                  stride: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """mmseg window placement: list of (y1, y2, x1, x2), row-major.

    grids = max(size - crop + stride - 1, 0) // stride + 1; the last window is shifted back to
    end at the border; windows are never larger than the image.
    """
    (ch, cw), (sh, sw) = crop, stride
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    boxes = []
    for i in range(rows):
        for j in range(cols):
            y2 = min(i * sh + ch, height)
            x2 = min(j * sw + cw, width)
            boxes.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return boxes


def slide_logits(model: Segmentor, images: jax.Array, crop: tuple[int, int],
                 stride: tuple[int, int], gt_present: jax.Array | None = None) -> jax.Array:
    """Sliding-window K-way logits (mmseg `slide_inference`, rescale=False).

    images: [B, H, W, 3]. All windows have the same size, so they run as one batch of
    B * n_windows (the model is batch-size invariant, so this equals one window at a time).
    Each window picks its own top-kappa; logits, including the -100 fill, are summed and
    divided by the per-pixel window count. Returns [B, K, H, W] float32.
    """
    b, hgt, wid, _ = images.shape
    boxes = slide_windows(hgt, wid, crop, stride)
    crops = jnp.concatenate([images[:, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes], axis=0)
    gt = None if gt_present is None else jnp.tile(gt_present, (len(boxes), 1))
    window_logits = encode_decode(model, crops, gt)  # [n*B, K, ch, cw]
    canvas = jnp.zeros((b, window_logits.shape[1], hgt, wid), jnp.float32)
    count = np.zeros((hgt, wid), np.float32)
    for n, (y1, y2, x1, x2) in enumerate(boxes):
        canvas = canvas.at[:, :, y1:y2, x1:x2].add(window_logits[n * b:(n + 1) * b])
        count[y1:y2, x1:x2] += 1
    return canvas / jnp.asarray(count)


def inference_logits(model: Segmentor, images: jax.Array, *, mode: str,
                     crop: tuple[int, int] = (512, 512), stride: tuple[int, int] = (512, 512),
                     gt_present: jax.Array | None = None) -> jax.Array:
    """Whole or slide K-way logits at the (resized) input size, [B, K, H, W]."""
    if mode == "whole":
        return encode_decode(model, images, gt_present)
    if mode == "slide":
        return slide_logits(model, images, tuple(crop), tuple(stride), gt_present)
    raise ValueError(f"test.mode={mode!r} is not 'whole' or 'slide'")
