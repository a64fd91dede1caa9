"""Independent NumPy float64 reference of the official Mask2Former (+RankSeg) forward and inference.

Written from the documented behaviour of the official code (``openseg-group/RankSeg`` folder
``mask2former/`` at ``dc6a08e5``, a fork of facebookresearch/Mask2Former, on detectron2
``02b5c4e2``) and checked against the official fixtures in ``tests/fixtures/official_mask2former``;
it does **not** look at ``rankseg_jax``. Official source lines are cited as ``file.py:line``
relative to the ``mask2former/mask2former/`` package (``d2:`` = detectron2).

Everything is float64 and operates directly on an **official state dict**
(``{official key: np.ndarray}``, e.g. ``torch.load(p)["model"]`` as numpy, see
:func:`load_official`) plus an :class:`M2FConfig` of the structural numbers. Images and feature
maps are NCHW like the official code; token sequences are batch-first (B, N, C) (the official
decoder is sequence-first: ``query_feature`` is returned batch-first here, transpose (1, 0, 2) for
the official layout).

Public API (B batch, Q queries, K classes, D hidden, kappa = ``cfg.topk``):

* config: :class:`M2FConfig`, :func:`tiny_config`, :func:`swin_w7_config`,
  :func:`ade20k_swin_large_config`, :func:`load_official`
* backbone: :func:`swin_forward` -> ``{res2..res5}``
* deformable attention: :func:`msda_core`, :func:`msda_module`
* pixel decoder: :func:`sine_position_embedding`, :func:`reference_points`,
  :func:`encoder_layer`, :func:`pixel_decoder`
* decoder: :func:`decoder_memory`, :func:`decoder_layer`, :func:`prediction_heads`,
  :func:`fix_all_masked_rows`, :func:`transformer_decoder`
* RankSeg: :func:`ml_head`, :func:`rankseg`, :func:`scatter_to_classes`, :func:`gt_mask_logits`
* model: :func:`model_forward` (one padded batch), :func:`decision_margins`, :func:`preprocess`,
  :func:`forward` (per-image official evaluation)
* inference: :func:`postprocess_masks`, :func:`semantic_inference`, :func:`panoptic_inference`

Not modelled: dropout / drop-path (identity in eval), training losses, instance inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .numpy_ref import F64, gelu, layer_norm, linear, sigmoid, softmax, torch_bilinear_resize

# Feature levels of the pixel decoder and of the decoder (msdeformattn.py:254, decoder :323).
NUM_LEVELS = 3
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class M2FConfig:
    """Structural numbers of an official Mask2Former(+RankSeg) model (config key in brackets).

    Swin: ``embed_dim`` [SWIN.EMBED_DIM], ``depths``, ``num_heads``, ``window_size``,
    ``patch_size`` 4, ``mlp_ratio`` 4.
    Pixel decoder: ``conv_dim`` [SEM_SEG_HEAD.CONVS_DIM], ``mask_dim``, ``enc_layers``
    [TRANSFORMER_ENC_LAYERS], ``enc_ffn`` (1024, hard-coded at msdeformattn.py:306),
    ``enc_points`` (4, hard-coded); the encoder has ``nheads`` heads.
    Decoder: ``hidden_dim`` D, ``nheads`` [MASK_FORMER.NHEADS], ``dim_feedforward``,
    ``dec_layers`` [DEC_LAYERS] (= transformer layers + 1, i.e. the number of predictions),
    ``num_queries`` Q, ``num_classes`` K, ``cosine`` [SEM_SEG_HEAD.USE_LAYERNORM].
    RankSeg: ``rankseg`` [RANKSEG.FLAG], ``topk`` kappa, ``ml_hidden`` [RANKSEG.HIDDEN_DIM]
    (heads = ml_hidden // 64, FFN 4·ml_hidden), ``ml_layer`` (query_feature index the ML head reads,
    hard-coded 2 at maskformer_model.py:284); ``use_gt`` [RANKSEG.USE_GT] (the -gt oracle).
    Inference: ``object_mask_threshold``, ``overlap_threshold``, ``size_divisibility``.
    """

    embed_dim: int = 32
    depths: tuple = (2, 2, 2, 2)
    num_heads: tuple = (1, 2, 4, 8)
    window_size: int = 4
    patch_size: int = 4
    mlp_ratio: float = 4.0
    conv_dim: int = 32
    mask_dim: int = 32
    enc_layers: int = 2
    enc_ffn: int = 1024
    enc_points: int = 4
    hidden_dim: int = 32
    nheads: int = 8
    dim_feedforward: int = 64
    dec_layers: int = 5
    num_queries: int = 10
    num_classes: int = 12
    cosine: bool = False
    rankseg: bool = False
    topk: int = 12
    ml_hidden: int = 128
    ml_layer: int = 2
    use_gt: bool = False
    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    size_divisibility: int = 32

    @property
    def stage_dims(self) -> tuple:
        return tuple(self.embed_dim * 2 ** i for i in range(len(self.depths)))

    @property
    def num_layers(self) -> int:
        """Transformer decoder layers (DEC_LAYERS - 1, decoder :357)."""
        return self.dec_layers - 1

    @property
    def ml_heads(self) -> int:
        return self.ml_hidden // 64  # maskformer_model.py:159-171

    def replace(self, **kw) -> M2FConfig:
        return replace(self, **kw)


def tiny_config(kind: str = "plain") -> M2FConfig:
    """The tiny fixture models: kind 'plain' (plain.pth), 'gt' (plain.pth + oracle) or 'rankseg'."""
    if kind == "plain":
        return M2FConfig()
    if kind == "gt":
        return M2FConfig(use_gt=True)
    if kind == "rankseg":
        return M2FConfig(rankseg=True, cosine=True, topk=12, ml_hidden=128)
    raise ValueError(kind)


def swin_w7_config() -> M2FConfig:
    """The stand-alone Swin of ``swin_w7.pth`` (embed 16, heads (1,2,4,8), window 7)."""
    return M2FConfig(embed_dim=16, window_size=7)


def ade20k_swin_large_config(kind: str = "plain", panoptic: bool = False) -> M2FConfig:
    """Full-size ADE20K Swin-L configs (kind 'plain' | 'gt' | 'rankseg'; Q = 200 if panoptic)."""
    c = M2FConfig(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12,
                  conv_dim=256, mask_dim=256, enc_layers=6, hidden_dim=256, dim_feedforward=2048,
                  dec_layers=10, num_queries=200 if panoptic else 100, num_classes=150,
                  topk=150, ml_hidden=512)
    return c.replace(**{"plain": {}, "gt": {"use_gt": True},
                        "rankseg": {"rankseg": True, "cosine": True}}[kind])


def load_official(path) -> dict[str, np.ndarray]:
    """Read a detectron2-format checkpoint: floats as float64, int64 buffers kept (needs torch)."""
    import torch

    sd = torch.load(str(path), map_location="cpu", weights_only=True)["model"]
    out = {}
    for k, v in sd.items():
        a = v.detach().cpu().numpy()
        out[k] = a.astype(F64) if np.issubdtype(a.dtype, np.floating) else a
    return out


# --------------------------------------------------------------------------------------------------
# Elementary ops (NCHW)
# --------------------------------------------------------------------------------------------------
def _ln(sd: dict, prefix: str, x: np.ndarray) -> np.ndarray:
    return layer_norm(x, sd[prefix + "weight"], sd[prefix + "bias"], 1e-5)


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, padding: int = 0):
    """torch ``Conv2d`` with stride 1: x (B,C,H,W), w (O,C,kh,kw) -> (B,O,H',W')."""
    kh, kw = w.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    H, W = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
    y = sum(np.einsum("bchw,oc->bohw", xp[:, :, i:i + H, j:j + W], w[:, :, i, j])
            for i in range(kh) for j in range(kw))
    return y if b is None else y + b[None, :, None, None]


def group_norm(x: np.ndarray, groups: int, w: np.ndarray, b: np.ndarray, eps: float = 1e-5):
    """``nn.GroupNorm(groups, C)`` on x (B,C,H,W), biased variance (C % groups must be 0)."""
    B, C, H, W = x.shape
    if C % groups:
        raise ValueError(f"GroupNorm({groups}) needs channels divisible by {groups}, got {C}")
    g = x.reshape(B, groups, C // groups, H, W)
    mu = g.mean((2, 3, 4), keepdims=True)
    var = ((g - mu) ** 2).mean((2, 3, 4), keepdims=True)
    g = (g - mu) / np.sqrt(var + eps)
    return g.reshape(B, C, H, W) * w[None, :, None, None] + b[None, :, None, None]


def _gn(sd: dict, prefix: str, x: np.ndarray) -> np.ndarray:
    return group_norm(x, 32, sd[prefix + "weight"], sd[prefix + "bias"])


def _attention(q, k, v, heads: int, bias=None, mask=None):
    """Multi-head scaled dot-product attention, batch-first, head-major channels.

    q (B,Nq,C), k/v (B,Nk,C); ``bias`` additive logits broadcastable to (B,h,Nq,Nk); ``mask``
    bool (B,h,Nq,Nk), True = may not attend (-inf). q is scaled by hd^-0.5 before q·kᵀ.
    Returns (B, Nq, C) (before the output projection)."""
    B, Nq, C = q.shape
    Nk = k.shape[1]
    hd = C // heads
    qh = q.reshape(B, Nq, heads, hd).transpose(0, 2, 1, 3) * hd ** -0.5
    kh = k.reshape(B, Nk, heads, hd).transpose(0, 2, 1, 3)
    vh = v.reshape(B, Nk, heads, hd).transpose(0, 2, 1, 3)
    logits = qh @ kh.transpose(0, 1, 3, 2)
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = np.where(mask, -np.inf, logits)
    return (softmax(logits) @ vh).transpose(0, 2, 1, 3).reshape(B, Nq, C)


# --------------------------------------------------------------------------------------------------
# Swin backbone (backbone/swin.py)
# --------------------------------------------------------------------------------------------------
def relative_position_index(ws: int) -> np.ndarray:
    """(ws², ws²) int64 index: (yi-yj+ws-1)·(2ws-1) + (xi-xj+ws-1) for window tokens i, j
    (swin.py:106-121)."""
    yy, xx = np.meshgrid(np.arange(ws), np.arange(ws), indexing="ij")
    y, x = yy.reshape(-1), xx.reshape(-1)
    return ((y[:, None] - y[None] + ws - 1) * (2 * ws - 1) + (x[:, None] - x[None] + ws - 1)
            ).astype(np.int64)


def _window_partition(x: np.ndarray, ws: int) -> np.ndarray:
    """(B,H,W,C) -> (B·nW, ws², C): batch-major, then window-row-major (swin.py:44-55)."""
    B, H, W, C = x.shape
    x = x.reshape(B, H // ws, ws, W // ws, ws, C).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, C)


def _window_reverse(win: np.ndarray, ws: int, H: int, W: int) -> np.ndarray:
    """Inverse of :func:`_window_partition` (swin.py:58-71)."""
    C = win.shape[-1]
    x = win.reshape(-1, H // ws, W // ws, ws, ws, C).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def shift_attention_mask(Hp: int, Wp: int, ws: int, shift: int) -> np.ndarray:
    """(nW, ws², ws²) additive mask of the shifted windows on the padded size (swin.py:414-440).

    Region label = 3·row_group + col_group with groups [0,P-ws), [P-ws,P-shift), [P-shift,P);
    0 where two tokens share a label, -100 otherwise."""
    img = np.zeros((1, Hp, Wp, 1))
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    lab = _window_partition(img, ws)[..., 0]
    return np.where(lab[:, :, None] != lab[:, None, :], -100.0, 0.0)


def _swin_block(sd, p, x, heads, ws, shift, mask):
    """One SwinTransformerBlock (swin.py:235-295) on x (B,H,W,C)."""
    B, H, W, C = x.shape
    y = _ln(sd, p + "norm1.", x)
    # Pad *after* the norm: padded tokens are exact zeros and unmasked in plain windows (:251-255).
    pad_b, pad_r = (-H) % ws, (-W) % ws
    y = np.pad(y, ((0, 0), (0, pad_b), (0, pad_r), (0, 0)))
    Hp, Wp = H + pad_b, W + pad_r
    if shift:
        y = np.roll(y, (-shift, -shift), axis=(1, 2))
    win = _window_partition(y, ws)
    N = ws * ws
    table = sd[p + "attn.relative_position_bias_table"]
    rel = table[relative_position_index(ws).reshape(-1)].reshape(N, N, heads).transpose(2, 0, 1)
    bias = rel[None]  # (1, h, N, N)
    if shift:
        nW = mask.shape[0]
        bias = (bias[None] + mask[None, :, None]).reshape(nW, heads, N, N)  # window w of each image
        bias = np.tile(bias, (B, 1, 1, 1))
    qkv = linear(win, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
    att = _attention(qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:], heads, bias=bias)
    att = linear(att, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
    y = _window_reverse(att, ws, Hp, Wp)
    if shift:
        y = np.roll(y, (shift, shift), axis=(1, 2))
    x = x + y[:, :H, :W]
    h = gelu(linear(_ln(sd, p + "norm2.", x), sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
    return x + linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])


def _patch_merging(sd, p, x):
    """PatchMerging (swin.py:298-337): pad odd sizes, concat 2x2, LN(4C), Linear 4C->2C no bias."""
    B, H, W, C = x.shape
    x = np.pad(x, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)))
    x = np.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                       axis=-1)
    return linear(_ln(sd, p + "norm.", x), sd[p + "reduction.weight"])


def swin_forward(sd: dict, cfg: M2FConfig, images: np.ndarray, prefix: str = "backbone.") -> dict:
    """D2SwinTransformer (swin.py:456-683) on normalised images (B,3,H,W), any H, W.

    Returns {'res2'..'res5'}: (B, C_i, H_i, W_i) NCHW after the per-stage output norms."""
    x = np.asarray(images, F64)
    ps, ws = cfg.patch_size, cfg.window_size
    # PatchEmbed (:483-493): pad right, then bottom, to the patch size; conv k=s=4; LN.
    x = np.pad(x, ((0, 0), (0, 0), (0, (-x.shape[2]) % ps), (0, (-x.shape[3]) % ps)))
    B, _, H, W = x.shape
    h, w = H // ps, W // ps
    patches = x.reshape(B, 3, h, ps, w, ps)
    x = np.einsum("bcikjl,eckl->bije", patches, sd[prefix + "patch_embed.proj.weight"])
    x = _ln(sd, prefix + "patch_embed.norm.", x + sd[prefix + "patch_embed.proj.bias"])
    out = {}
    for i, depth in enumerate(cfg.depths):
        H, W = x.shape[1:3]
        shift = ws // 2
        mask = shift_attention_mask(-(-H // ws) * ws, -(-W // ws) * ws, ws, shift)
        for j in range(depth):
            x = _swin_block(sd, f"{prefix}layers.{i}.blocks.{j}.", x, cfg.num_heads[i], ws,
                            shift if j % 2 else 0, mask)
        out[f"res{i + 2}"] = _ln(sd, f"{prefix}norm{i}.", x).transpose(0, 3, 1, 2)
        if i < len(cfg.depths) - 1:
            x = _patch_merging(sd, f"{prefix}layers.{i}.downsample.", x)
    return out


# --------------------------------------------------------------------------------------------------
# Multi-scale deformable attention (pixel_decoder/ops)
# --------------------------------------------------------------------------------------------------
def _bilinear_sample_zeros(v: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``grid_sample(bilinear, zeros, align_corners=False)`` at normalised (x, y) in [0,1] units.

    v (B,M,H,W,Dh); x, y (B,Lq,M,P) -> (B,Lq,M,P,Dh). Pixel coordinate (x·W-0.5, y·H-0.5); each of
    the four corner taps outside the map contributes 0 (ms_deform_attn_func.py:52-72)."""
    B, M, H, W, _ = v.shape
    px, py = x * W - 0.5, y * H - 0.5
    x0, y0 = np.floor(px), np.floor(py)
    bi = np.arange(B)[:, None, None, None]
    mi = np.arange(M)[None, None, :, None]
    out = 0.0
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1.0 - np.abs(px - xi)) * (1.0 - np.abs(py - yi))
            inside = (xi >= 0) & (xi <= W - 1) & (yi >= 0) & (yi <= H - 1)
            xc = np.clip(xi, 0, W - 1).astype(np.int64)
            yc = np.clip(yi, 0, H - 1).astype(np.int64)
            out = out + (wgt * inside)[..., None] * v[bi, mi, yc, xc]
    return out


