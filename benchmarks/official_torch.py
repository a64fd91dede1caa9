"""A plain-PyTorch stand-in for the official Segmenter and Segmenter+RankSeg step.

The official code (openseg-group/RankSeg: an mmsegmentation 0.17 fork on mmcv 1.4) cannot be
installed here, so this module rebuilds what one official iteration and one official
whole-image inference execute, with plain torch modules and no mmcv/mmseg:

* `VisionTransformer` (mmseg/models/backbones/vit.py): patch-embed conv, cls token,
  pos-embed (bicubic resize when the grid differs), pre-norm layers whose attention is
  mmcv's `MultiheadAttention`, i.e. a `torch.nn.MultiheadAttention` over (N, B, D) called
  with its default `need_weights=True` (mmcv/cnn/bricks/transformer.py), mmcv `FFN`,
  mmcv `DropPath`, final norm, every `out_indices` output;
* `UseIndexSingleOutNeck` (mmseg/models/necks/use_index_single_out_neck.py);
* `MaskTransformerHead` (mmseg/models/decode_heads/mask_transformer_head.py) and
  `MaskTransformerRankSegHead` (mmseg/models/decode_heads/mask_transformer_rankseg_head.py),
  with their losses and logged accuracies (mmseg/models/losses/{cross_entropy_loss,
  bce_loss,accuracy}.py);
* `EncoderDecoder` (mmseg/models/segmentors/encoder_decoder.py): train forward, whole and
  slide inference; `train_step` adds mmcv's poly lr hook, `_parse_losses` and the
  optimizer hook.

`state_dict()` keys (and their order) are exactly the official ones, so official mmcv
checkpoints load with `strict=True`. `tests/parity/test_official_torch_standin.py` checks
it against arrays produced by the official code. One deliberate difference: the official
RankSeg top-k gather only works at batch 1 per process (the configs use 1 image per GPU);
here it is a per-sample gather, identical at batch 1 and batch-correct beyond.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

# The backbones (mmseg ViT-S/16 and ViT-B/16 configs); head d_model = embed_dims.
PRESETS = {"s16": dict(embed_dims=384, depth=12, heads=6),
           "b16": dict(embed_dims=768, depth=12, heads=12)}
# segmenter-ori_rankseg_vit-b16_512x512_160k_ade20k.py: 10 x AsymmetricLoss(2, 0, clip 0.05).
IMG_LOSS_WEIGHT = 10.0
ASL = dict(gamma_neg=2.0, gamma_pos=0.0, clip=0.05)
IGNORE_INDEX = 255


# --------------------------------------------------------------------------------------------
# Backbone: mmseg/models/backbones/vit.py with mmcv/cnn/bricks/{transformer,drop}.py
# --------------------------------------------------------------------------------------------

class DropPath(nn.Module):
    """mmcv/cnn/bricks/drop.py: per-sample stochastic depth, active in training only."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = (keep + torch.rand(shape, dtype=x.dtype, device=x.device)).floor()
        return x.div(keep) * mask


class PatchEmbed(nn.Module):
    """mmseg/models/utils/embed.py `PatchEmbed` (pad_to_patch_size, no norm).

    x (B, 3, H, W) -> tokens (B, h*w, D) and the grid (h, w); H, W are zero-padded at the
    bottom/right up to multiples of the patch size."""

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(in_channels, embed_dims, patch_size, patch_size)

    def forward(self, x):
        p = self.patch_size
        h, w = x.shape[2], x.shape[3]
        if h % p:
            x = F.pad(x, (0, 0, 0, p - h % p))
        if w % p:
            x = F.pad(x, (0, p - w % p, 0, 0))
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), hw


