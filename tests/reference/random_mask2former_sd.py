"""Random official-format Mask2Former(+RankSeg) state dicts for any structural config.

``official_layout(cfg)`` lists every key of the official state dict (detectron2 checkpoint
``["model"]``) in the official order with its shape and an init rule; :func:`random_state_dict`
fills it, :func:`param_count` counts parameters from the shapes alone (no allocation).

Init rules follow the scheme of the official tiny fixtures (well-conditioned outputs: confident
class scores, non-collapsed decoder attention):

* Linear / conv / ``in_proj`` weights N(0, 1/fan_in) (conv fan_in = C_in·kh·kw); biases N(0, 0.1²)
* LayerNorm / GroupNorm weights 1 + N(0, 0.25²), biases N(0, 0.1²)
* Swin ``relative_position_bias_table``, ``query_feat``, ``query_embed``, ``ml_head.cls_emb``:
  N(0, 1)
* decoder ``level_embed.weight`` and pixel-decoder ``transformer.level_embed``: N(0, 0.5²)
* MSDeformAttn ``sampling_offsets.bias``: the official ring init (head m direction
  (cos, sin)(2πm/M) / max(|cos|, |sin|), × (point+1), same for every level;
  ops/modules/ms_deform_attn.py:66-80) + N(0, 0.5²); ``attention_weights.bias`` N(0, 0.5²)
* transformer decoder attention: q/k rows of ``in_proj_weight`` × 3, ``out_proj.weight`` × 0.3
* plain / -gt ``class_embed.weight`` N(0, 1)·4/√fan_in, ``class_embed.bias`` N(0, 0.3²)
* RankSeg ``ml_norm.weight`` N(4, 1²), ``ml_norm.bias`` N(0, 0.3²); ``ml_head.fc.W`` N(0, 1/d),
  ``ml_head.fc.b`` N(0, 0.1²)
* buffers: ``relative_position_index`` (int64, swin.py:106-121) and ``criterion.empty_weight``
  = [1]·K + [0.1]
"""

from __future__ import annotations

import math

import numpy as np

from .mask2former_numpy import NUM_LEVELS, M2FConfig, relative_position_index

BUFFER_RULES = ("rel_index", "empty_weight")


def _linear(key: str, n_out: int, n_in: int, bias: bool = True, w_rule: str = "w"):
    rows = [(key + ".weight", (n_out, n_in), w_rule)]
    return rows + [(key + ".bias", (n_out,), "b")] if bias else rows


def _norm(key: str, n: int):
    return [(key + ".weight", (n,), "norm_w"), (key + ".bias", (n,), "norm_b")]


def _swin_layout(cfg: M2FConfig, p: str = "backbone.") -> list:
    ps, ws, C = cfg.patch_size, cfg.window_size, cfg.embed_dim
    rows = [(p + "patch_embed.proj.weight", (C, 3, ps, ps), "w"),
            (p + "patch_embed.proj.bias", (C,), "b")] + _norm(p + "patch_embed.norm", C)
    dims = cfg.stage_dims
    for i, (depth, heads, d) in enumerate(zip(cfg.depths, cfg.num_heads, dims, strict=True)):
        hid = int(d * cfg.mlp_ratio)
        for j in range(depth):
            b = f"{p}layers.{i}.blocks.{j}."
            rows += _norm(b + "norm1", d)
            rows += [(b + "attn.relative_position_bias_table", ((2 * ws - 1) ** 2, heads), "n1"),
                     (b + "attn.relative_position_index", (ws * ws, ws * ws), "rel_index")]
            rows += _linear(b + "attn.qkv", 3 * d, d) + _linear(b + "attn.proj", d, d)
            rows += _norm(b + "norm2", d)
            rows += _linear(b + "mlp.fc1", hid, d) + _linear(b + "mlp.fc2", d, hid)
        if i < len(cfg.depths) - 1:
            dsp = f"{p}layers.{i}.downsample."
            rows += _linear(dsp + "reduction", 2 * d, 4 * d, bias=False)
            rows += _norm(dsp + "norm", 4 * d)
    for i, d in enumerate(dims):
        rows += _norm(f"{p}norm{i}", d)
    return rows


