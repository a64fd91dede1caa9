"""Independent NumPy float64 reference of the official RankSeg / Segmenter model.

Written only from a specification of the official code (file, class and function names are
the official ones) and the fixtures' documentation; it does **not** look at ``rankseg_jax``.
Everything is float64 and operates
directly on an **official-format state dict**: ``dict[str, np.ndarray]`` keyed by the mmseg names
(``backbone.layers.0.attn.attn.in_proj_weight``, ``decode_head.ml_fc.W`` ...). Images are NCHW,
like the official code.

Public API (shapes: B batch, C encoder width, d head width, N classes, K top-k, (h, w) grid):

* resize helpers: :func:`torch_bicubic_resize`, :func:`torch_bilinear_resize`,
  :func:`adaptive_avg_pool2d`, :func:`resize_pos_embed`
* model: :func:`vit_forward`, :func:`segmenter_head`, :func:`rankseg_head`, :func:`model_forward`,
  :func:`encode_decode`, :func:`whole_inference`, :func:`slide_inference`,
  :func:`sine_position_buffer`
* losses: :func:`mmseg_cross_entropy`, :func:`asymmetric_loss`, :func:`bce_with_logits`,
  :func:`segmenter_losses`, :func:`rankseg_losses` (+ the logged metrics of `losses/accuracy.py`)
* config: :class:`RefConfig`, :func:`fixture_config`, :func:`state_dict_from_pth`

Modes: ``head='segmenter'`` (baseline, `MaskTransformerHead`) or ``head='rankseg'``
(`MaskTransformerRankSegHead`) with ``img_head`` one of
``'tran_enc'`` (default RankSeg, `MaskTransformerRankSegHead`), ``'tran_dec'`` (2×TranDec ablation,
`RankSegDecoderHead`) or
``'gap_linear'`` (global-pooling ablation, `RankSegGlobalPoolingHead`). ``oce=True`` enables the
backbone
class-embedding variant (the OCE variant `with_cls_emb`). Dropout / drop-path are not modelled
(identity in eval; 0 in the
fixtures).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

try:  # scipy is optional (not in requirements.txt); the fallback is exact too, just slower.
    from scipy.special import erf as _erf
except Exception:  # pragma: no cover - depends on the environment
    _erf = np.vectorize(math.erf, otypes=[np.float64])

F64 = np.float64


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RefConfig:
    """Model dimensions and switches (names follow the official config dicts).

    Backbone (`VisionTransformer` config): ``embed_dim`` C, ``num_layers``, ``num_heads``,
    ``mlp_ratio``, ``patch_size``,
    ``in_channels``, ``pos_grid`` G (stored pos-embed is (1, 1+G², C); ``None`` = infer it from
    the state dict), ``out_indices``, ``final_norm``, ``oce`` / ``oce_start_layer`` (the OCE
    variant `with_cls_emb`;
    ``None`` = last layer).
    Head (the decode heads): ``head`` in {'segmenter','rankseg'}, ``n_cls`` N, ``d_model`` d,
    ``head_heads``,
    ``d_ff``, ``n_layers`` (number of head blocks), ``topk`` K, ``downsample`` (AdaptiveAvgPool2d
    output size; None = no pooling), ``img_head`` in {'tran_enc','tran_dec','gap_linear'} and
    the TranDec sizes (`RankSegDecoderHead`; ``tran_dec_pe_size`` must equal ``downsample``).
    Loss (`MaskTransformerRankSegHead.losses`/mmseg `losses/`): ``img_loss_weight``, ``loss_img``
    in {'asl','bce'}, ASL parameters,
    ``ignore_index``.
    """

    # backbone
    embed_dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    mlp_ratio: int = 4
    patch_size: int = 16
    in_channels: int = 3
    pos_grid: int | None = None
    out_indices: tuple = (0, 1)
    final_norm: bool = True
    oce: bool = False
    oce_start_layer: int | None = None
    # head
    head: str = "segmenter"
    n_cls: int = 20
    d_model: int = 64
    head_heads: int = 2
    d_ff: int = 256
    n_layers: int = 2
    topk: int = 8
    downsample: int | None = 2
    img_head: str = "tran_enc"
    tran_dec_heads: int = 8
    tran_dec_ff: int = 2048
    tran_dec_layers: int = 2
    tran_dec_pe_size: int = 16
    # loss
    img_loss_weight: float = 10.0
    loss_img: str = "asl"
    asl_gamma_neg: float = 2.0
    asl_gamma_pos: float = 0.0
    asl_clip: float = 0.05
    asl_eps: float = 1e-5
    ignore_index: int = 255
    extra: dict = field(default_factory=dict)

    def replace(self, **kw) -> RefConfig:
        return replace(self, **kw)


def fixture_config(kind: str) -> RefConfig:
    """Config of the tiny official fixture models (fixtures README): 'baseline' or 'rankseg'."""
    if kind == "baseline":
        return RefConfig(head="segmenter", n_layers=2)
    if kind == "rankseg":
        return RefConfig(head="rankseg", n_layers=3, topk=8, downsample=2, img_loss_weight=10.0,
                         loss_img="asl", asl_gamma_neg=2.0, asl_gamma_pos=0.0)
    raise ValueError(kind)


def state_dict_from_pth(path) -> dict[str, np.ndarray]:
    """Load an mmcv checkpoint (``{'state_dict': ...}``) as ``dict[str, float64 ndarray]``.

    Needs torch; uses ``torch.load(path, weights_only=True)``."""
    import torch

    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    sd = ckpt.get("state_dict", ckpt)
    return {k: v.detach().cpu().numpy().astype(F64) for k, v in sd.items()}


# --------------------------------------------------------------------------------------------------
# Elementary ops
# --------------------------------------------------------------------------------------------------
def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, torch ``nn.GELU()`` default (`VisionTransformer` config, the head
    `Block`)."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis, biased variance, affine (w, b) of size x.shape[-1]."""
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _ln(sd: dict, prefix: str, x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """LayerNorm with ``prefix + weight/bias`` from the state dict (head default eps 1e-5, the
    decode heads)."""
    return layer_norm(x, sd[prefix + "weight"], sd[prefix + "bias"], eps)


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """torch Linear: y = x·Wᵀ + b, W stored (out, in)."""
    y = x @ w.T
    return y if b is None else y + b


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _mha_heads(q, k, v, heads):
    """Scaled dot-product attention. q (B,Nq,D), k/v (B,Nk,D); head-major channels (head·dh + j).

    Returns (B, Nq, D) with heads concatenated (before the output projection)."""
    B, Nq, D = q.shape
    Nk = k.shape[1]
    dh = D // heads
    qh = q.reshape(B, Nq, heads, dh).transpose(0, 2, 1, 3)
    kh = k.reshape(B, Nk, heads, dh).transpose(0, 2, 1, 3)
    vh = v.reshape(B, Nk, heads, dh).transpose(0, 2, 1, 3)
    att = softmax(qh @ kh.transpose(0, 1, 3, 2) / math.sqrt(dh), axis=-1)
    return (att @ vh).transpose(0, 2, 1, 3).reshape(B, Nq, D)


def torch_mha(sd, prefix, q_in, k_in, v_in, heads):
    """torch ``nn.MultiheadAttention`` (eval): fused ``in_proj_weight`` rows q|k|v, then
    ``out_proj``.

    ``prefix`` e.g. 'backbone.layers.0.attn.attn.'; inputs (B, N, D) batch-first."""
    W = sd[prefix + "in_proj_weight"]
    bias = sd[prefix + "in_proj_bias"]
    D = W.shape[1]
    q = linear(q_in, W[:D], bias[:D])
    k = linear(k_in, W[D:2 * D], bias[D:2 * D])
    v = linear(v_in, W[2 * D:], bias[2 * D:])
    o = _mha_heads(q, k, v, heads)
    return linear(o, sd[prefix + "out_proj.weight"], sd[prefix + "out_proj.bias"])


# --------------------------------------------------------------------------------------------------
# Resizing / pooling (`resize_pos_embed`, `EncoderDecoder`, `MaskTransformerRankSegHead` step 1)
# --------------------------------------------------------------------------------------------------
def _cubic_w(s: np.ndarray, A: float = -0.75) -> np.ndarray:
    s = np.abs(s)
    w1 = ((A + 2) * s - (A + 3)) * s * s + 1
    w2 = ((A * s - 5 * A) * s + 8 * A) * s - 4 * A
    return np.where(s <= 1, w1, np.where(s < 2, w2, 0.0))


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of torch bicubic, align_corners=False, A=-0.75, clamped taps, no
    antialias (`resize_pos_embed`)."""
    M = np.zeros((n_out, n_in), F64)
    scale = n_in / n_out
    for o in range(n_out):
        src = (o + 0.5) * scale - 0.5  # NOT clamped for cubic
        i0 = math.floor(src)
        t = src - i0
        for k in range(-1, 3):
            M[o, min(max(i0 + k, 0), n_in - 1)] += _cubic_w(np.float64(t - k))
    return M


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of torch bilinear, align_corners=False (src clamped at 0, upper
    neighbour clamped)."""
    M = np.zeros((n_out, n_in), F64)
    scale = n_in / n_out
    for o in range(n_out):
        src = max((o + 0.5) * scale - 0.5, 0.0)
        i0 = int(src)
        i1 = min(i0 + 1, n_in - 1)
        l1 = src - i0
        M[o, i0] += 1.0 - l1
        M[o, i1] += l1
    return M


def _apply_hw(x: np.ndarray, mh: np.ndarray, mw: np.ndarray) -> np.ndarray:
    """Separable resize of x (..., H, W) with row matrices mh (H', H) and mw (W', W)."""
    return np.einsum("ph,...hw,qw->...pq", mh, np.asarray(x, F64), mw, optimize=True)


def torch_bicubic_resize(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """``F.interpolate(x, (out_h,out_w), mode='bicubic', align_corners=False)``; x (..., H, W)."""
    H, W = x.shape[-2:]
    return _apply_hw(x, bicubic_matrix(H, out_h), bicubic_matrix(W, out_w))


def torch_bilinear_resize(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """``F.interpolate(x, (out_h,out_w), mode='bilinear', align_corners=False)``; x (..., H, W)."""
    H, W = x.shape[-2:]
    return _apply_hw(x, bilinear_matrix(H, out_h), bilinear_matrix(W, out_w))


def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) averaging matrix of torch adaptive avg pooling: bin i = [⌊i·n/o⌋,
    ⌈(i+1)·n/o⌉)."""
    M = np.zeros((n_out, n_in), F64)
    for i in range(n_out):
        s = (i * n_in) // n_out
        e = -((-(i + 1) * n_in) // n_out)
        M[i, s:e] = 1.0 / (e - s)
    return M


def adaptive_avg_pool2d(x: np.ndarray, out) -> np.ndarray:
    """``nn.AdaptiveAvgPool2d(out)`` on x (..., H, W); ``out`` int or (oh, ow).

    Bins [⌊i·n/o⌋, ⌈(i+1)·n/o⌉) may overlap (`MaskTransformerRankSegHead` step 1)."""
    oh, ow = (out, out) if np.isscalar(out) else out
    H, W = x.shape[-2:]
    return _apply_hw(x, adaptive_pool_matrix(H, oh), adaptive_pool_matrix(W, ow))


def resize_pos_embed(pos_embed: np.ndarray, out_hw, grid_hw) -> np.ndarray:
    """mmseg ``resize_pos_embed`` (`resize_pos_embed`): (1, 1+gh·gw, C) -> (1, 1+h·w, C).

    The cls entry is kept; the grid part is resized with :func:`torch_bicubic_resize`."""
    h, w = out_hw
    gh, gw = grid_hw
    C = pos_embed.shape[-1]
    cls = pos_embed[:, :1]
    grid = pos_embed[0, 1:].reshape(gh, gw, C).transpose(2, 0, 1)  # (C, gh, gw), row-major tokens
    grid = torch_bicubic_resize(grid, h, w)  # (C, h, w)
    return np.concatenate([cls, grid.reshape(C, h * w).T[None]], axis=1)


# --------------------------------------------------------------------------------------------------
# Backbone (mmseg `backbones/vit.py`)
# --------------------------------------------------------------------------------------------------
def _infer_pos_grid(sd, cfg):
    if cfg.pos_grid is not None:
        return cfg.pos_grid
    n = sd["backbone.pos_embed"].shape[1] - 1
    g = int(round(math.sqrt(n)))
    assert g * g == n, f"non-square stored pos-embed ({n} tokens)"
    return g


def vit_forward(sd: dict, images: np.ndarray, cfg: RefConfig) -> dict:
    """mmseg ``VisionTransformer`` forward (eval).

    Args:
      sd: official state dict (``backbone.*`` keys used).
      images: (B, 3, H, W) normalized; zero-padded bottom/right to a multiple of
        the patch size (`PatchEmbed`).
    Returns a dict:
      ``feat``       (B, C, h, w): last layer after the final norm (neck output / head input);
      ``outs``       list over ``cfg.out_indices`` of (B, C, h, w); only the last layer is
                     final-normed (the final norm);
      ``layers``     list over all layers of (B, C, h, w) (same normalization rule as ``outs``);
      ``cls_tokens`` (B, N, C) OCE class tokens after the final norm (the OCE variant
      `with_cls_emb`), or None;
      ``pos_embed``  (1, 1+h·w, C) the positional table actually added;
      ``grid``       (h, w).
    """
    x = np.asarray(images, F64)
    B, _, H, W = x.shape
    p = cfg.patch_size
    Hp, Wp = -(-H // p) * p, -(-W // p) * p
    if (Hp, Wp) != (H, W):  # `PatchEmbed` pad_to_patch_size: zeros at bottom / right
        x = np.pad(x, ((0, 0), (0, 0), (0, Hp - H), (0, Wp - W)))
    h, w = Hp // p, Wp // p
    # Conv2d k=s=p == matmul over non-overlapping patches; tokens row-major over (h, w)
    patches = x.reshape(B, x.shape[1], h, p, w, p).transpose(0, 2, 4, 1, 3, 5).reshape(B, h * w, -1)
    wconv = sd["backbone.patch_embed.projection.weight"]  # (C, 3, p, p)
    C = wconv.shape[0]
    tok = patches @ wconv.reshape(C, -1).T + sd["backbone.patch_embed.projection.bias"]

    # `resize_pos_embed`: prepend cls token, add pos-embed; resize only if the token count differs
    cls = np.broadcast_to(sd["backbone.cls_token"], (B, 1, C))
    seq = np.concatenate([cls, tok], axis=1)
    pos = sd["backbone.pos_embed"]
    if pos.shape[1] != seq.shape[1]:
        G = _infer_pos_grid(sd, cfg)
        pos = resize_pos_embed(pos, (h, w), (G, G))
    seq = seq + pos

    n_layers = cfg.num_layers
    oce_start = None
    if cfg.oce:
        oce_start = n_layers - 1 if cfg.oce_start_layer is None else cfg.oce_start_layer
    n_oce = 0
    layers, cls_tokens = [], None
    for i in range(n_layers):
        if oce_start is not None and i == oce_start:
            # the OCE variant `with_cls_emb`: append the class tokens at the end of the sequence,
            # without pos-embed
            ce = np.broadcast_to(sd["backbone.cls_emb"], (B,) + sd["backbone.cls_emb"].shape[1:])
            n_oce = ce.shape[1]
            seq = np.concatenate([seq, ce], axis=1)
        pre = f"backbone.layers.{i}."
        # the ViT encoder layer pre-norm: x = x + MHA(LN1 x); x = x + FFN(LN2 x), eps 1e-6
        y = layer_norm(seq, sd[pre + "ln1.weight"], sd[pre + "ln1.bias"], 1e-6)
        seq = seq + torch_mha(sd, pre + "attn.attn.", y, y, y, cfg.num_heads)
        y = layer_norm(seq, sd[pre + "ln2.weight"], sd[pre + "ln2.bias"], 1e-6)
        y = gelu(linear(y, sd[pre + "ffn.layers.0.0.weight"], sd[pre + "ffn.layers.0.0.bias"]))
        seq = seq + linear(y, sd[pre + "ffn.layers.1.weight"], sd[pre + "ffn.layers.1.bias"])
        out = seq
        if i == n_layers - 1 and cfg.final_norm:  # the final norm final norm on the last layer only
            out = layer_norm(seq, sd["backbone.ln1.weight"], sd["backbone.ln1.bias"], 1e-6)
        body = out[:, 1:]
        if n_oce:
            body, ct = body[:, :-n_oce], body[:, -n_oce:]
            if i == n_layers - 1:
                cls_tokens = ct
        layers.append(body.reshape(B, h, w, C).transpose(0, 3, 1, 2))
    return dict(feat=layers[-1], outs=[layers[i] for i in cfg.out_indices], layers=layers,
                cls_tokens=cls_tokens, pos_embed=pos, grid=(h, w))


# --------------------------------------------------------------------------------------------------
# Heads (the decode heads)
# --------------------------------------------------------------------------------------------------
def head_block(sd: dict, prefix: str, x: np.ndarray, heads: int) -> np.ndarray:
    """Segmenter ``Block`` (the head `Block`), eval: pre-norm, LN eps 1e-5, fused qkv (q|k|v,
    head-major),
    exact GELU. x (B, T, d) -> (B, T, d)."""
    y = layer_norm(x, sd[prefix + "norm1.weight"], sd[prefix + "norm1.bias"], 1e-5)
    W, b = sd[prefix + "attn.qkv.weight"], sd[prefix + "attn.qkv.bias"]
    d = W.shape[1]
    qkv = linear(y, W, b)
    a = _mha_heads(qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:], heads)
    x = x + linear(a, sd[prefix + "attn.proj.weight"], sd[prefix + "attn.proj.bias"])
    y = layer_norm(x, sd[prefix + "norm2.weight"], sd[prefix + "norm2.bias"], 1e-5)
    y = gelu(linear(y, sd[prefix + "mlp.fc1.weight"], sd[prefix + "mlp.fc1.bias"]))
    return x + linear(y, sd[prefix + "mlp.fc2.weight"], sd[prefix + "mlp.fc2.bias"])


def _tokens(feat):
    """(B, C, h, w) -> (B, h·w, C), row-major (``x.view(B,C,-1).permute(0,2,1)``)."""
    B, C = feat.shape[:2]
    return feat.reshape(B, C, -1).transpose(0, 2, 1)


def _cosine_masks(sd, S, n_patch, mask_norm_prefix="decode_head.mask_norm."):
    """`MaskTransformerHead` steps 4–7 / `MaskTransformerRankSegHead` step 8: proj, L2 norm (no
    eps), cosine, LN over the class/rank axis.

    S: (B, hw+M, d) after decoder_norm. Returns (B, hw, M)."""
    patches = S[:, :n_patch] @ sd["decode_head.proj_patch"]  # right-multiplied, not a Linear
    cls = S[:, n_patch:] @ sd["decode_head.proj_classes"]
    patches = patches / np.linalg.norm(patches, axis=-1, keepdims=True)
    cls = cls / np.linalg.norm(cls, axis=-1, keepdims=True)
    m = patches @ cls.transpose(0, 2, 1)
    return layer_norm(m, sd[mask_norm_prefix + "weight"], sd[mask_norm_prefix + "bias"], 1e-5)


def _class_tokens(sd, B, cls_tokens):
    if cls_tokens is not None:  # OCE (the OCE variant `with_cls_emb`): backbone tokens, not
                                # through proj_dec
        return np.asarray(cls_tokens, F64)
    ce = sd["decode_head.cls_emb"]
    return np.broadcast_to(ce, (B,) + ce.shape[1:])


def segmenter_head(sd: dict, feat: np.ndarray, cfg: RefConfig, cls_tokens=None) -> np.ndarray:
    """Baseline ``MaskTransformerHead`` (`MaskTransformerHead`). feat (B, C, h, w) -> masks (B, N,
    h, w).

    The masks are logits at 1/16 resolution.

    ``cls_tokens`` (B, N, d): OCE class tokens from the backbone (replaces
    ``decode_head.cls_emb``)."""
    B, C, h, w = feat.shape
    P = linear(_tokens(feat), sd["decode_head.proj_dec.weight"], sd["decode_head.proj_dec.bias"])
    S = np.concatenate([P, _class_tokens(sd, B, cls_tokens)], axis=1)  # class tokens after patches
    for j in range(cfg.n_layers):
        S = head_block(sd, f"decode_head.blocks.{j}.", S, cfg.head_heads)
    S = _ln(sd, "decode_head.decoder_norm.", S)
    m = _cosine_masks(sd, S, h * w)  # (B, hw, N)
    return m.reshape(B, h, w, -1).transpose(0, 3, 1, 2)


def sine_position_buffer(d: int = 768, size: int = 16) -> np.ndarray:
    """Fixed ``img_cls_head.position_embedding.pe`` (1, d, size, size) of the TranDec ablation
    (`RankSegDecoderHead`).

    y/x embeds i+1, j+1 normalized by (size+1e-6)·2π; dim_t[k] = 10000^(2⌊k/2⌋/(d/2));
    channel 2m = sin, 2m+1 = cos; channels [0:d/2] from y, [d/2:d] from x."""
    npf = d // 2
    ar = np.arange(1, size + 1, dtype=F64)
    y_embed = np.broadcast_to(ar[:, None], (size, size)) / (size + 1e-6) * 2 * math.pi
    x_embed = np.broadcast_to(ar[None, :], (size, size)) / (size + 1e-6) * 2 * math.pi
    k = np.arange(npf)
    dim_t = 10000.0 ** (2 * (k // 2) / npf)

    def enc(e):
        p = e[..., None] / dim_t  # (size, size, npf)
        out = np.empty_like(p)
        out[..., 0::2] = np.sin(p[..., 0::2])
        out[..., 1::2] = np.cos(p[..., 1::2])
        return out

    pe = np.concatenate([enc(y_embed), enc(x_embed)], axis=-1)  # (size, size, d)
    return pe.transpose(2, 0, 1)[None]


def _tran_dec_img_pred(sd, xp, cfg):
    """`RankSegDecoderHead` ``RankSegDecoderHead`` (eval). xp (B, C, s, s) pooled map -> img_pred
    (B, N)."""
    pre = "decode_head.img_cls_head."
    B = xp.shape[0]
    wi = sd[pre + "input_proj.weight"]  # (d, C, 1, 1)
    # 1×1 conv == linear over channels; (B, s², d)
    src = linear(_tokens(xp), wi.reshape(wi.shape[0], -1), sd[pre + "input_proj.bias"])
    pe = sd.get(pre + "position_embedding.pe")
    if pe is None:
        pe = sine_position_buffer(src.shape[-1], cfg.tran_dec_pe_size)
    pos = _tokens(np.asarray(pe, F64))  # (1, s², d); fixed grid, does not adapt to the input
    assert pos.shape[1] == src.shape[1], "pooled grid must equal the 16×16 position buffer"
    query_pos = _class_tokens(sd, B, None)
    tgt = np.zeros_like(query_pos)
    k_in = src + pos
    for i in range(cfg.tran_dec_layers):
        lp = f"{pre}transformer.decoder.layers.{i}."
        # post-norm DETR layer, self-attention removed; cross-attn q=tgt+query_pos, k=src+pos, v=src
        t2 = torch_mha(sd, lp + "multihead_attn.", tgt + query_pos, k_in, src, cfg.tran_dec_heads)
        tgt = layer_norm(tgt + t2, sd[lp + "norm2.weight"], sd[lp + "norm2.bias"], 1e-5)
        t2 = np.maximum(linear(tgt, sd[lp + "linear1.weight"], sd[lp + "linear1.bias"]), 0.0)
        t2 = linear(t2, sd[lp + "linear2.weight"], sd[lp + "linear2.bias"])
        tgt = layer_norm(tgt + t2, sd[lp + "norm3.weight"], sd[lp + "norm3.bias"], 1e-5)
    hs = layer_norm(tgt, sd[pre + "transformer.decoder.norm.weight"],
                    sd[pre + "transformer.decoder.norm.bias"], 1e-5)
    return (sd[pre + "fc.W"] * hs).sum(-1) + sd[pre + "fc.b"]  # GroupWiseLinear


def _gap_img_pred(sd, xp):
    """`RankSegGlobalPoolingHead` global pooling head: AdaptiveAvgPool2d(1) -> 1×1 conv+ReLU -> 1×1
    conv.

    xp (B, C, s, s) -> img_pred (B, N)."""
    pre = "decode_head.img_cls_head."
    g = xp.mean(axis=(2, 3))  # (B, C)
    w1 = sd[pre + "1.conv.weight"]
    g = np.maximum(linear(g, w1.reshape(w1.shape[0], -1), sd[pre + "1.conv.bias"]), 0.0)
    w2 = sd[pre + "2.weight"]
    return linear(g, w2.reshape(w2.shape[0], -1), sd[pre + "2.bias"])


def rankseg_head(sd: dict, feat: np.ndarray, cfg: RefConfig, cls_tokens=None) -> dict:
    """RankSeg head (`MaskTransformerRankSegHead` ``tran_enc``; `RankSegDecoderHead` ``tran_dec``;
    `RankSegGlobalPoolingHead` ``gap_linear``).

    The top-K gather is per sample (the official B=1 semantics applied to each image,
    `MaskTransformerRankSegHead` step 6).
    Args: feat (B, C, h, w) backbone final-norm output; cls_tokens (B, N, d) OCE tokens or None.
    Returns dict:
      ``img_pred``  (B, N) raw image logits;
      ``topk``      (B, K) int64 descending argsort (ties -> lower index);
      ``masks``     (B, K, h, w) rank-ordered (train-mode output);
      ``full``      (B, N, h, w) eval-mode output, −100 outside the top-K;
      ``pixel_tokens`` (B, hw, d); for tran_enc also ``pooled_tokens`` (B, s², d) and
      ``cls_ml_feat`` (B, N, d) (decoder_norm2 output).
    """
    B, C, h, w = feat.shape
    K, s = cfg.topk, cfg.downsample
    Wd, bd = sd["decode_head.proj_dec.weight"], sd["decode_head.proj_dec.bias"]
    # (B, C, s, s), bins may overlap; downsample=None (no config uses it,
    # `MaskTransformerRankSegHead` end) = no pooling
    pooled_map = adaptive_avg_pool2d(feat, s) if s else None
    Px = linear(_tokens(feat), Wd, bd)  # pixel tokens: skip the ML branch (when pooled)
    out = dict(pixel_tokens=Px)
    if cfg.img_head == "tran_enc":
        Dx = linear(_tokens(pooled_map), Wd, bd) if s else Px  # same proj_dec
        E = _class_tokens(sd, B, cls_tokens)
        n = E.shape[1]
        T = head_block(sd, "decode_head.blocks.0.", np.concatenate([Dx, E], axis=1), cfg.head_heads)
        if not s:  # without downsample the pixel tokens continuing to blocks[1:] are its outputs
            Px = T[:, :h * w]
        Fm = layer_norm(T[:, -n:], sd["decode_head.decoder_norm2.weight"],
                        sd["decode_head.decoder_norm2.bias"], 1e-5)
        img_pred = (sd["decode_head.ml_fc.W"] * Fm).sum(-1) + sd["decode_head.ml_fc.b"]
        first_seg_block = 1
        out.update(pooled_tokens=Dx, cls_ml_feat=Fm)
        cls_src = Fm  # gathered features are decoder_norm2 outputs
    elif cfg.img_head in ("tran_dec", "gap_linear"):
        img_pred = _tran_dec_img_pred(sd, pooled_map, cfg) if cfg.img_head == "tran_dec" \
            else _gap_img_pred(sd, pooled_map)
        first_seg_block = 0
        cls_src = _class_tokens(sd, B, None)
    else:
        raise ValueError(cfg.img_head)
    N = img_pred.shape[1]
    topk = np.argsort(-img_pred, axis=1, kind="stable")[:, :K].astype(np.int64)
    Fk = np.take_along_axis(cls_src, topk[..., None], axis=1)  # (B, K, d), per-sample gather
    S = np.concatenate([Px, Fk], axis=1)
    for j in range(first_seg_block, cfg.n_layers):
        S = head_block(sd, f"decode_head.blocks.{j}.", S, cfg.head_heads)
    S = _ln(sd, "decode_head.decoder_norm.", S)
    m = _cosine_masks(sd, S, h * w)  # (B, hw, K), LN over ranks
    masks = m.reshape(B, h, w, K).transpose(0, 3, 1, 2)
    full = np.full((B, N, h, w), -100.0)
    for b in range(B):
        full[b, topk[b]] = masks[b]
    out.update(img_pred=img_pred, topk=topk, masks=masks, full=full)
    return out


# --------------------------------------------------------------------------------------------------
# Segmentor / inference (`EncoderDecoder`)
# --------------------------------------------------------------------------------------------------
def model_forward(sd: dict, images: np.ndarray, cfg: RefConfig) -> dict:
    """Backbone + head. Returns dict(backbone=<vit_forward dict>, head=<masks array or rankseg
    dict>,
    logits=(B, N, h, w) eval-mode head logits (−100-filled for RankSeg))."""
    bb = vit_forward(sd, images, cfg)
    if cfg.head == "segmenter":
        head = segmenter_head(sd, bb["feat"], cfg, bb["cls_tokens"])
        logits = head
    elif cfg.head == "rankseg":
        head = rankseg_head(sd, bb["feat"], cfg, bb["cls_tokens"])
        logits = head["full"]
    else:
        raise ValueError(cfg.head)
    return dict(backbone=bb, head=head, logits=logits)


def encode_decode(sd: dict, images: np.ndarray, cfg: RefConfig) -> np.ndarray:
    """``EncoderDecoder.encode_decode`` (`EncoderDecoder`): eval head logits bilinearly resized to
    the input size.
    images (B, 3, H, W) -> (B, N, H, W) (pre-softmax)."""
    logits = model_forward(sd, images, cfg)["logits"]
    return torch_bilinear_resize(logits, images.shape[2], images.shape[3])


def whole_inference(sd: dict, images: np.ndarray, cfg: RefConfig) -> np.ndarray:
    """Whole-image inference without rescale (`EncoderDecoder`): = encode_decode. (B, 3, H, W) ->
    (B, N, H, W)."""
    return encode_decode(sd, images, cfg)


def slide_windows(H: int, W: int, crop, stride) -> list:
    """mmseg window placement (`EncoderDecoder`): list of (y1, y2, x1, x2) in visiting order.

    Rows are the outer loop, columns the inner one."""
    hc, wc = crop
    hs, ws = stride
    hg = max(H - hc + hs - 1, 0) // hs + 1
    wg = max(W - wc + ws - 1, 0) // ws + 1
    boxes = []
    for i in range(hg):
        for j in range(wg):
            y1, x1 = i * hs, j * ws
            y2, x2 = min(y1 + hc, H), min(x1 + wc, W)
            y1, x1 = max(y2 - hc, 0), max(x2 - wc, 0)
            boxes.append((y1, y2, x1, x2))
    return boxes


def slide_inference(sd: dict, images: np.ndarray, cfg: RefConfig, crop=(48, 48), stride=(32, 32),
                    return_crops: bool = False):
    """mmseg ``slide_inference(rescale=False)`` (`EncoderDecoder`). (B, 3, H, W) -> (B, N, H, W).

    Each window runs encode_decode (RankSeg picks its top-K per window); the window logits
    (including the −100 fill) are summed and divided by the per-pixel window count.

    With ``return_crops`` also returns a list of per-window dicts (box, img_pred or None)."""
    images = np.asarray(images, F64)
    B, _, H, W = images.shape
    preds, count, crops = None, np.zeros((H, W)), []
    for (y1, y2, x1, x2) in slide_windows(H, W, crop, stride):
        ci = images[:, :, y1:y2, x1:x2]
        fw = model_forward(sd, ci, cfg)
        lg = torch_bilinear_resize(fw["logits"], ci.shape[2], ci.shape[3])
        if preds is None:
            preds = np.zeros((B, lg.shape[1], H, W))
        preds[:, :, y1:y2, x1:x2] += lg
        count[y1:y2, x1:x2] += 1
        crops.append(dict(box=(y1, y2, x1, x2),
                          img_pred=fw["head"]["img_pred"] if cfg.head == "rankseg" else None))
    out = preds / count
    return (out, crops) if return_crops else out


# --------------------------------------------------------------------------------------------------
# Losses and metrics (`MaskTransformerRankSegHead.losses`, mmseg `losses/`)
# --------------------------------------------------------------------------------------------------
def mmseg_cross_entropy(logits: np.ndarray, label: np.ndarray, ignore: int = 255,
                        average: str = "all_pixels") -> float:
    """mmseg 0.17 softmax CE (`cross_entropy_loss.py`). logits (B, C, H, W) (or (P, C)), label (B,
    H, W) (or (P,)) int.

    ``'all_pixels'`` (official): Σ_valid CE / (B·H·W); ``'valid_pixels'``: Σ_valid CE / #valid."""
    logits = np.asarray(logits, F64)
    label = np.asarray(label).astype(np.int64)
    lsm = log_softmax(logits, axis=1)
    valid = label != ignore
    safe = np.where(valid, label, 0)
    nll = -np.take_along_axis(lsm, safe[:, None], axis=1)[:, 0]
    nll = np.where(valid, nll, 0.0)
    if average == "all_pixels":
        return float(nll.sum() / nll.size)
    if average == "valid_pixels":
        return float(nll.sum() / max(valid.sum(), 1))
    raise ValueError(average)


def asymmetric_loss(x: np.ndarray, y: np.ndarray, gamma_neg: float = 4.0, gamma_pos: float = 1.0,
                    clip: float | None = 0.05, eps: float = 1e-5) -> float:
    """AsymmetricLoss (`AsymmetricLoss`), x logits / y binary targets (B, N); returns −ΣL·w / B / N
    (mean)."""
    x, y = np.asarray(x, F64), np.asarray(y, F64)
    p = sigmoid(x)
    p_neg = 1.0 - p
    if clip is not None and clip > 0:
        p_neg = np.minimum(p_neg + clip, 1.0)
    L = y * np.log(np.maximum(p, eps)) + (1 - y) * np.log(np.maximum(p_neg, eps))
    if gamma_neg > 0 or gamma_pos > 0:
        base = 1.0 - p * y - p_neg * (1 - y)
        L = L * np.power(base, gamma_pos * y + gamma_neg * (1 - y))  # pow(0,0)=1 as in torch
    return float(-L.sum() / x.size)


def bce_with_logits(x: np.ndarray, y: np.ndarray) -> float:
    """``nn.BCEWithLogitsLoss()`` mean over all entries (`BCELoss`)."""
    x, y = np.asarray(x, F64), np.asarray(y, F64)
    return float((np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))).mean())