class MultiheadAttention(nn.Module):
    """mmcv `MultiheadAttention` (batch_first=True): identity + DropPath(proj_drop(MHA(x))).

    `self.attn` is a torch `nn.MultiheadAttention`, fed (N, B, D) by transposes (mmcv 1.4
    predates torch's batch_first) and called with the default `need_weights=True`, so the
    head-averaged attention weights are computed and thrown away, as officially."""

    def __init__(self, embed_dims: int, num_heads: int, attn_drop: float, proj_drop: float,
                 drop_path: float, bias: bool = True):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, attn_drop, bias=bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dropout_layer = DropPath(drop_path)

    def forward(self, query, identity):
        key = value = query  # self-attention: mmcv fills key/value from query
        # Three separate transposed views, as mmcv makes them. torch >= 1.9 tests q/k/v by
        # identity, so it projects each with its third of in_proj_weight (three matmuls, not
        # one fused qkv matmul); torch 1.8 compared values (torch.equal) and fused them.
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        out = self.attn(query=query, key=key, value=value, attn_mask=None,
                        key_padding_mask=None)[0]
        out = out.transpose(0, 1)
        return identity + self.dropout_layer(self.proj_drop(out))


class FFN(nn.Module):
    """mmcv `FFN` (num_fcs=2, add_identity): keys `layers.0.0` (fc1) and `layers.1` (fc2)."""

    def __init__(self, embed_dims: int, feedforward_channels: int, ffn_drop: float,
                 drop_path: float):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, feedforward_channels), nn.GELU(),
                          nn.Dropout(ffn_drop)),
            nn.Linear(feedforward_channels, embed_dims), nn.Dropout(ffn_drop))
        # vit.py passes no dropout_layer when the rate is 0 -> Identity.
        self.dropout_layer = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, identity):
        return identity + self.dropout_layer(self.layers(x))


