"""Segmenter's mask-transformer decode head, optionally hosting RankSeg (pixel classification).

The head (official `MaskTransformerHead` / `MaskTransformerRankSegHead`, mmseg-0.17
`decode_heads/segmenter_mask_head.py`): patch tokens are projected (`proj_dec`), joined with
K learned class tokens, run through `n_layers` pre-norm blocks and `decoder_norm`; the masks
are cosine similarities of projected patch and class tokens, normalised over the class slots
(`mask_norm`). With RankSeg (`rankseg` config given) the head ranks the classes with a
multi-label encoder, keeps the top-kappa class tokens per image (in rank order) and
normalises over the kappa rank slots with a per-rank affine.

Inputs are the backbone's patch grid [B, h, w, C] (and OCE class tokens [B, K, C] when the
class embeddings come from the backbone). Outputs are dicts with named fields:
    image_logits [B, K]       multi-label logits (RankSeg only)
    topk_index   [B, kappa]   selected classes in descending score order (RankSeg only)
    mask_logits  [B, kappa, h, w] (RankSeg, rank order) or [B, K, h, w] (Segmenter)
    full_logits  [B, K, h, w] (when asked): -100 outside the top-kappa for RankSeg
    rank_valid   [B, kappa]   bool, ranks kept by dynamic kappa (all True when static)
    class_features [B, K, d]  the class features the top-kappa rows are gathered from

Parameter paths (public contract, see docs/parameters.md): `cls_emb [1,K,d]`,
`proj_dec.{kernel,bias}`, `blocks.{j}.<Block>`, `decoder_norm`, `proj_patch [d,d]`,
`proj_classes [d,d]` (right-multiplied, as official), `mask_norm.{scale,bias}`; RankSeg
adds `decoder_norm2` and `ml_fc.{kernel [K,d], bias [K]}` (tran_enc), `ml_decoder.*`
(tran_dec) or `ml_gap.*` (gap_linear).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from flax import nnx

from rankseg_jax import resize
from rankseg_jax.models import transformer as tfm
from rankseg_jax.rankseg import encoders, ranking
from rankseg_jax.rankseg.classifier import GroupWiseLinear, RankNorm, cosine_similarity
from rankseg_jax.rankseg.config import RankSegConfig


@dataclasses.dataclass(frozen=True)
class MaskTransformerConfig:
    """The decode head's structure (`config.model.head` plus the facts it depends on).

    num_classes: K. d_encoder: backbone width. cls_emb_from_backbone: the class tokens come
    from the backbone (OCE) instead of the head's own `cls_emb`.
    """

    num_classes: int
    d_encoder: int
    d_model: int = 768
    num_heads: int = 12
    d_ff: int = 3072
    n_layers: int = 2
    dropout: float = 0.0
    drop_path_rate: float = 0.0
    ln_eps: float = 1e-5
    cls_emb_from_backbone: bool = False

    @classmethod
    def from_config(cls, model: mlc.ConfigDict) -> MaskTransformerConfig:
        """From `config.model` (head section, K, backbone width and OCE flag)."""
        h = model.head
        return cls(num_classes=model.num_classes, d_encoder=model.vit.embed_dim,
                   d_model=h.d_model, num_heads=h.num_heads, d_ff=h.d_ff,
                   n_layers=h.n_layers, dropout=h.dropout, drop_path_rate=h.drop_path_rate,
                   ln_eps=h.ln_eps, cls_emb_from_backbone=model.vit.oce)


def _tokens(grid: jax.Array) -> jax.Array:
    b, h, w, c = grid.shape
    return grid.reshape(b, h * w, c)


def _to_maps(masks: jax.Array, h: int, w: int) -> jax.Array:
    """[B, h*w, N] -> [B, N, h, w]."""
    b, _, n = masks.shape
    return masks.reshape(b, h, w, n).transpose(0, 3, 1, 2)


class MaskTransformerHead(nnx.Module):
    """Segmenter's mask transformer; with `rankseg`, the RankSeg head on top of it.

    RankSeg's multi-label encoder (`rankseg.ml_encoder`):
      tran_enc   (default) blocks[0] over [pooled patches; class tokens] -> decoder_norm2 ->
                 GroupWiseLinear; the gathered class tokens are the decoder_norm2 outputs and
                 blocks[1:] segment.
      tran_dec   DETR-style decoder (MultiLabelDecoder); raw cls_emb rows are gathered.
      gap_linear global pooling + 2 linears (MultiLabelGAP); raw cls_emb rows are gathered.
    """

    def __init__(self, cfg: MaskTransformerConfig, rankseg: RankSegConfig | None = None, *,
                 dtype=jnp.float32, remat: bool | str = False, attention: str = "xla",
                 rngs: nnx.Rngs):
        self.cfg, self.rankseg = cfg, rankseg
        self.num_classes = cfg.num_classes
        self.dtype, self.remat = dtype, remat
        init = tfm.trunc_normal_init()
        d = cfg.d_model
        if not cfg.cls_emb_from_backbone:
            self.cls_emb = nnx.Param(0.02 * jax.random.truncated_normal(
                rngs.params(), -100.0, 100.0, (1, cfg.num_classes, d)))
        self.proj_dec = tfm.dense(cfg.d_encoder, d, init, dtype, rngs)
        rates = np.linspace(0.0, cfg.drop_path_rate, cfg.n_layers)
        self.blocks = nnx.List([
            tfm.Block(d, cfg.num_heads, cfg.d_ff, eps=cfg.ln_eps, drop=cfg.dropout,
                      attn_drop=cfg.dropout, drop_path=float(rates[j]), init=init,
                      dtype=dtype, attention=attention, rngs=rngs)
            for j in range(cfg.n_layers)])
        self.decoder_norm = tfm.layer_norm(d, cfg.ln_eps, rngs)
        scale = d ** -0.5
        self.proj_patch = nnx.Param(scale * jax.random.normal(rngs.params(), (d, d)))
        self.proj_classes = nnx.Param(scale * jax.random.normal(rngs.params(), (d, d)))
        if rankseg is None:
            self.mask_norm = RankNorm(cfg.num_classes, eps=cfg.ln_eps)
            return
        self.mask_norm = RankNorm(rankseg.topk, shared=rankseg.shared_temperature,
                                  eps=cfg.ln_eps)
        if rankseg.ml_encoder == "tran_enc":
            self.decoder_norm2 = tfm.layer_norm(d, cfg.ln_eps, rngs)
            self.ml_fc = GroupWiseLinear(cfg.num_classes, d, rngs=rngs)
        elif rankseg.ml_encoder == "tran_dec":
            self.ml_decoder = encoders.MultiLabelDecoder(
                num_classes=cfg.num_classes, d_encoder=cfg.d_encoder, d_model=d,
                num_heads=rankseg.dec_num_heads, d_ff=rankseg.dec_d_ff,
                num_layers=rankseg.dec_layers, dropout=cfg.dropout,
                pool_size=rankseg.downsample, dtype=dtype, rngs=rngs)
        else:  # gap_linear (the schema admits nothing else)
            self.ml_gap = encoders.MultiLabelGAP(num_classes=cfg.num_classes,
                                                 d_encoder=cfg.d_encoder, dtype=dtype,
                                                 rngs=rngs)

    # ---------------------------------------------------------------- pieces

    def _class_tokens(self, batch: int, class_tokens: jax.Array | None) -> jax.Array:
        if self.cfg.cls_emb_from_backbone:
            if class_tokens is None:
                raise ValueError("this head takes class tokens from the backbone (OCE), "
                                 "but the backbone returned none")
            return class_tokens.astype(self.dtype)
        emb = self.cls_emb[...].astype(self.dtype)
        return jnp.broadcast_to(emb, (batch,) + emb.shape[1:])

    def _masks(self, pixel_tokens, class_tokens, blocks, rng) -> jax.Array:
        """[pixels; classes] through blocks + decoder_norm -> normalised cosine masks
        [B, P, N] float32 (N = K, or kappa rank slots)."""
        n_pix = pixel_tokens.shape[1]
        x = jnp.concatenate([pixel_tokens, class_tokens], axis=1)
        x = tfm.run_blocks(blocks, x, rng, self.remat)
        x = self.decoder_norm(x).astype(x.dtype)
        p = x[:, :n_pix] @ self.proj_patch[...].astype(x.dtype)
        c = x[:, n_pix:] @ self.proj_classes[...].astype(x.dtype)
        return self.mask_norm(cosine_similarity(p, c))

    def _rank_scores(self, grid, queries, rng):
        """RankSeg's multi-label encoder. Returns (image_logits [B, K], class features the
        top-kappa are gathered from [B, K, d], the blocks that segment)."""
        s = self.rankseg.downsample
        pooled = resize.adaptive_avg_pool(grid, (s, s), axes=(1, 2)).astype(self.dtype)
        if self.rankseg.ml_encoder == "tran_enc":
            logits, feats = encoders.encode_class_tokens(
                self.blocks[:1], self.decoder_norm2, self.ml_fc,
                self.proj_dec(_tokens(pooled)), queries, rng, self.remat)
            return logits, feats, self.blocks[1:]
        if self.rankseg.ml_encoder == "tran_dec":
            return self.ml_decoder(pooled, queries, rng), queries, self.blocks
        return self.ml_gap(pooled), queries, self.blocks

    # ---------------------------------------------------------------- forward

    def __call__(self, grid: jax.Array, class_tokens: jax.Array | None = None, *,
                 train: bool = False, rng: jax.Array | None = None,
                 gt_present: jax.Array | None = None, full_logits: bool = True) -> dict:
        """Runs the head on the patch grid.

        grid: [B, h, w, C]; class_tokens: [B, K, C] (OCE) or None; rng: dropout key or None;
        gt_present: [B, K] 0/1 ground-truth presence, given only for oracle selection;
        full_logits: also return the K-way map (-100 outside the top-kappa for RankSeg).
        Returns the dict described in the module docstring.
        """
        b, h, w, _ = grid.shape
        pixels = self.proj_dec(_tokens(grid).astype(self.dtype))
        queries = self._class_tokens(b, class_tokens)
        if self.rankseg is None:
            maps = _to_maps(self._masks(pixels, queries, self.blocks, rng), h, w)
            return {"mask_logits": maps, **({"full_logits": maps} if full_logits else {})}
        r_ml, r_seg = tfm.split_rng(rng, 2)
        image_logits, class_feats, seg_blocks = self._rank_scores(grid, queries, r_ml)
        threshold = 0.0 if train else self.rankseg.dynamic_k_threshold
        topk, rank_valid = ranking.select(image_logits, self.rankseg.topk,
                                          gt_present=gt_present, dynamic_threshold=threshold)
        selected = ranking.gather_ranked(class_feats, topk)
        masks = self._masks(pixels, selected, seg_blocks, r_seg)  # [B, hw, kappa]
        masks = jnp.where(rank_valid[:, None, :], masks, ranking.OUTSIDE_TOPK_LOGIT)
        maps = _to_maps(masks, h, w)
        out = {"image_logits": image_logits, "topk_index": topk, "mask_logits": maps,
               "rank_valid": rank_valid, "class_features": class_feats}
        if full_logits:
            out["full_logits"] = ranking.scatter_to_classes(maps, topk, self.num_classes)
        return out