def _label_bhw(label):
    label = np.asarray(label).astype(np.int64)
    return label[:, 0] if label.ndim == 4 else label


def accuracy(logits: np.ndarray, label: np.ndarray) -> float:
    """mmseg ``accuracy`` (`losses/accuracy.py`): 100·#(argmax==label)/numel; ignored pixels count
                                                      # as wrong."""
    pred = np.argmax(logits, axis=1)
    return float(100.0 * (pred == label).sum() / label.size)


def image_target(label: np.ndarray, n_cls: int) -> tuple:
    """`MaskTransformerRankSegHead.losses` step 1: (hist (B, N) int64 exact per-class counts in [0,
    N−1], y = (hist>0) float64)."""
    label = _label_bhw(label)
    B = label.shape[0]
    hist = np.zeros((B, n_cls), np.int64)
    for b in range(B):
        v = label[b].ravel()
        v = v[(v >= 0) & (v < n_cls)]
        hist[b] = np.bincount(v, minlength=n_cls)
    return hist, (hist > 0).astype(F64)


def topk_remap_label(label: np.ndarray, topk: np.ndarray, ignore: int = 255) -> np.ndarray:
    """`MaskTransformerRankSegHead.losses` step 4: label (B,H,W) -> rank positions r where
    topk[b,r]==label, else ``ignore``."""
    label = _label_bhw(label)
    out = np.full_like(label, ignore)
    for b in range(label.shape[0]):
        for r, c in enumerate(topk[b]):
            out[b][label[b] == c] = r
    return out