def msda_core(value: np.ndarray, spatial_shapes, sampling_locations: np.ndarray,
              attention_weights: np.ndarray) -> np.ndarray:
    """``ms_deform_attn_core_pytorch`` (ops/functions/ms_deform_attn_func.py:52-72).

    value (B,S,M,Dh) over levels of ``spatial_shapes`` [(H_l,W_l)] (row-major, concatenated);
    sampling_locations (B,Lq,M,L,P,2) (x,y) normalised; attention_weights (B,Lq,M,L,P).
    Returns (B, Lq, M·Dh), heads as channel blocks."""
    B, S, M, Dh = value.shape
    Lq = sampling_locations.shape[1]
    out = np.zeros((B, Lq, M, Dh))
    start = 0
    for lvl, (H, W) in enumerate(np.asarray(spatial_shapes).tolist()):
        v = value[:, start:start + H * W].reshape(B, H, W, M, Dh).transpose(0, 3, 1, 2, 4)
        start += H * W
        loc = sampling_locations[:, :, :, lvl]  # (B,Lq,M,P,2)
        s = _bilinear_sample_zeros(v, loc[..., 0], loc[..., 1])  # (B,Lq,M,P,Dh)
        out += np.einsum("bqmpd,bqmp->bqmd", s, attention_weights[:, :, :, lvl])
    return out.reshape(B, Lq, M * Dh)