class TransformerEncoderLayer(nn.Module):
    """vit.py `TransformerEncoderLayer`: pre-norm MHA and FFN blocks, LN eps 1e-6."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int,
                 drop_rate: float, attn_drop_rate: float, drop_path_rate: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(embed_dims, eps=1e-6)
        self.attn = MultiheadAttention(embed_dims, num_heads, attn_drop_rate, drop_rate,
                                       drop_path_rate)
        self.ln2 = nn.LayerNorm(embed_dims, eps=1e-6)
        self.ffn = FFN(embed_dims, feedforward_channels, drop_rate, drop_path_rate)

    def forward(self, x):
        x = self.attn(self.ln1(x), identity=x)
        return self.ffn(self.ln2(x), identity=x)


def resize_pos_embed(pos_embed: torch.Tensor, input_shape: tuple[int, int],
                     pos_shape: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """vit.py `resize_pos_embed`: (1, 1+G_h*G_w, D) -> (1, 1+h*w, D); the cls entry is kept,
    the grid part is interpolated (align_corners=False) to `input_shape` = (h, w)."""
    pos_h, pos_w = pos_shape
    cls_weight = pos_embed[:, 0]
    grid = pos_embed[:, -pos_h * pos_w:]
    grid = grid.reshape(1, pos_h, pos_w, pos_embed.shape[2]).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=input_shape, mode=mode, align_corners=False)
    grid = torch.flatten(grid, 2).transpose(1, 2)
    return torch.cat((cls_weight.unsqueeze(1), grid), dim=1)


class VisionTransformer(nn.Module):
    """mmseg 0.17 `VisionTransformer` as the Segmenter configs build it (cls token kept,
    final_norm, patch 16, LN eps 1e-6, drop path linspace(0, rate)).

    forward: img (B, 3, H, W) -> tuple of (B, D, h, w) maps, one per `out_indices`."""

    def __init__(self, img_size=(512, 512), patch_size: int = 16, in_channels: int = 3,
                 embed_dims: int = 768, num_layers: int = 12, num_heads: int = 12,
                 mlp_ratio: int = 4, out_indices=(2, 5, 8, 11), drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 final_norm: bool = True):
        super().__init__()
        self.img_size, self.patch_size = tuple(img_size), patch_size
        self.out_indices = tuple(out_indices)
        self.final_norm = final_norm
        num_patches = (self.img_size[0] // patch_size) * (self.img_size[1] // patch_size)
        # Registration order fixes the official state_dict order (cls_token, pos_embed, ...).
        # Zeros: the official random-init branch is a no-op under mmcv (the real runs load
        # a pretrained .npz over it).
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dims))
        self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size)
        self.drop_after_pos = nn.Dropout(p=drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, num_layers, device="cpu")]
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(embed_dims, num_heads, mlp_ratio * embed_dims, drop_rate,
                                    attn_drop_rate, dpr[i]) for i in range(num_layers))
        self.ln1 = nn.LayerNorm(embed_dims, eps=1e-6)

    def _pos_embeding(self, x, hw_shape, pos_embed):
        # Resized only when the token count differs from the stored one (vit.py).
        if x.shape[1] != pos_embed.shape[1]:
            pos_shape = (self.img_size[0] // self.patch_size,
                         self.img_size[1] // self.patch_size)
            if pos_embed.shape[1] != pos_shape[0] * pos_shape[1] + 1:
                raise ValueError(f"Unexpected shape of pos_embed, got {pos_embed.shape}.")
            pos_embed = resize_pos_embed(pos_embed, hw_shape, pos_shape, "bicubic")
        return self.drop_after_pos(x + pos_embed)

    def forward(self, inputs):
        b = inputs.shape[0]
        x, hw_shape = self.patch_embed(inputs)
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        x = self._pos_embeding(x, hw_shape, self.pos_embed)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.ln1(x)
            if i in self.out_indices:
                out = x[:, 1:]
                out = out.reshape(b, hw_shape[0], hw_shape[1], out.shape[2])
                outs.append(out.permute(0, 3, 1, 2).contiguous())
        return tuple(outs)


class UseIndexSingleOutNeck(nn.Module):
    """mmseg/models/necks/use_index_single_out_neck.py: the last backbone output (the
    `index` argument is ignored officially)."""

    def forward(self, inputs):
        return inputs[-1]


# --------------------------------------------------------------------------------------------
# Heads: mmseg/models/decode_heads/mask_transformer_head.py, mask_transformer_rankseg_head.py
# (their `Block`, `Attention`, `FeedForward` are the official Segmenter ones)
# --------------------------------------------------------------------------------------------

class FeedForward(nn.Module):
    """Segmenter `FeedForward`: fc1, GELU, dropout, fc2, dropout."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Segmenter `Attention`: fused qkv (rows q|k|v, head-major), dropout on the
    probabilities and after `proj`."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.attn_drop = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x)), attn