def _agg(vals):
    vals = np.asarray(vals, F64)
    fin = np.isfinite(vals)
    return float(vals[fin].mean()) if fin.any() else 1.0


def img_recall(hist, topk):
    """`losses/accuracy.py`: per image #(GT classes in topk)/#GT classes; mean over finite values
                                       # (1 if none)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return _agg([np.isin(np.nonzero(h)[0], t).sum() / (h > 0).sum()
                     for h, t in zip(hist, topk, strict=True)])


def pixel_recall(hist, topk):
    """`losses/accuracy.py`: per image Σ_{c∈topk} hist[c] / Σ_c hist[c]; aggregated like
    img_recall."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return _agg([h[t].sum() / h.sum() for h, t in zip(hist, topk, strict=True)])


def img_accuracy(hist, topk):
    """`losses/accuracy.py` precision@K: per image #(GT classes in topk)/K, then the mean."""
    return float(np.mean([(h[t] > 0).sum() / len(t) for h, t in zip(hist, topk, strict=True)]))


def segmenter_losses(masks: np.ndarray, label: np.ndarray, ignore: int = 255) -> dict:
    """Baseline ``BaseDecodeHead.losses`` (`MaskTransformerHead`): masks (B,N,h,w)
    bilinear-upsampled to label
    (B,H,W) size,
    CE averaged over all pixels. Returns dict(loss_seg, acc_seg)."""
    label = _label_bhw(label)
    seg = torch_bilinear_resize(masks, label.shape[1], label.shape[2])
    return dict(loss_seg=mmseg_cross_entropy(seg, label, ignore), acc_seg=accuracy(seg, label))