def _pixel_decoder_layout(cfg: M2FConfig, p: str = "sem_seg_head.pixel_decoder.") -> list:
    D, dims = cfg.conv_dim, cfg.stage_dims
    M, L, P = cfg.nheads, NUM_LEVELS, cfg.enc_points
    rows = []
    for lvl, c_in in enumerate((dims[3], dims[2], dims[1])):  # res5, res4, res3
        rows += [(f"{p}input_proj.{lvl}.0.weight", (D, c_in, 1, 1), "w"),
                 (f"{p}input_proj.{lvl}.0.bias", (D,), "b")] + _norm(f"{p}input_proj.{lvl}.1", D)
    rows.append((p + "transformer.level_embed", (NUM_LEVELS, D), "n05"))
    for lyr in range(cfg.enc_layers):
        e = f"{p}transformer.encoder.layers.{lyr}."
        rows += [(e + "self_attn.sampling_offsets.weight", (M * L * P * 2, D), "w"),
                 (e + "self_attn.sampling_offsets.bias", (M * L * P * 2,), "offset_ring")]
        rows += [(e + "self_attn.attention_weights.weight", (M * L * P, D), "w"),
                 (e + "self_attn.attention_weights.bias", (M * L * P,), "n05")]
        rows += _linear(e + "self_attn.value_proj", D, D)
        rows += _linear(e + "self_attn.output_proj", D, D)
        rows += _norm(e + "norm1", D)
        rows += _linear(e + "linear1", cfg.enc_ffn, D) + _linear(e + "linear2", D, cfg.enc_ffn)
        rows += _norm(e + "norm2", D)
    rows += [(p + "mask_features.weight", (cfg.mask_dim, D, 1, 1), "w"),
             (p + "mask_features.bias", (cfg.mask_dim,), "b")]
    rows += [(p + "adapter_1.weight", (D, dims[0], 1, 1), "w")] + _norm(p + "adapter_1.norm", D)
    rows += [(p + "layer_1.weight", (D, D, 3, 3), "w")] + _norm(p + "layer_1.norm", D)
    return rows


def _predictor_layout(cfg: M2FConfig, p: str = "sem_seg_head.predictor.") -> list:
    D, F, K = cfg.hidden_dim, cfg.dim_feedforward, cfg.num_classes
    rows = []
    for kind, attn in (("self", "self_attn"), ("cross", "multihead_attn")):
        for i in range(cfg.num_layers):
            a = f"{p}transformer_{kind}_attention_layers.{i}."
            rows += [(a + attn + ".in_proj_weight", (3 * D, D), "in_proj_qk"),
                     (a + attn + ".in_proj_bias", (3 * D,), "b")]
            rows += _linear(a + attn + ".out_proj", D, D, w_rule="attn_out") + _norm(a + "norm", D)
    for i in range(cfg.num_layers):
        f = f"{p}transformer_ffn_layers.{i}."
        rows += _linear(f + "linear1", F, D) + _linear(f + "linear2", D, F) + _norm(f + "norm", D)
    rows += _norm(p + "decoder_norm", D)
    rows += [(p + "query_feat.weight", (cfg.num_queries, D), "n1"),
             (p + "query_embed.weight", (cfg.num_queries, D), "n1"),
             (p + "level_embed.weight", (NUM_LEVELS, D), "n05")]
    if cfg.cosine:  # USE_LAYERNORM: no bias (decoder :335)
        rows.append((p + "class_embed.weight", (K + 1, D), "w"))
    else:
        rows += [(p + "class_embed.weight", (K + 1, D), "class_w"),
                 (p + "class_embed.bias", (K + 1,), "class_b")]
    for i in range(3):
        rows += _linear(f"{p}mask_embed.layers.{i}", cfg.mask_dim if i == 2 else D, D)
    return rows


def _rankseg_layout(cfg: M2FConfig) -> list:
    d, K, D = cfg.ml_hidden, cfg.num_classes, cfg.conv_dim  # sized by CONVS_DIM officially
    b = "ml_head.block."
    rows = [("ml_head.cls_emb", (1, K, d), "n1")]
    rows += _norm(b + "norm1", d) + _norm(b + "norm2", d)
    rows += _linear(b + "attn.qkv", 3 * d, d) + _linear(b + "attn.proj", d, d)
    rows += _linear(b + "mlp.fc1", 4 * d, d) + _linear(b + "mlp.fc2", d, 4 * d)
    rows += _norm("ml_head.norm", d)
    rows += [("ml_head.fc.W", (1, K, d), "fc_w"), ("ml_head.fc.b", (1, K), "b")]
    rows += _linear("ml_head.proj_dec", d, D)
    rows += [("ml_norm.weight", (cfg.topk + 1,), "ml_norm_w"),
             ("ml_norm.bias", (cfg.topk + 1,), "ml_norm_b")]
    return rows