class Block(nn.Module):
    """Segmenter `Block` (pre-norm, LN eps 1e-5). Head drop path is 0 in every official
    config (nn.Identity)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.mlp = FeedForward(dim, mlp_dim, dropout)
        self.drop_path = nn.Identity()

    def forward(self, x):
        y, _ = self.attn(self.norm1(x))
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class GroupWiseLinear(nn.Module):
    """rankseg_encoder_head.py `GroupWiseLinear`: out[b, c] = <W[0, c], x[b, c]> + b[0, c]."""

    def __init__(self, num_class: int, hidden_dim: int):
        super().__init__()
        self.W = nn.Parameter(torch.empty(1, num_class, hidden_dim))
        self.b = nn.Parameter(torch.empty(1, num_class))
        stdv = 1.0 / math.sqrt(hidden_dim)
        nn.init.uniform_(self.W, -stdv, stdv)
        nn.init.uniform_(self.b, -stdv, stdv)

    def forward(self, x):
        return (self.W * x).sum(-1) + self.b


def cross_entropy(logits, label):
    """mmseg 0.17 `cross_entropy` (reduction 'mean' over ALL pixels, ignored ones included).

    logits (B, C, H, W), label (B, H, W) int64 -> scalar."""
    loss = F.cross_entropy(logits, label, reduction="none", ignore_index=IGNORE_INDEX)
    return loss.mean()


def accuracy(pred, target):
    """mmseg/models/losses/accuracy.py, topk=1: percent of ALL pixels whose top-1 class
    equals the target (ignored pixels count as wrong). pred (B, C, H, W), target (B, H, W)."""
    _, pred_label = pred.topk(1, dim=1)
    pred_label = pred_label.transpose(0, 1)
    correct = pred_label.eq(target.unsqueeze(0).expand_as(pred_label))
    return correct[:1].reshape(-1).float().sum(0, keepdim=True).mul_(100.0 / target.numel())


def asymmetric_loss(x, y, gamma_neg: float, gamma_pos: float, clip: float, eps: float = 1e-5):
    """mmseg/models/losses/bce_loss.py `AsymmetricLoss` (focusing weight not detached).

    x logits (B, N), y {0, 1} targets (B, N) -> -sum / B / N."""
    xs_pos = torch.sigmoid(x)
    xs_neg = 1 - xs_pos
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    loss = y * torch.log(xs_pos.clamp(min=eps)) + (1 - y) * torch.log(xs_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        pt = xs_pos * y + xs_neg * (1 - y)
        loss = loss * torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
    return -loss.sum() / x.size(0) / x.size(1)


def _mean_finite(values):
    """The official aggregation of the per-image recalls: mean over finite entries, 1 if
    none (no image has a labelled class)."""
    finite = torch.isfinite(values)
    return values[finite].mean() if finite.any() else values.new_ones(())


def img_recall(hist, topk):
    """accuracy.py `img_recall`: per image #(GT classes in topk) / #GT classes, averaged.
    hist (B, N) pixel counts per class, topk (B, K)."""
    present = hist > 0
    hit = present.gather(1, topk).sum(1).float()
    return _mean_finite(hit / present.sum(1).float())


def pixel_recall(hist, topk):
    """accuracy.py `pixel_recall`: per image labelled pixels of the top-k classes / all."""
    return _mean_finite(hist.gather(1, topk).sum(1) / hist.sum(1))


def img_accuracy(hist, topk):
    """accuracy.py `img_accuracy` (precision@K): per image #(GT classes in topk) / K."""
    hit = (hist > 0).gather(1, topk).sum(1).float()
    return _mean_finite(hit / topk.shape[1])