def rankseg_losses(head_out: dict, label: np.ndarray, img_loss_weight: float = 10.0,
                   loss_img: str = "asl", gamma_neg: float = 2.0, gamma_pos: float = 0.0,
                   clip: float = 0.05, eps: float = 1e-5, ignore: int = 255) -> dict:
    """``MaskTransformerRankSegHead.losses`` (`MaskTransformerRankSegHead.losses`), batch-correct.

    head_out: dict from :func:`rankseg_head` (img_pred (B,N), topk (B,K), masks (B,K,h,w));
    label: (B, H, W) or (B, 1, H, W) int (255 = ignore).
    Returns dict(loss_img (×weight), loss_seg (CE / B·H·W), acc_seg, acc_pix, acc_img,
    acc_img_accuracy,
    img_target (B,N), topk_label (B,H,W), hist (B,N)).
    """
    label = _label_bhw(label)
    img_pred, topk, masks = head_out["img_pred"], head_out["topk"], head_out["masks"]
    hist, y = image_target(label, img_pred.shape[1])
    if loss_img == "asl":
        li = asymmetric_loss(img_pred, y, gamma_neg, gamma_pos, clip, eps)
    elif loss_img == "bce":
        li = bce_with_logits(img_pred, y)
    else:
        raise ValueError(loss_img)
    seg = torch_bilinear_resize(masks, label.shape[1], label.shape[2])
    tl = topk_remap_label(label, topk, ignore)
    return dict(loss_img=li * img_loss_weight, loss_seg=mmseg_cross_entropy(seg, tl, ignore),
                acc_seg=accuracy(seg, tl), acc_pix=pixel_recall(hist, topk),
                acc_img=img_recall(hist, topk), acc_img_accuracy=img_accuracy(hist, topk),
                img_target=y, topk_label=tl, hist=hist)


def rankseg_losses_cfg(head_out: dict, label: np.ndarray, cfg: RefConfig) -> dict:
    """:func:`rankseg_losses` with the loss settings taken from ``cfg``."""
    return rankseg_losses(head_out, label, cfg.img_loss_weight, cfg.loss_img, cfg.asl_gamma_neg,
                          cfg.asl_gamma_pos, cfg.asl_clip, cfg.asl_eps, cfg.ignore_index)