def official_layout(cfg: M2FConfig, backbone_only: bool = False) -> list:
    """Every official state-dict key in order: [(key, shape, rule)].

    backbone_only: only the ``backbone.*`` keys (like ``swin_w7.pth``)."""
    rows = _swin_layout(cfg)
    if backbone_only:
        return rows
    rows += _pixel_decoder_layout(cfg) + _predictor_layout(cfg)
    rows.append(("criterion.empty_weight", (cfg.num_classes + 1,), "empty_weight"))
    if cfg.rankseg:
        rows += _rankseg_layout(cfg)
    return rows


def param_count(cfg: M2FConfig, prefix: str = "", backbone_only: bool = False) -> int:
    """Number of parameters (buffers excluded) of keys starting with ``prefix``, from shapes."""
    return sum(math.prod(shape) for key, shape, rule in official_layout(cfg, backbone_only)
               if rule not in BUFFER_RULES and key.startswith(prefix))


def _offset_ring(M: int, L: int, P: int) -> np.ndarray:
    """Official ``sampling_offsets.bias`` init (ms_deform_attn.py:66-80), flattened (M·L·P·2)."""
    th = np.arange(M) * (2.0 * math.pi / M)
    grid = np.stack([np.cos(th), np.sin(th)], -1)
    grid = grid / np.abs(grid).max(-1, keepdims=True)
    grid = np.tile(grid[:, None, None, :], (1, L, P, 1)) * (np.arange(P) + 1.0)[None, None, :, None]
    return grid.reshape(-1)


def random_state_dict(cfg: M2FConfig, seed: int = 0, backbone_only: bool = False,
                      qk_scale: float = 3.0, attn_out_scale: float = 0.3,
                      class_w_scale: float = 4.0) -> dict[str, np.ndarray]:
    """Random official-format state dict: {key: float32 array} (int64 ``relative_position_index``
    buffers), every key of :func:`official_layout` with its official shape, in order."""
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}

    def normal(shape, std=1.0, mean=0.0):
        return mean + std * rng.standard_normal(shape)

    for key, shape, rule in official_layout(cfg, backbone_only):
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        if rule == "w":
            v = normal(shape, 1.0 / math.sqrt(fan_in))
        elif rule == "in_proj_qk":
            v = normal(shape, 1.0 / math.sqrt(fan_in))
            v[: 2 * shape[1]] *= qk_scale  # sharper decoder attention
        elif rule == "attn_out":
            v = normal(shape, attn_out_scale / math.sqrt(fan_in))
        elif rule == "class_w":
            v = normal(shape, class_w_scale / math.sqrt(fan_in))  # confident class scores
        elif rule == "class_b":
            v = normal(shape, 0.3)
        elif rule == "fc_w":
            v = normal(shape, 1.0 / math.sqrt(shape[-1]))
        elif rule == "b":
            v = normal(shape, 0.1)
        elif rule == "norm_w":
            v = normal(shape, 0.25, 1.0)
        elif rule == "norm_b":
            v = normal(shape, 0.1)
        elif rule == "n1":
            v = normal(shape)
        elif rule == "n05":
            v = normal(shape, 0.5)
        elif rule == "offset_ring":
            v = _offset_ring(cfg.nheads, NUM_LEVELS, cfg.enc_points) + normal(shape, 0.5)
        elif rule == "ml_norm_w":
            v = normal(shape, 1.0, 4.0)
        elif rule == "ml_norm_b":
            v = normal(shape, 0.3)
        elif rule == "rel_index":
            sd[key] = relative_position_index(cfg.window_size)
            continue
        elif rule == "empty_weight":
            v = np.ones(shape)
            v[-1] = 0.1
        else:  # pragma: no cover - layout and generator out of sync
            raise ValueError(rule)
        sd[key] = np.asarray(v, np.float32)
    return sd