class MaskTransformerHead(nn.Module):
    """The Segmenter baseline head (mask_transformer_head.py).

    forward: x (B, C, h, w) -> masks (B, N_cls, h, w) (train and eval alike)."""

    def __init__(self, n_cls: int, d_encoder: int, n_layers: int = 2, n_heads: int = 12,
                 d_model: int = 768, d_ff: int = 3072, dropout: float = 0.1):
        super().__init__()
        self.n_cls = n_cls
        self.scale = d_model ** -0.5
        self.cls_emb = nn.Parameter(torch.randn(1, n_cls, d_model))
        self.proj_patch = nn.Parameter(self.scale * torch.randn(d_model, d_model))
        self.proj_classes = nn.Parameter(self.scale * torch.randn(d_model, d_model))
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff, dropout)
                                    for _ in range(n_layers))
        self.proj_dec = nn.Linear(d_encoder, d_model)
        self.decoder_norm = nn.LayerNorm(d_model)
        self._build_mask_norm()
        self.init_weights()

    def _build_mask_norm(self):
        self.mask_norm = nn.LayerNorm(self.n_cls)

    def init_weights(self):
        """The heads' official `init_weights`: Linear trunc-normal(0.02)/0, LN 1/0, cls_emb
        trunc-normal(0.02); proj_patch/proj_classes/ml_fc keep their constructor values."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.cls_emb, std=0.02)

    def _masks(self, x, hw, n):
        """decoder_norm, cosine similarity of the first tokens with the last `n` tokens,
        LN over those `n`. x (B, hw+n, d) -> (B, n, h, w)."""
        b = x.shape[0]
        x = self.decoder_norm(x)
        patches, cls_seg_feat = x[:, :-n], x[:, -n:]
        patches = patches @ self.proj_patch
        cls_seg_feat = cls_seg_feat @ self.proj_classes
        patches = patches / patches.norm(dim=-1, keepdim=True)
        cls_seg_feat = cls_seg_feat / cls_seg_feat.norm(dim=-1, keepdim=True)
        masks = self.mask_norm(patches @ cls_seg_feat.transpose(1, 2))
        return masks.view(b, hw[0], hw[1], -1).permute(0, 3, 1, 2)

    def forward(self, x):
        b, c, h, w = x.size()
        x = self.proj_dec(x.view(b, c, -1).permute(0, 2, 1))
        x = torch.cat((x, self.cls_emb.expand(b, -1, -1)), 1)
        for blk in self.blocks:
            x = blk(x)
        return self._masks(x, (h, w), self.n_cls)

    def losses(self, seg_logit, seg_label):
        """`BaseDecodeHead.losses`: logits resized (bilinear) to the label size, CE, acc_seg.
        seg_logit (B, N_cls, h, w), seg_label (B, 1, H, W) int64 -> dict of tensors."""
        seg_logit = F.interpolate(seg_logit, size=seg_label.shape[2:], mode="bilinear",
                                  align_corners=False)
        seg_label = seg_label.squeeze(1)
        return {"loss_seg": cross_entropy(seg_logit, seg_label),
                "acc_seg": accuracy(seg_logit, seg_label)}


class MaskTransformerRankSegHead(MaskTransformerHead):
    """The RankSeg head (mask_transformer_rankseg_head.py).

    forward: x (B, C, h, w) -> train: (img_pred (B, N_cls), topk (B, K), masks (B, K, h, w));
    eval: (B, N_cls, h, w) with the rank masks scattered to their classes and -100 elsewhere.
    """

    def __init__(self, n_cls: int, d_encoder: int, n_layers: int = 3, n_heads: int = 12,
                 d_model: int = 768, d_ff: int = 3072, dropout: float = 0.1,
                 topk_cls: int = 50, downsample: int = 8,
                 img_loss_weight: float = IMG_LOSS_WEIGHT, loss_img: dict | None = None):
        self.topk_cls = topk_cls  # set first: the parent's __init__ calls _build_mask_norm
        super().__init__(n_cls, d_encoder, n_layers, n_heads, d_model, d_ff, dropout)
        self.downsample = downsample
        self.img_loss_weight = img_loss_weight
        self.loss_img_cfg = dict(ASL if loss_img is None else loss_img)
        self.pooling = nn.AdaptiveAvgPool2d(downsample)

    def _build_mask_norm(self):
        # Registered where the official registers it: decoder_norm2, mask_norm (over the K
        # rank slots), then ml_fc (the official state_dict order).
        d = self.decoder_norm.normalized_shape[0]
        self.decoder_norm2 = nn.LayerNorm(d)
        self.mask_norm = nn.LayerNorm(self.topk_cls)
        self.ml_fc = GroupWiseLinear(self.n_cls, d)

    def multi_label(self, x):
        """The multi-label branch. x (B, C, h, w) -> (pixel tokens (B, hw, d), pooled tokens
        (B, s*s, d), class features F (B, N_cls, d) = decoder_norm2 outputs, img_pred
        (B, N_cls) raw logits, topk (B, K) int64 in descending-score order)."""
        b, c, _, _ = x.size()
        pooled = self.pooling(x).view(b, c, -1).permute(0, 2, 1)
        pooled = self.proj_dec(pooled)  # the same proj_dec as the pixel tokens
        pixels = self.proj_dec(x.view(b, c, -1).permute(0, 2, 1))
        x_ml = torch.cat((pooled, self.cls_emb.expand(b, -1, -1)), 1)
        x_ml = self.blocks[0](x_ml)
        cls_ml_feat = self.decoder_norm2(x_ml[:, -self.n_cls:])
        img_pred = self.ml_fc(cls_ml_feat)
        topk = torch.argsort(img_pred, dim=1, descending=True)[:, :self.topk_cls]
        return pixels, pooled, cls_ml_feat, img_pred, topk

    def forward(self, x):
        _, _, h, w = x.size()
        pixels, _, cls_ml_feat, img_pred, topk = self.multi_label(x)
        # Official: cls_ml_feat.view(N_cls, -1)[topk.view(-1)] (batch 1 only); per sample here.
        rows = torch.arange(topk.shape[0], device=topk.device)[:, None]
        x = torch.cat((pixels, cls_ml_feat[rows, topk]), 1)
        for blk in self.blocks[1:]:
            x = blk(x)
        masks = self._masks(x, (h, w), self.topk_cls)
        if self.training:
            return img_pred, topk, masks
        full = -100 * torch.ones(masks.shape[0], self.n_cls, h, w, dtype=masks.dtype,
                                 device=masks.device)
        return full.scatter(1, topk[:, :, None, None].expand(-1, -1, h, w), masks)

    def class_histogram(self, seg_label):
        """`torch.histc` per image, bins = N_cls on [0, N_cls-1]: exact per-class pixel counts,
        255 dropped. seg_label (B, 1, H, W) -> (B, N_cls) float."""
        return torch.stack([torch.histc(s.float(), bins=self.n_cls, min=0, max=self.n_cls - 1)
                            for s in seg_label])

    def topk_label(self, seg_label, topk):
        """Labels remapped to rank positions: r where topk[b, r] == label, 255 if the class is
        not selected or ignored. seg_label (B, H, W), topk (B, K) -> (B, H, W) int64."""
        b = seg_label.shape[0]
        lut = torch.full((b, self.n_cls), IGNORE_INDEX, dtype=seg_label.dtype,
                         device=seg_label.device)
        ranks = torch.arange(topk.shape[1], dtype=seg_label.dtype, device=seg_label.device)
        lut.scatter_(1, topk, ranks.expand(b, -1))
        valid = (seg_label >= 0) & (seg_label < self.n_cls)
        mapped = lut.gather(1, seg_label.clamp(0, self.n_cls - 1).reshape(b, -1))
        return torch.where(valid, mapped.view_as(seg_label), IGNORE_INDEX)

    def losses(self, seg_logit, seg_label):
        """loss_img (ASL x img_loss_weight on class presence), loss_seg (CE in top-k space
        over all pixels) and the logged acc_seg, acc_pix, acc_img, acc_img_accuracy.
        seg_logit = forward()'s train tuple, seg_label (B, 1, H, W) int64 -> dict."""
        img_pred, topk, masks = seg_logit
        hist = self.class_histogram(seg_label)
        target = (hist > 0).float()
        loss = {"loss_img": asymmetric_loss(img_pred, target, **self.loss_img_cfg)
                * self.img_loss_weight}
        logits = F.interpolate(masks, size=seg_label.shape[2:], mode="bilinear",
                               align_corners=False)
        label = self.topk_label(seg_label.squeeze(1), topk)
        loss["loss_seg"] = cross_entropy(logits, label)
        loss["acc_seg"] = accuracy(logits, label)
        loss["acc_pix"] = pixel_recall(hist, topk)
        loss["acc_img"] = img_recall(hist, topk)
        loss["acc_img_accuracy"] = img_accuracy(hist, topk)
        return loss


