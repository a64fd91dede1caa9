"""Mask2Former, optionally hosting RankSeg (region classification): `MaskFormer`.

The official meta-architecture (`mask2former/maskformer_model.py:221-426`): normalised
images, zero-padded bottom/right to a multiple of `size_divisibility` -> backbone (res2..res5)
-> MSDeformAttn pixel decoder -> masked-attention transformer decoder, which makes P = L + 1
predictions (class logits over K + 1 columns, the last = no object, and mask logits at 1/4
of the padded size).

With RankSeg (`rankseg` config given): the multi-label head reads the raw (pre
`decoder_norm`) queries of decoder layer `ml_read_layer` and scores the K classes per image;
the classes are ranked (`ranking.select`), the no-object column is appended, the class
columns of EVERY prediction are gathered in that rank order (`ranking.gather_class_columns`)
and normalised over the kappa + 1 rank slots with a per-slot affine (`ml_norm`, RankNorm: the
rank-adaptive temperature), on top of the decoder's cosine classifier. Losses then run in
rank space; inference scatters the final prediction back to class order with -100 for
classes outside the top-kappa (`ranking.scatter_class_columns`).

The `-gt` oracle (`gt_oracle`): the plain architecture; the logits of classes absent from
the image's ground truth are set to -100 in the FINAL prediction only (no-object untouched;
`maskformer_model.py:304-307`), so it needs `gt_present` at inference. Plain and RankSeg
models take no ground truth: the official forward reads `instances.gt_classes` for every
variant (`:251-280`, a crash without them) although only the `-gt` outputs depend on them;
that is not inherited here.

Outputs (dict; P predictions, B images, Q queries, kappa = rankseg.topk):
    class_logits       [P, B, Q, K+1] (plain / -gt: the decoder's logits, the final one
                       masked for -gt) or [P, B, Q, kappa+1] (RankSeg: ranked, ml_norm'd; slot
                       kappa = no object). What losses and matching read.
    mask_logits        [P, B, Q, H'/4, W'/4] (H', W' = padded size)
    class_logits_full  [B, Q, K+1] the final prediction in class order (what inference reads)
    image_logits       [B, K]  multi-label logits (RankSeg only)
    topk_index         [B, kappa] int32 ranked classes, best first, WITHOUT the no-object
                       index (RankSeg only; `ranking.with_no_object` appends it)
    intermediates      (return_intermediates only) backbone features, pixel decoder extras,
                       query features, cross-attention masks, the raw decoder class logits,
                       ML-head tokens and the gathered (pre-ml_norm) logits.
Every op is per image, so outputs are batch-size invariant (given the same padded size).

Parameter paths (public contract; official detectron2 key on the right, tables in
`rankseg_jax/convert/tables/{swin,mask2former}.py`, docs/parameters.md):
    backbone.*         Swin (models/backbones/swin.py)          backbone.*
    pixel_decoder.*    models/heads/mask2former/pixel_decoder   sem_seg_head.pixel_decoder.*
    predictor.*        models/heads/mask2former/transformer_decoder
                                                                sem_seg_head.predictor.*
    ml_head.cls_emb [1, K, d]                                   ml_head.cls_emb
    ml_head.proj_dec.{kernel [D, d], bias [d]}                  ml_head.proj_dec.*
    ml_head.block.{norm1,norm2}.{scale,bias} [d]                ml_head.block.norm{1,2}.*
    ml_head.block.attn.{query,key,value}.{kernel [d,d],bias}    ml_head.block.attn.qkv thirds
    ml_head.block.attn.out.{kernel,bias}                        ml_head.block.attn.proj.*
    ml_head.block.mlp.fc1.{kernel [d,4d],bias}, fc2             ml_head.block.mlp.fc{1,2}.*
    ml_head.norm.{scale,bias} [d]                               ml_head.norm.*
    ml_head.fc.{kernel [K, d], bias [K]}                        ml_head.fc.W [1,K,d] / .b [1,K]
    ml_norm.{scale,bias} [kappa+1] ([1] with temperature=shared) ml_norm.{weight,bias}
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections as mlc
from flax import nnx

from rankseg_jax.models import transformer as tfm
from rankseg_jax.models.heads.mask2former import (
    MSDeformAttnPixelDecoder,
    MultiScaleMaskedTransformerDecoder,
)
from rankseg_jax.rankseg import ranking
from rankseg_jax.rankseg.classifier import RankNorm
from rankseg_jax.rankseg.config import RankSegConfig
from rankseg_jax.rankseg.encoders import MultiLabelHead

ML_HEAD_DIM = 64  # the multi-label head has width // 64 heads (`maskformer_model.py:159-171`)


@dataclasses.dataclass(frozen=True)
class MaskFormerConfig:
    """Structure of the pixel decoder, the decoder and the host (`config.model.mask2former`).

    num_classes K; in_channels: backbone channels of res2..res5; dec_layers: predictions
    (= decoder layers + 1, the official DEC_LAYERS); the rest as in the schema.
    """

    num_classes: int
    in_channels: tuple
    hidden_dim: int = 256
    num_queries: int = 100
    nheads: int = 8
    dim_feedforward: int = 2048
    dec_layers: int = 10
    enc_layers: int = 6
    enc_ffn: int = 1024
    enc_points: int = 4
    conv_dim: int = 256
    mask_dim: int = 256
    dropout: float = 0.0
    enforce_input_proj: bool = False
    cosine_classifier: bool = False
    size_divisibility: int = 32
    gt_oracle: bool = False

    @classmethod
    def from_config(cls, model: mlc.ConfigDict, in_channels) -> MaskFormerConfig:
        """From `config.model` and the backbone's res2..res5 channels."""
        mf = model.mask2former
        names = [f.name for f in dataclasses.fields(cls)
                 if f.name not in ("num_classes", "in_channels")]
        return cls(num_classes=model.num_classes, in_channels=tuple(in_channels),
                   **{n: mf[n] for n in names})

    @property
    def num_layers(self) -> int:
        """Transformer decoder layers (DEC_LAYERS - 1)."""
        return self.dec_layers - 1