def msda_module(sd: dict, prefix: str, query: np.ndarray, reference_points: np.ndarray,
                input_flatten: np.ndarray, spatial_shapes, heads: int, points: int,
                padding_mask: np.ndarray | None = None) -> dict:
    """``MSDeformAttn.forward`` (ops/modules/ms_deform_attn.py:89-121), 2-d reference points.

    query (B,Lq,C), reference_points (B,Lq,L,2) (x,y), input_flatten (B,S,C), padding_mask (B,S)
    bool (True rows of value zeroed). Returns dict: value (B,S,M,Dh), sampling_locations
    (B,Lq,M,L,P,2), attention_weights (B,Lq,M,L,P), core_output (B,Lq,C), output (B,Lq,C)."""
    shapes = np.asarray(spatial_shapes)
    B, Lq, C = query.shape
    L, M, P = len(shapes), heads, points
    value = linear(input_flatten, sd[prefix + "value_proj.weight"], sd[prefix + "value_proj.bias"])
    if padding_mask is not None:
        value = np.where(padding_mask[..., None], 0.0, value)
    value = value.reshape(B, -1, M, C // M)
    off = linear(query, sd[prefix + "sampling_offsets.weight"],
                 sd[prefix + "sampling_offsets.bias"]).reshape(B, Lq, M, L, P, 2)
    aw = linear(query, sd[prefix + "attention_weights.weight"],
                sd[prefix + "attention_weights.bias"])
    aw = softmax(aw.reshape(B, Lq, M, L * P)).reshape(B, Lq, M, L, P)  # over the L·P of a head
    normalizer = shapes[:, ::-1].astype(F64)  # (W_l, H_l), i.e. (x, y)
    loc = reference_points[:, :, None, :, None, :] + off / normalizer[None, None, None, :, None, :]
    core = msda_core(value, shapes, loc, aw)
    out = linear(core, sd[prefix + "output_proj.weight"], sd[prefix + "output_proj.bias"])
    return {"value": value, "sampling_locations": loc, "attention_weights": aw,
            "core_output": core, "output": out}


# --------------------------------------------------------------------------------------------------
# Pixel decoder (pixel_decoder/msdeformattn.py)
# --------------------------------------------------------------------------------------------------
def sine_position_embedding(H: int, W: int, num_feats: int) -> np.ndarray:
    """``PositionEmbeddingSine(num_feats, normalize=True)`` of an unmasked HxW map.

    Returns (2·num_feats, H, W).

    ŷ_i = (i+1)/(H+1e-6)·2π, ω_k = 10000^(2⌊k/2⌋/num_feats), sin (even k) / cos (odd k);
    channels [y part, x part] (transformer_decoder/position_encoding.py:12-52)."""
    k = np.arange(num_feats)
    dim_t = 10000.0 ** (2 * (k // 2) / num_feats)
    y = (np.arange(H) + 1.0) / (H + 1e-6) * 2 * math.pi
    x = (np.arange(W) + 1.0) / (W + 1e-6) * 2 * math.pi
    py = np.where(k % 2 == 0, np.sin(y[:, None] / dim_t), np.cos(y[:, None] / dim_t))  # (H, F)
    px = np.where(k % 2 == 0, np.sin(x[:, None] / dim_t), np.cos(x[:, None] / dim_t))  # (W, F)
    py = np.broadcast_to(py.T[:, :, None], (num_feats, H, W))
    px = np.broadcast_to(px.T[:, None, :], (num_feats, H, W))
    return np.concatenate([py, px], axis=0)


def _flatten(x: np.ndarray) -> np.ndarray:
    """(B,C,H,W) -> (B, H·W, C), row-major tokens."""
    B, C = x.shape[:2]
    return x.reshape(B, C, -1).transpose(0, 2, 1)


def reference_points(spatial_shapes, batch: int) -> np.ndarray:
    """Encoder reference points (msdeformattn.py:141-153): pixel centres ((j+0.5)/W_l,
    (i+0.5)/H_l) of every level, (x, y), replicated for all levels (valid ratios 1) -> (B,S,L,2)."""
    refs = []
    for H, W in np.asarray(spatial_shapes).tolist():
        yy, xx = np.meshgrid((np.arange(H) + 0.5) / H, (np.arange(W) + 0.5) / W, indexing="ij")
        refs.append(np.stack([xx.reshape(-1), yy.reshape(-1)], -1))
    ref = np.concatenate(refs, 0)
    return np.broadcast_to(ref[None, :, None, :], (batch, len(ref), len(refs), 2))


def encoder_layer(sd: dict, cfg: M2FConfig, layer: int, x: np.ndarray, pos: np.ndarray,
                  ref: np.ndarray, spatial_shapes, prefix: str = "sem_seg_head.pixel_decoder."):
    """Deformable encoder layer (msdeformattn.py:92-131), post-norm, no padding mask:
    x = LN1(x + MSDA(x+pos, ref, x)); x = LN2(x + linear2(relu(linear1(x)))). x (B,S,D)."""
    p = f"{prefix}transformer.encoder.layers.{layer}."
    a = msda_module(sd, p + "self_attn.", x + pos, ref, x, spatial_shapes, cfg.nheads,
                    cfg.enc_points)["output"]
    x = _ln(sd, p + "norm1.", x + a)
    h = np.maximum(linear(x, sd[p + "linear1.weight"], sd[p + "linear1.bias"]), 0.0)
    return _ln(sd, p + "norm2.", x + linear(h, sd[p + "linear2.weight"], sd[p + "linear2.bias"]))


def pixel_decoder(sd: dict, cfg: M2FConfig, features: dict,
                  prefix: str = "sem_seg_head.pixel_decoder.") -> tuple:
    """``MSDeformAttnPixelDecoder.forward_features`` (msdeformattn.py:314-358).

    features {'res2'..'res5'} NCHW. Returns (mask_features (B,D,H2,W2), multi_scale [3 maps
    (B,D,h_l,w_l) in level order res5, res4, res3], extras) with extras: enc_src_flatten,
    enc_pos_flatten (B,S,D), enc_spatial_shapes (3,2), enc_level_start_index (3,),
    enc_valid_ratios (B,3,2), enc_reference_points (B,S,3,2), enc_memory (B,S,D)."""
    D = cfg.conv_dim
    srcs, poss, shapes = [], [], []
    for lvl, name in enumerate(("res5", "res4", "res3")):  # sorted by stride, reversed (:195-230)
        p = f"{prefix}input_proj.{lvl}."
        x = conv2d(features[name], sd[p + "0.weight"], sd[p + "0.bias"])
        x = _gn(sd, p + "1.", x)
        H, W = x.shape[2:]
        shapes.append((H, W))
        srcs.append(_flatten(x))
        pos = sine_position_embedding(H, W, D // 2).reshape(D, -1).T  # (HW, D)
        # level_embed goes into the positional/query path only (:75).
        poss.append(np.broadcast_to(pos + sd[prefix + "transformer.level_embed"][lvl],
                                    (x.shape[0],) + pos.shape))
    src, pos = np.concatenate(srcs, 1), np.concatenate(poss, 1)
    B = src.shape[0]
    shapes_a = np.asarray(shapes, np.int64)
    start = np.concatenate([[0], np.cumsum(shapes_a.prod(1))[:-1]]).astype(np.int64)
    ref = reference_points(shapes_a, B)
    memory = src
    for lyr in range(cfg.enc_layers):
        memory = encoder_layer(sd, cfg, lyr, memory, pos, ref, shapes_a, prefix)
    multi_scale = []
    for (H, W), s in zip(shapes, start, strict=True):
        multi_scale.append(memory[:, s:s + H * W].transpose(0, 2, 1).reshape(B, D, H, W))
    # One FPN level on res2 (:343-351): adapter_1 (1x1 conv + GN) + bilinear up of the 1/8 map,
    # then layer_1 (3x3 conv + GN + ReLU); both convs without bias.
    lat = conv2d(features["res2"], sd[prefix + "adapter_1.weight"])
    lat = _gn(sd, prefix + "adapter_1.norm.", lat)
    y = lat + torch_bilinear_resize(multi_scale[-1], *lat.shape[2:])
    y = conv2d(y, sd[prefix + "layer_1.weight"], padding=1)
    y = np.maximum(_gn(sd, prefix + "layer_1.norm.", y), 0.0)
    mask_features = conv2d(y, sd[prefix + "mask_features.weight"],
                           sd[prefix + "mask_features.bias"])
    extras = {"enc_src_flatten": src, "enc_pos_flatten": pos, "enc_spatial_shapes": shapes_a,
              "enc_level_start_index": start, "enc_valid_ratios": np.ones((B, NUM_LEVELS, 2)),
              "enc_reference_points": ref, "enc_memory": memory}
    return mask_features, multi_scale, extras


# --------------------------------------------------------------------------------------------------
# Masked-attention transformer decoder (transformer_decoder/mask2former_transformer_decoder.py)
# --------------------------------------------------------------------------------------------------
def _mha(sd: dict, prefix: str, q_in, k_in, v_in, heads: int, mask=None):
    """``nn.MultiheadAttention`` (batch-first here): fused in_proj rows [q; k; v], out_proj."""
    W, b = sd[prefix + "in_proj_weight"], sd[prefix + "in_proj_bias"]
    D = W.shape[1]
    q = linear(q_in, W[:D], b[:D])
    k = linear(k_in, W[D:2 * D], b[D:2 * D])
    v = linear(v_in, W[2 * D:], b[2 * D:])
    o = _attention(q, k, v, heads, mask=mask)
    return linear(o, sd[prefix + "out_proj.weight"], sd[prefix + "out_proj.bias"])


def prediction_heads(sd: dict, cfg: M2FConfig, output: np.ndarray, mask_features: np.ndarray,
                     target_size, prefix: str = "sem_seg_head.predictor.") -> tuple:
    """``forward_prediction_heads`` (decoder :440-460) on queries ``output`` (B,Q,D).

    Returns class logits (B,Q,K+1) (linear, or cosine with ``cfg.cosine``), mask logits
    (B,Q,H,W) = mask_embed(y)·mask_features, and the next attention mask (B,h,Q,h_l·w_l) bool
    (True = may not attend) = sigmoid(bilinear(masks -> target_size)) < 0.5, per head."""
    p = prefix
    y = _ln(sd, p + "decoder_norm.", output)
    Wc = sd[p + "class_embed.weight"]
    if cfg.cosine:  # USE_LAYERNORM: plain cosine, no eps / bias / temperature (:443-446)
        cls = (y / np.linalg.norm(y, axis=-1, keepdims=True)) @ (
            Wc / np.linalg.norm(Wc, axis=-1, keepdims=True)).T
    else:
        cls = linear(y, Wc, sd[p + "class_embed.bias"])
    e = y
    for i in range(3):  # MLP with ReLU between the 3 layers
        e = linear(e, sd[f"{p}mask_embed.layers.{i}.weight"], sd[f"{p}mask_embed.layers.{i}.bias"])
        if i < 2:
            e = np.maximum(e, 0.0)
    masks = np.einsum("bqc,bchw->bqhw", e, mask_features)
    am = sigmoid(torch_bilinear_resize(masks, *target_size)) < 0.5
    B, Q = am.shape[:2]
    am = np.broadcast_to(am.reshape(B, 1, Q, -1), (B, cfg.nheads, Q, am[0, 0].size))
    return cls, masks, am


def decoder_memory(sd: dict, cfg: M2FConfig, multi_scale: list,
                   prefix: str = "sem_seg_head.predictor.") -> tuple:
    """Memory of the decoder (:376-389): per level src (B,HW,D) = flattened map + level_embed
    and pos (1,HW,D) sine; the level embedding enters keys *and* values.

    Returns (srcs, poss, sizes [(h_l, w_l)])."""
    D = cfg.hidden_dim
    srcs, poss, sizes = [], [], []
    for i, x in enumerate(multi_scale):
        H, W = x.shape[2:]
        sizes.append((H, W))
        poss.append(sine_position_embedding(H, W, D // 2).reshape(D, -1).T[None])
        srcs.append(_flatten(x) + sd[prefix + "level_embed.weight"][i])
    return srcs, poss, sizes


def decoder_layer(sd: dict, cfg: M2FConfig, i: int, output: np.ndarray, src: np.ndarray,
                  pos: np.ndarray, attn_mask: np.ndarray,
                  prefix: str = "sem_seg_head.predictor.") -> np.ndarray:
    """Decoder layer i (:395-426), post-norm: masked cross-attention -> self-attention -> FFN.

    output (B,Q,D) queries; src/pos (B|1,HW,D) memory of level i % 3; attn_mask (B,h,Q,HW) bool
    **after** the all-masked-row fix. Returns the layer output (B,Q,D) (a ``query_feature``)."""
    qpos = sd[prefix + "query_embed.weight"][None]
    c = f"{prefix}transformer_cross_attention_layers.{i}."
    a = _mha(sd, c + "multihead_attn.", output + qpos, src + pos, src, cfg.nheads, mask=attn_mask)
    output = _ln(sd, c + "norm.", output + a)
    s = f"{prefix}transformer_self_attention_layers.{i}."
    a = _mha(sd, s + "self_attn.", output + qpos, output + qpos, output, cfg.nheads)
    output = _ln(sd, s + "norm.", output + a)
    f = f"{prefix}transformer_ffn_layers.{i}."
    h = np.maximum(linear(output, sd[f + "linear1.weight"], sd[f + "linear1.bias"]), 0.0)
    h = linear(h, sd[f + "linear2.weight"], sd[f + "linear2.bias"])
    return _ln(sd, f + "norm.", output + h)


def fix_all_masked_rows(attn_mask: np.ndarray) -> np.ndarray:
    """A (query, head) row masked for every key attends everywhere instead (decoder :402)."""
    am = attn_mask.copy()
    am[am.all(-1)] = False
    return am


def transformer_decoder(sd: dict, cfg: M2FConfig, mask_features: np.ndarray, multi_scale: list,
                        prefix: str = "sem_seg_head.predictor.") -> dict:
    """``MultiScaleMaskedTransformerDecoder.forward`` (:370-437), eval mode.

    mask_features (B,Dm,H,W); multi_scale 3 maps (B,D,h_l,w_l) (1/32, 1/16, 1/8).
    Returns dict: class_logits / mask_logits: lists of ``dec_layers`` predictions (B,Q,K+1) /
    (B,Q,H,W) (raw heads; index p = after p layers); query_feature: list of ``num_layers``
    (B,Q,D) layer outputs before decoder_norm; cross_attn_mask: list of (B,h,Q,h_l·w_l) bool
    memory masks actually used (after the all-masked-row fix)."""
    srcs, poss, sizes = decoder_memory(sd, cfg, multi_scale, prefix)
    B = mask_features.shape[0]
    output = np.broadcast_to(sd[prefix + "query_feat.weight"][None],
                             (B, cfg.num_queries, cfg.hidden_dim))
    cls, masks, am = prediction_heads(sd, cfg, output, mask_features, sizes[0], prefix)
    res = {"class_logits": [cls], "mask_logits": [masks], "query_feature": [],
           "cross_attn_mask": []}
    for i in range(cfg.num_layers):
        lvl = i % NUM_LEVELS  # round-robin 1/32, 1/16, 1/8
        am = fix_all_masked_rows(am)
        res["cross_attn_mask"].append(am)
        output = decoder_layer(sd, cfg, i, output, srcs[lvl], poss[lvl], am, prefix)
        res["query_feature"].append(output)
        cls, masks, am = prediction_heads(sd, cfg, output, mask_features,
                                          sizes[(i + 1) % NUM_LEVELS], prefix)
        res["class_logits"].append(cls)
        res["mask_logits"].append(masks)
    return res


# --------------------------------------------------------------------------------------------------
# RankSeg (maskformer_model.py:283-359, modeling/multilabel_head.py)
# --------------------------------------------------------------------------------------------------
def ml_head(sd: dict, cfg: M2FConfig, query_feature: np.ndarray, prefix: str = "ml_head.") -> dict:
    """``MultiLabelHead`` (multilabel_head.py:44-98) in eval mode on query tokens (B,Q,D).

    Returns tokens (B,Q,d) = proj_dec, block_out (B,Q+K,d) = one pre-norm ViT block on
    [tokens; cls_emb], norm_out (B,Q+K,d), img_pred (B,K) = GroupWiseLinear of the K class
    tokens."""
    p = prefix
    B = query_feature.shape[0]
    K = cfg.num_classes
    t = linear(query_feature, sd[p + "proj_dec.weight"], sd[p + "proj_dec.bias"])
    d = t.shape[-1]
    x = np.concatenate([t, np.broadcast_to(sd[p + "cls_emb"], (B, K, d))], axis=1)
    b = p + "block."
    qkv = linear(_ln(sd, b + "norm1.", x), sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"])
    a = _attention(qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:], cfg.ml_heads)
    x = x + linear(a, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
    h = gelu(linear(_ln(sd, b + "norm2.", x), sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]))
    x = x + linear(h, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
    n = _ln(sd, p + "norm.", x)
    img_pred = (sd[p + "fc.W"] * n[:, -K:]).sum(-1) + sd[p + "fc.b"]
    return {"tokens": t, "block_out": x, "norm_out": n, "img_pred": img_pred}


def rankseg(sd: dict, cfg: M2FConfig, query_features: list, class_logits_list: list) -> dict:
    """Ranking, gather and rank LayerNorm (maskformer_model.py:283-327).

    query_features: decoder layer outputs (B,Q,D) (index ``cfg.ml_layer`` is read);
    class_logits_list: the predictions' class logits (B,Q,K+1). Returns the :func:`ml_head` dict
    plus topk_index (B,kappa+1) = argsort(img_pred, descending)[:, :kappa] followed by K,
    gathered / rank_ln: lists (B,Q,kappa+1) per prediction (ml_norm = LayerNorm(kappa+1))."""
    K, kappa = cfg.num_classes, cfg.topk
    if not 0 < kappa <= K:  # kappa > K crashes officially (ml_norm size mismatch)
        raise ValueError(f"RANKSEG.TOPK {kappa} must be in 1..{K}")
    out = ml_head(sd, cfg, query_features[cfg.ml_layer])
    img_pred = out["img_pred"]
    B = img_pred.shape[0]
    order = np.argsort(-img_pred, axis=1, kind="stable")[:, :kappa]
    topk = np.concatenate([order, np.full((B, 1), K)], axis=1).astype(np.int64)
    out["topk_index"] = topk
    out["gathered"] = [np.take_along_axis(c, topk[:, None, :], axis=2) for c in class_logits_list]
    out["rank_ln"] = [_ln(sd, "ml_norm.", g) for g in out["gathered"]]
    return out


def scatter_to_classes(rank_logits: np.ndarray, topk_index: np.ndarray, num_classes: int):
    """Write (B,Q,kappa+1) rank-space logits back to class order in a -100 tensor (B,Q,K+1)
    (maskformer_model.py:350-359); unselected classes keep -100."""
    B, Q = rank_logits.shape[:2]
    out = np.full((B, Q, num_classes + 1), -100.0)
    for b in range(B):
        out[b][:, topk_index[b]] = rank_logits[b]
    return out


def gt_mask_logits(logits: np.ndarray, gt_classes: list) -> np.ndarray:
    """-gt oracle (maskformer_model.py:304-307): logits (B,Q,K+1) of classes absent from image b's
    ``gt_classes[b]`` set to -100; the no-object column is never masked. Returns a copy."""
    out = np.array(logits, F64, copy=True)
    K = out.shape[-1] - 1
    for b, gt in enumerate(gt_classes):
        absent = np.ones(K + 1, bool)
        absent[np.asarray(gt, np.int64)] = False
        absent[K] = False
        out[b][:, absent] = -100.0
    return out


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------
def model_forward(sd: dict, cfg: M2FConfig, images: np.ndarray, gt_classes: list | None = None):
    """Whole model on one padded, normalised batch (B,3,H,W) (maskformer_model.py:221-359).

    gt_classes: per image the GT class ids (needed for ``cfg.use_gt`` and for the multilabel GT).
    Returns dict: input_hw (H,W), backbone {res*}, mask_features, multi_scale, pixdec extras,
    dec (see :func:`transformer_decoder`), rankseg (or None), mask_cls (B,Q,K+1) = the logits
    handed to the inference, pred_masks (B,Q,H/4,W/4) = the final mask logits."""
    feats = swin_forward(sd, cfg, images)
    mask_features, multi_scale, extras = pixel_decoder(sd, cfg, feats)
    dec = transformer_decoder(sd, cfg, mask_features, multi_scale)
    mask_cls = dec["class_logits"][-1]
    if cfg.use_gt:  # final prediction only; aux predictions are not masked
        if gt_classes is None:
            raise ValueError("the -gt oracle needs gt_classes")
        mask_cls = gt_mask_logits(mask_cls, gt_classes)
    rs = None
    if cfg.rankseg:
        rs = rankseg(sd, cfg, dec["query_feature"], dec["class_logits"][:-1] + [mask_cls])
        mask_cls = scatter_to_classes(rs["rank_ln"][-1], rs["topk_index"], cfg.num_classes)
    return {"input_hw": tuple(images.shape[2:]), "backbone": feats,
            "mask_features": mask_features, "multi_scale": multi_scale, "pixdec": extras,
            "dec": dec, "rankseg": rs, "mask_cls": mask_cls, "pred_masks": dec["mask_logits"][-1]}


def decision_margins(cfg: M2FConfig, out: dict) -> dict:
    """Distances of the discrete decisions of a :func:`model_forward` result from their thresholds
    (use them to choose seeds for float32 parity tests on random weights).

    attn_mask_logit: min |mask logit| after the resize to the attention level, over the
    predictions that make a cross-attention mask (sigmoid < 0.5 flips at 0); rank_gap: min gap
    between sorted ``img_pred`` entries (RankSeg; every rank position has its own affine, so all
    gaps matter), else inf; object_score: min |max softmax(mask_cls) - object_mask_threshold| over
    queries (the panoptic keep test)."""
    sizes = [m.shape[2:] for m in out["multi_scale"]]
    attn = min(np.abs(torch_bilinear_resize(out["dec"]["mask_logits"][p], *sizes[p % NUM_LEVELS]))
               .min() for p in range(cfg.num_layers))
    rank = np.inf
    if out["rankseg"] is not None:
        rank = np.diff(np.sort(out["rankseg"]["img_pred"], axis=1), axis=1).min()
    score = np.abs(softmax(out["mask_cls"]).max(-1) - cfg.object_mask_threshold).min()
    return {"attn_mask_logit": float(attn), "rank_gap": float(rank), "object_score": float(score)}


def preprocess(images: list, size_divisibility: int = 32) -> tuple:
    """uint8 RGB images [(3,h,w)] -> ((x-mean)/std zero-padded bottom/right to a common multiple
    of ``size_divisibility`` (B,3,H,W) float64, image_sizes (B,2)); ``ImageList.from_tensors``."""
    mean = np.asarray(PIXEL_MEAN, F64)[:, None, None]
    std = np.asarray(PIXEL_STD, F64)[:, None, None]
    sizes = np.asarray([im.shape[1:] for im in images], np.int64)
    H, W = (-(-sizes.max(0) // size_divisibility) * size_divisibility).tolist()
    out = np.zeros((len(images), 3, H, W))
    for i, im in enumerate(images):
        out[i, :, :im.shape[1], :im.shape[2]] = (np.asarray(im, F64) - mean) / std
    return out, sizes


def postprocess_masks(mask_logits: np.ndarray, image_size, padded_size, out_size) -> np.ndarray:
    """Mask logits (Q,h,w) -> bilinear to the padded input size -> crop to ``image_size`` ->
    bilinear to ``out_size`` (maskformer_model.py:365-370, d2 ``sem_seg_postprocess``)."""
    m = torch_bilinear_resize(mask_logits, *padded_size)
    m = m[:, :image_size[0], :image_size[1]]
    return torch_bilinear_resize(m, *out_size)


def semantic_inference(mask_cls, mask_logits, image_size, padded_size, out_size) -> np.ndarray:
    """(maskformer_model.py:446-450) mask_cls (Q,K+1), mask_logits (Q,h,w) ->
    sem_seg (K,oh,ow) = einsum('qc,qhw->chw', softmax(mask_cls)[:, :K], sigmoid(masks))."""
    m = sigmoid(postprocess_masks(mask_logits, image_size, padded_size, out_size))
    return np.einsum("qc,qhw->chw", softmax(mask_cls)[:, :-1], m)


def panoptic_inference(mask_cls, mask_logits, image_size, padded_size, out_size, thing_ids,
                       object_mask_threshold: float = 0.8, overlap_threshold: float = 0.8) -> dict:
    """(maskformer_model.py:452-513) mask_cls (Q,K+1), mask_logits (Q,h,w), thing_ids = the
    contiguous ids of thing classes. Returns dict: panoptic_seg int32 (oh,ow) (0 = void),
    segments_info [{'id','isthing','category_id'}], segments int64 (n,3) rows
    (id, category_id, isthing), argmax_gap (oh,ow) = top-1 minus top-2 of the per-pixel prob over
    the kept queries (inf with one kept query, None with none) for near-tie diagnostics."""
    K = mask_cls.shape[-1] - 1
    masks = sigmoid(postprocess_masks(mask_logits, image_size, padded_size, out_size))
    prob_cls = softmax(mask_cls)
    scores, labels = prob_cls.max(-1), prob_cls.argmax(-1)
    keep = (labels != K) & (scores > object_mask_threshold)
    seg = np.zeros(masks.shape[1:], np.int32)
    info: list = []
    gap = None
    if keep.any():
        cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], masks[keep]
        prob = cur_scores[:, None, None] * cur_masks
        ids = prob.argmax(0)
        srt = np.sort(prob, axis=0)
        gap = srt[-1] - srt[-2] if len(prob) > 1 else np.full(ids.shape, np.inf)
        things = {int(t) for t in thing_ids}
        stuff_memory: dict = {}
        cur_id = 0
        for k in range(len(cur_classes)):
            cls = int(cur_classes[k])
            isthing = cls in things
            area = int((ids == k).sum())
            orig = int((cur_masks[k] >= 0.5).sum())
            m = (ids == k) & (cur_masks[k] >= 0.5)
            if area > 0 and orig > 0 and m.sum() > 0:
                if area / orig < overlap_threshold:
                    continue
                if not isthing:
                    if cls in stuff_memory:  # merge repeated stuff into its first segment
                        seg[m] = stuff_memory[cls]
                        continue
                    stuff_memory[cls] = cur_id + 1
                cur_id += 1
                seg[m] = cur_id
                info.append({"id": cur_id, "isthing": bool(isthing), "category_id": cls})
    segments = np.asarray([[s["id"], s["category_id"], int(s["isthing"])] for s in info],
                          np.int64).reshape(-1, 3)
    return {"panoptic_seg": seg, "segments_info": info, "segments": segments, "argmax_gap": gap}


def forward(sd: dict, cfg: M2FConfig, images: np.ndarray, image_sizes, out_sizes,
            gt_classes: list | None = None, thing_ids=None, per_image: bool = True) -> list:
    """Official evaluation of a batch: model + semantic (+ panoptic) inference per image.

    images: normalised (B,3,H,W) (may be zero-padded; image i occupies [:h_i, :w_i]); image_sizes
    (B,2) unpadded (h,w); out_sizes (B,2) requested output (height, width); gt_classes per image
    (used by the -gt oracle and the multilabel GT); thing_ids: contiguous thing class ids
    (panoptic inference runs only if given). ``per_image=True`` runs each image alone, cropped
    and re-padded to a multiple of ``cfg.size_divisibility`` (batch-1 official eval: no padding
    masks exist, so outputs depend on the padding); False runs the given batch as is.

    Returns per image a dict: mask_cls (Q,K+1), sem_seg (K,oh,ow), (panoptic) panoptic_seg,
    segments_info, segments, argmax_gap, (RankSeg) multilabel = (img_pred (1,K),
    topk_index (1,kappa), gt (1,K) bool), and model = the :func:`model_forward` dict it came from
    (with its batch index ``b``)."""
    images = np.asarray(images, F64)
    image_sizes = np.asarray(image_sizes, np.int64)
    if per_image:
        runs = []
        for i, (h, w) in enumerate(image_sizes.tolist()):
            d = cfg.size_divisibility
            x = np.zeros((1, 3, -(-h // d) * d, -(-w // d) * d))
            x[0, :, :h, :w] = images[i, :, :h, :w]
            gt = None if gt_classes is None else [gt_classes[i]]
            runs.append((model_forward(sd, cfg, x, gt), 0))
    else:
        out = model_forward(sd, cfg, images, gt_classes)
        runs = [(out, i) for i in range(len(images))]
    results = []
    for i, (out, b) in enumerate(runs):
        padded = out["input_hw"]
        size, osz = image_sizes[i].tolist(), np.asarray(out_sizes)[i].tolist()
        mask_cls, masks = out["mask_cls"][b], out["pred_masks"][b]
        r = {"mask_cls": mask_cls, "model": out, "b": b,
             "sem_seg": semantic_inference(mask_cls, masks, size, padded, osz)}
        if thing_ids is not None:
            r.update(panoptic_inference(mask_cls, masks, size, padded, osz, thing_ids,
                                        cfg.object_mask_threshold, cfg.overlap_threshold))
        if cfg.rankseg:
            gt = np.zeros((1, cfg.num_classes), bool)
            if gt_classes is not None:
                gt[0, np.asarray(gt_classes[i], np.int64)] = True
            r["multilabel"] = (out["rankseg"]["img_pred"][b][None],
                               out["rankseg"]["topk_index"][b, :-1][None], gt)
        results.append(r)
    return results