# --------------------------------------------------------------------------------------------
# Segmentor, train step and inference: mmseg/models/segmentors/{base,encoder_decoder}.py,
# mmcv/runner/hooks/{lr_updater,optimizer}.py
# --------------------------------------------------------------------------------------------

class EncoderDecoder(nn.Module):
    """backbone -> neck -> decode_head (no parameters of its own)."""

    def __init__(self, backbone: VisionTransformer, decode_head: MaskTransformerHead):
        super().__init__()
        self.backbone = backbone
        self.neck = UseIndexSingleOutNeck()
        self.decode_head = decode_head

    @property
    def num_classes(self) -> int:
        return self.decode_head.n_cls

    def extract_feat(self, img):
        """img (B, 3, H, W) -> the neck's (B, D, h, w)."""
        return self.neck(self.backbone(img))

    def forward_train(self, img, gt_semantic_seg):
        """img (B, 3, H, W), gt_semantic_seg (B, 1, H, W) int64 -> {'decode.<name>': tensor}."""
        out = self.decode_head(self.extract_feat(img))
        losses = self.decode_head.losses(out, gt_semantic_seg)
        return {f"decode.{k}": v for k, v in losses.items()}

    def encode_decode(self, img):
        """Eval head logits resized (bilinear) to the input size: (B, N_cls, H, W)."""
        out = self.decode_head(self.extract_feat(img))
        return F.interpolate(out, size=img.shape[2:], mode="bilinear", align_corners=False)