def pad_to_multiple(images: jax.Array, divisor: int) -> jax.Array:
    """Zero-pads [B, H, W, C] bottom/right to multiples of `divisor` (detectron2
    `ImageList.from_tensors`, pad value 0 after normalisation)."""
    h, w = images.shape[1:3]
    ph, pw = -(-h // divisor) * divisor, -(-w // divisor) * divisor
    if (ph, pw) == (h, w):
        return images
    return jnp.pad(images, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)))


class MaskFormer(nnx.Module):
    """Backbone + Mask2Former head (+ RankSeg). See the module docstring.

    backbone: a module mapping images [B, H, W, 3] (and a drop-path key) to {'res2'..'res5'}
    NHWC maps with `cfg.in_channels` channels. rankseg: the RankSeg options, None for the
    plain model. dtype: compute dtype (params float32).

    Ground truth: only the `-gt` oracle (`cfg.gt_oracle`) reads it (`gt_present`, required
    there). Plain and RankSeg models take none, unlike the official forward, which reads the
    GT classes of every image in every variant (`maskformer_model.py:251-280`; it crashes
    without them although plain / RankSeg outputs do not depend on them).
    """

    def __init__(self, backbone: nnx.Module, cfg: MaskFormerConfig,
                 rankseg: RankSegConfig | None = None, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if rankseg is not None and not 0 <= rankseg.ml_read_layer < cfg.num_layers:
            raise ValueError(f"ml_read_layer {rankseg.ml_read_layer} is not one of the "
                             f"{cfg.num_layers} decoder layers")
        self.cfg, self.rankseg = cfg, rankseg
        self.backbone = backbone
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            cfg.in_channels, conv_dim=cfg.conv_dim, mask_dim=cfg.mask_dim,
            encoder_layers=cfg.enc_layers, encoder_ffn=cfg.enc_ffn, num_heads=cfg.nheads,
            num_points=cfg.enc_points, dropout=cfg.dropout, dtype=dtype, rngs=rngs)
        # Decoder dropout is hard-coded 0.0 officially (`..._decoder.py:291,300,309`).
        self.predictor = MultiScaleMaskedTransformerDecoder(
            in_channels=cfg.conv_dim, hidden_dim=cfg.hidden_dim, num_queries=cfg.num_queries,
            num_heads=cfg.nheads, ffn_dim=cfg.dim_feedforward, num_layers=cfg.num_layers,
            num_classes=cfg.num_classes, mask_dim=cfg.mask_dim,
            cosine_classifier=cfg.cosine_classifier,
            enforce_input_proj=cfg.enforce_input_proj, dtype=dtype, rngs=rngs)
        if rankseg is None:
            return
        # Sized by CONVS_DIM officially but fed HIDDEN_DIM queries (`:162,284`); the config
        # validation makes them equal.
        self.ml_head = MultiLabelHead(
            num_classes=cfg.num_classes, d_in=cfg.conv_dim, d_model=rankseg.ml_hidden_dim,
            num_heads=rankseg.ml_hidden_dim // ML_HEAD_DIM, dropout=rankseg.ml_dropout,
            dtype=dtype, rngs=rngs)
        self.ml_norm = RankNorm(rankseg.topk + 1, shared=rankseg.shared_temperature)

    @property
    def is_rankseg(self) -> bool:
        return self.rankseg is not None

    def __call__(self, images: jax.Array, *, rng: jax.Array | None = None,
                 gt_present: jax.Array | None = None,
                 return_intermediates: bool = False) -> dict:
        """Runs the model.

        images: [B, H, W, 3] normalised ((x - mean) / std), any H, W (padded here).
        rng: dropout / drop-path key, None = deterministic (eval). gt_present: [B, K] 0/1
        ground-truth class presence, read only by the `-gt` oracle (required there).
        Returns the dict of the module docstring.
        """
        cfg = self.cfg
        if cfg.gt_oracle and gt_present is None:
            raise ValueError("model.mask2former.gt_oracle masks the classes absent from the "
                             "ground truth, so gt_present [B, K] must be given")
        r_bb, r_pd, r_dec, r_ml = tfm.split_rng(rng, 4)
        features = self.backbone(pad_to_multiple(images, cfg.size_divisibility), r_bb)
        pixel = self.pixel_decoder(features, r_pd, return_intermediates=return_intermediates)
        mask_features, maps = pixel[0], pixel[1]
        dec = self.predictor(maps, mask_features, r_dec, return_attn_masks=return_intermediates)
        class_logits = dec["class_logits"]  # [P, B, Q, K+1]
        if cfg.gt_oracle:  # final prediction only, before any ranking (`:304-307`)
            class_logits = class_logits.at[-1].set(
                ranking.mask_absent_classes(class_logits[-1], gt_present))
        out = {"mask_logits": dec["mask_logits"]}
        inter = {}
        if return_intermediates:
            inter = {"features": features, "mask_features": mask_features,
                     "multi_scale": maps, "pixel_decoder": pixel[2],
                     "query_features": dec["query_features"],
                     "cross_attn_masks": dec["cross_attn_masks"],
                     "decoder_class_logits": dec["class_logits"]}
        if self.rankseg is None:
            out["class_logits"] = class_logits
            out["class_logits_full"] = class_logits[-1]
        else:
            queries = dec["query_features"][self.rankseg.ml_read_layer]  # raw, pre-norm
            if return_intermediates:
                image_logits, inter["ml_head"] = self.ml_head(queries, r_ml,
                                                              return_intermediates=True)
            else:
                image_logits = self.ml_head(queries, r_ml)
            topk, _ = ranking.select(image_logits, self.rankseg.topk)
            # The same ranking for every prediction of an image (`:310-327`).
            gathered = jax.vmap(ranking.gather_class_columns, in_axes=(0, None))(
                class_logits, topk)
            ranked = self.ml_norm(gathered)
            out.update(class_logits=ranked, image_logits=image_logits, topk_index=topk,
                       class_logits_full=ranking.scatter_class_columns(
                           ranked[-1], topk, cfg.num_classes))
            if return_intermediates:
                inter["gathered_logits"] = gathered
        if return_intermediates:
            out["intermediates"] = inter
        return out