def parse_losses(losses: dict):
    """`BaseSegmentor._parse_losses`: every entry `.mean()`-ed; the total sums the keys that
    contain 'loss'; all log vars become Python floats (`.item()`). -> (loss, log_vars)."""
    log_vars = OrderedDict((k, v.mean()) for k, v in losses.items())
    loss = sum(v for k, v in log_vars.items() if "loss" in k)
    log_vars["loss"] = loss
    return loss, OrderedDict((k, v.item()) for k, v in log_vars.items())


def poly_lr(it: int, max_iters: int, base_lr: float = 1e-3, min_lr: float = 1e-5,
            power: float = 0.9) -> float:
    """mmcv `PolyLrUpdaterHook` by iteration (set before each iteration)."""
    return (base_lr - min_lr) * (1 - it / max_iters) ** power + min_lr


def make_optimizer(model: nn.Module) -> torch.optim.SGD:
    """The Segmenter configs' SGD(lr 1e-3, momentum 0.9); weight decay 0."""
    return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=0.0)


def train_step(model: EncoderDecoder, optimizer, image, label, it: int, max_iters: int) -> dict:
    """One official iteration: poly lr, train-mode forward, decode-head losses and logged
    accuracies, `_parse_losses`, zero_grad / backward / step.

    image (B, 3, H, W) float32, label (B, H, W) or (B, 1, H, W) int64 (255 = ignore).
    Returns the log vars as Python floats ('decode.loss_seg', ..., 'loss')."""
    lr = poly_lr(it, max_iters)
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    if label.dim() == 3:
        label = label.unsqueeze(1)
    loss, log_vars = parse_losses(model.forward_train(image, label))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return log_vars


def whole_inference(model: EncoderDecoder, image):
    """`EncoderDecoder.whole_inference` with rescale to the original (= input) size.
    image (B, 3, H, W) -> logits (B, N_cls, H, W)."""
    logits = model.encode_decode(image)
    return F.interpolate(logits, size=image.shape[2:], mode="bilinear", align_corners=False)


def slide_inference(model: EncoderDecoder, image, crop: tuple[int, int],
                    stride: tuple[int, int]):
    """`EncoderDecoder.slide_inference` (windows shifted back at the border, logits averaged
    before softmax). image (B, 3, H, W) -> logits (B, N_cls, H, W)."""
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    b, _, h_img, w_img = image.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = image.new_zeros((b, model.num_classes, h_img, w_img))
    count = image.new_zeros((b, 1, h_img, w_img))
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * h_stride, wi * w_stride
            y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            logit = model.encode_decode(image[:, :, y1:y2, x1:x2])
            preds += F.pad(logit, (x1, w_img - x2, y1, h_img - y2))
            count[:, :, y1:y2, x1:x2] += 1
    preds = preds / count
    return F.interpolate(preds, size=(h_img, w_img), mode="bilinear", align_corners=False)


def inference(model: EncoderDecoder, image, mode: str = "whole", crop=None, stride=None):
    """`EncoderDecoder.inference` without flip: softmax probabilities (B, N_cls, H, W)."""
    if mode == "whole":
        logits = whole_inference(model, image)
    else:
        logits = slide_inference(model, image, crop, stride)
    return F.softmax(logits, dim=1)


def infer_whole(model: EncoderDecoder, image):
    """Official whole-image test (`simple_test` under torch.no_grad): logits over all
    classes, resized to the image, softmax, argmax, copied to numpy.
    image (B, 3, H, W) -> int64 ndarray (B, H, W)."""
    model.eval()
    with torch.no_grad():
        return inference(model, image).argmax(dim=1).cpu().numpy()


# --------------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------------

def build(kind: str, *, embed_dims: int, depth: int, heads: int, img_size, num_classes: int,
          topk: int = 50, n_layers: int | None = None, downsample: int = 8,
          drop_path_rate: float = 0.1, dropout: float = 0.1, out_indices=None,
          img_loss_weight: float = IMG_LOSS_WEIGHT, loss_img: dict | None = None
          ) -> EncoderDecoder:
    """The official Segmenter ('baseline') or Segmenter+RankSeg ('rankseg') model.

    img_size: int or (H, W), the stored pos-embed grid is img_size / 16; drop_path_rate: the
    backbone's stochastic depth; dropout: the head blocks' dropout; n_layers: head blocks
    (default 2 baseline, 3 RankSeg); out_indices: default (2, 5, 8, 11) scaled to `depth`
    (the official ViT-B/S choice), e.g. (0, 1) for the 2-layer fixture model. Head width
    d_model = embed_dims, n_heads = heads, d_ff = 4 * d_model."""
    if kind not in ("baseline", "rankseg"):
        raise ValueError(f"kind must be 'baseline' or 'rankseg', got {kind!r}")
    if isinstance(img_size, int):
        img_size = (img_size, img_size)
    if out_indices is None:
        out_indices = tuple(sorted({max(depth * q // 4 - 1, 0) for q in (1, 2, 3, 4)}))
    backbone = VisionTransformer(img_size=img_size, embed_dims=embed_dims, num_layers=depth,
                                 num_heads=heads, out_indices=out_indices,
                                 drop_path_rate=drop_path_rate)
    common = dict(n_cls=num_classes, d_encoder=embed_dims, n_heads=heads, d_model=embed_dims,
                  d_ff=4 * embed_dims, dropout=dropout)
    if kind == "baseline":
        head = MaskTransformerHead(n_layers=n_layers or 2, **common)
    else:
        head = MaskTransformerRankSegHead(n_layers=n_layers or 3, topk_cls=topk,
                                          downsample=downsample,
                                          img_loss_weight=img_loss_weight, loss_img=loss_img,
                                          **common)
    return EncoderDecoder(backbone, head)


def build_preset(preset: str, kind: str, size: int, num_classes: int, topk: int = 50
                 ) -> EncoderDecoder:
    """`build` at a PRESETS backbone with the official rates (drop path 0.1, dropout 0.1,
    downsample 8) and the pos-embed stored at the crop size (no resize at run time)."""
    return build(kind, img_size=size, num_classes=num_classes, topk=topk,
                 **PRESETS[preset])


def load_checkpoint(model: nn.Module, path, strict: bool = True):
    """Loads an mmcv checkpoint ({'state_dict', 'meta'}) or a bare state dict."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - older checkpoints pickle non-tensor meta objects
        obj = torch.load(path, map_location="cpu", weights_only=False)
    state = obj.get("state_dict", obj)
    return model.load_state_dict(state, strict=strict)
