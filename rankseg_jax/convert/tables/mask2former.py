"""Mapping rows of Mask2Former: `sem_seg_head` (pixel decoder + transformer decoder), the
RankSeg `ml_head` / `ml_norm`, and the whole detectron2 checkpoint of `models.MaskFormer`.

Official (detectron2) keys `sem_seg_head.pixel_decoder.*` and `sem_seg_head.predictor.*` ->
our paths of `MSDeformAttnPixelDecoder` / `MultiScaleMaskedTransformerDecoder` (their module
docstrings list every path). Rows are emitted in the official state-dict order. Transforms:
Linear [out, in] -> kernel [in, out] (`linear`); every conv, 1x1 included, is an nnx.Conv, so
OIHW -> HWIO (`conv`); torch MultiheadAttention `in_proj_{weight,bias}` [3D, D] / [3D] -> the
query/key/value thirds (`qkv_q|k|v`); nn.Embedding weights and the bare
`transformer.level_embed` Parameter as they are (`identity`); the GroupWiseLinear `fc.W`
[1, K, d] / `fc.b` [1, K] lose their leading 1 (`drop_lead`).

Full checkpoints (`model_rows`, `convert_state_dict`, `export_state_dict`): the Swin
backbone via `tables/swin.py`, then the head, then RankSeg. Buffers are recomputed
constants, never parameters: the Swin `relative_position_index` and
`criterion.empty_weight`. The ImageNet Swin release is a backbone-only source
(`convert_imagenet_swin`).
"""

from __future__ import annotations

from collections.abc import Mapping

import ml_collections as mlc
import numpy as np

from rankseg_jax import param_paths
from rankseg_jax.convert import engine
from rankseg_jax.convert.engine import (
    CONV,
    DROP_LEAD,
    IDENTITY,
    Row,
    fused_qkv_rows,
    linear_rows,
    norm_rows,
)
from rankseg_jax.convert.tables import swin


def _conv(rows: list[Row], ours: tuple, theirs: str, bias: bool) -> None:
    rows.append(Row(ours + ("kernel",), f"{theirs}.weight", CONV))
    if bias:
        rows.append(Row(ours + ("bias",), f"{theirs}.bias", IDENTITY))


def msdeform_attn_rows(ours: tuple, theirs: str) -> list[Row]:
    """Rows of one `MSDeformAttn` (four Linears) at our path `ours` / official prefix `theirs`."""
    rows: list[Row] = []
    for name in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
        linear_rows(rows, ours + (name,), f"{theirs}.{name}")
    return rows


def pixel_decoder_rows(num_encoder_layers: int, *, ours: tuple = ("pixel_decoder",),
                       theirs: str = "sem_seg_head.pixel_decoder") -> list[Row]:
    """Rows of `MSDeformAttnPixelDecoder` with `num_encoder_layers` deformable layers.

    ours: our path prefix of the module; theirs: the official key prefix.
    """
    rows: list[Row] = []
    for lvl in range(3):  # res5, res4, res3
        _conv(rows, ours + ("input_proj", lvl, "conv"), f"{theirs}.input_proj.{lvl}.0", True)
        norm_rows(rows, ours + ("input_proj", lvl, "norm"), f"{theirs}.input_proj.{lvl}.1")
    rows.append(Row(ours + ("level_embed",), f"{theirs}.transformer.level_embed", IDENTITY))
    for j in range(num_encoder_layers):
        o, t = ours + ("encoder_layers", j), f"{theirs}.transformer.encoder.layers.{j}"
        rows += msdeform_attn_rows(o + ("self_attn",), f"{t}.self_attn")
        norm_rows(rows, o + ("norm1",), f"{t}.norm1")
        linear_rows(rows, o + ("linear1",), f"{t}.linear1")
        linear_rows(rows, o + ("linear2",), f"{t}.linear2")
        norm_rows(rows, o + ("norm2",), f"{t}.norm2")
    _conv(rows, ours + ("mask_features",), f"{theirs}.mask_features", True)
    for name in ("adapter_1", "layer_1"):
        _conv(rows, ours + (name, "conv"), f"{theirs}.{name}", False)
        norm_rows(rows, ours + (name, "norm"), f"{theirs}.{name}.norm")
    return rows


def predictor_rows(num_layers: int, *, cosine_classifier: bool, input_proj: bool = False,
                   num_feature_levels: int = 3, mask_embed_layers: int = 3,
                   ours: tuple = ("predictor",),
                   theirs: str = "sem_seg_head.predictor") -> list[Row]:
    """Rows of `MultiScaleMaskedTransformerDecoder` with `num_layers` (= DEC_LAYERS - 1).

    cosine_classifier: RankSeg's USE_LAYERNORM head (class_embed has no bias);
    input_proj: the decoder has its 1x1 input projections (in_channels != hidden or
    ENFORCE_INPUT_PROJ). ours / theirs: path and key prefixes.
    """
    rows: list[Row] = []
    sub = (("self_attn", "self_norm", "transformer_self_attention_layers", "self_attn"),
           ("cross_attn", "cross_norm", "transformer_cross_attention_layers",
            "multihead_attn"))
    for attn, norm, group, mha in sub:  # official order: all self, all cross, all FFN
        for i in range(num_layers):
            o, t = ours + ("layers", i), f"{theirs}.{group}.{i}"
            fused_qkv_rows(rows, o + (attn,), f"{t}.{mha}.in_proj_weight",
                           f"{t}.{mha}.in_proj_bias")
            linear_rows(rows, o + (attn, "out"), f"{t}.{mha}.out_proj")
            norm_rows(rows, o + (norm,), f"{t}.norm")
    for i in range(num_layers):
        o, t = ours + ("layers", i), f"{theirs}.transformer_ffn_layers.{i}"
        linear_rows(rows, o + ("linear1",), f"{t}.linear1")
        linear_rows(rows, o + ("linear2",), f"{t}.linear2")
        norm_rows(rows, o + ("ffn_norm",), f"{t}.norm")
    norm_rows(rows, ours + ("decoder_norm",), f"{theirs}.decoder_norm")
    for name in ("query_feat", "query_embed", "level_embed"):
        rows.append(Row(ours + (name,), f"{theirs}.{name}.weight", IDENTITY))
    if input_proj:
        for lvl in range(num_feature_levels):
            _conv(rows, ours + ("input_proj", lvl), f"{theirs}.input_proj.{lvl}", True)
    linear_rows(rows, ours + ("class_embed",), f"{theirs}.class_embed", bias=not cosine_classifier)
    for j in range(mask_embed_layers):
        linear_rows(rows, ours + ("mask_embed", "layers", j), f"{theirs}.mask_embed.layers.{j}")
    return rows


def sem_seg_head_rows(num_encoder_layers: int, num_layers: int, *, cosine_classifier: bool,
                      input_proj: bool = False, ours: tuple = (),
                      theirs: str = "sem_seg_head") -> list[Row]:
    """Pixel decoder rows under ours + ('pixel_decoder',), predictor rows under
    ours + ('predictor',) (official `sem_seg_head.{pixel_decoder,predictor}.*`)."""
    return (pixel_decoder_rows(num_encoder_layers, ours=ours + ("pixel_decoder",),
                               theirs=f"{theirs}.pixel_decoder")
            + predictor_rows(num_layers, cosine_classifier=cosine_classifier,
                             input_proj=input_proj, ours=ours + ("predictor",),
                             theirs=f"{theirs}.predictor"))


# ------------------------------------------------------------------------------ full model

EMPTY_WEIGHT_KEY = "criterion.empty_weight"
# The criterion's no-object class weight (MASK_FORMER.NO_OBJECT_WEIGHT, 0.1 in every
# official config); `criterion.empty_weight` = [1] * K + [0.1] is a recomputed constant.
NO_OBJECT_WEIGHT = 0.1


def ml_head_rows(*, ours: tuple = ("ml_head",), theirs: str = "ml_head") -> list[Row]:
    """Rows of RankSeg's `MultiLabelHead` in the official state-dict order (own parameter
    first, then submodules as registered): cls_emb, block.{norm1, norm2, attn.qkv,
    attn.proj, mlp.fc1, mlp.fc2}, norm, fc.{W, b} (leading 1 dropped), proj_dec."""
    rows = [Row(ours + ("cls_emb",), f"{theirs}.cls_emb", IDENTITY)]
    b, t = ours + ("block",), f"{theirs}.block"
    norm_rows(rows, b + ("norm1",), f"{t}.norm1")
    norm_rows(rows, b + ("norm2",), f"{t}.norm2")
    fused_qkv_rows(rows, b + ("attn",), f"{t}.attn.qkv.weight", f"{t}.attn.qkv.bias")
    linear_rows(rows, b + ("attn", "out"), f"{t}.attn.proj")
    linear_rows(rows, b + ("mlp", "fc1"), f"{t}.mlp.fc1")
    linear_rows(rows, b + ("mlp", "fc2"), f"{t}.mlp.fc2")
    norm_rows(rows, ours + ("norm",), f"{theirs}.norm")
    rows.append(Row(ours + ("fc", "kernel"), f"{theirs}.fc.W", DROP_LEAD))
    rows.append(Row(ours + ("fc", "bias"), f"{theirs}.fc.b", DROP_LEAD))
    linear_rows(rows, ours + ("proj_dec",), f"{theirs}.proj_dec")
    return rows


def _has_input_proj(mf) -> bool:
    return mf.conv_dim != mf.hidden_dim or mf.enforce_input_proj


def model_rows(config: mlc.ConfigDict) -> list[Row]:
    """The whole `MaskFormer` of `config` <-> an official detectron2 Mask2Former(+RankSeg)
    state dict, in the official order: backbone.*, sem_seg_head.pixel_decoder.*,
    sem_seg_head.predictor.*, (RankSeg) ml_head.*, ml_norm.* (the buffers aside)."""
    m, mf = config.model, config.model.mask2former
    rows = swin.swin_rows(m.swin.depths, patch_norm=m.swin.patch_norm)
    rows += sem_seg_head_rows(mf.enc_layers, mf.dec_layers - 1,
                              cosine_classifier=mf.cosine_classifier,
                              input_proj=_has_input_proj(mf))
    if m.rankseg.enabled:
        rows += ml_head_rows()
        norm_rows(rows, ("ml_norm",), "ml_norm")
    return rows


def empty_weight(num_classes: int) -> np.ndarray:
    """The criterion's class weights [K + 1]: 1 per class, NO_OBJECT_WEIGHT for no object."""
    w = np.ones((num_classes + 1,), np.float32)
    w[-1] = NO_OBJECT_WEIGHT
    return w


def convert_state_dict(state_dict: Mapping[str, np.ndarray], config: mlc.ConfigDict,
                       expected: Mapping[tuple, tuple] | None, *,
                       allow_partial: bool = False, source: str = "checkpoint"
                       ) -> tuple[dict[tuple, np.ndarray], engine.Report]:
    """A detectron2 Mask2Former(+RankSeg) state dict -> ({our path: array}, Report).

    Every key is accounted for: parameters through `model_rows`, the Swin
    `relative_position_index` buffers and `criterion.empty_weight` as recomputed constants
    (a differing value is a warning). Raises CheckpointMismatch listing missing, unused and
    mis-shaped keys (a plain checkpoint for a RankSeg config shows up as missing `ml_head.*`
    and an unused `class_embed.bias`).
    """
    buffers = swin.swin_buffers(state_dict, config.model.swin.window_size)
    buffers[EMPTY_WEIGHT_KEY] = empty_weight(config.model.num_classes)
    return engine.map_state_dict(state_dict, model_rows(config), expected=expected,
                                 buffers=buffers, allow_partial=allow_partial, source=source,
                                 fmt="detectron2")


def export_state_dict(params: Mapping[tuple, np.ndarray], config: mlc.ConfigDict
                      ) -> dict[str, np.ndarray]:
    """{our path: array} -> the official detectron2 state dict, keys in the official order.

    Includes the buffers the official `state_dict()` holds (int64 `relative_position_index`,
    `criterion.empty_weight` before `ml_head.*`), so `load_state_dict(strict=True)` takes it.
    """
    m = config.model
    out = swin.export_swin_state_dict(params, depths=m.swin.depths,
                                      window_size=m.swin.window_size,
                                      patch_norm=m.swin.patch_norm)
    rows = [r for r in model_rows(config) if not r.key.startswith("backbone.")]
    head = [r for r in rows if r.key.startswith("sem_seg_head.")]
    out.update(engine.export_rows(params, head))
    out[EMPTY_WEIGHT_KEY] = empty_weight(m.num_classes)
    rest = [r for r in rows if not r.key.startswith("sem_seg_head.")]
    if rest:
        out.update(engine.export_rows(params, rest))
    return out


def convert_imagenet_swin(state_dict: Mapping[str, np.ndarray], config: mlc.ConfigDict,
                          expected: Mapping[tuple, tuple] | None, *, allow_partial: bool = False,
                          source: str = "checkpoint"
                          ) -> tuple[dict[tuple, np.ndarray], engine.Report]:
    """The original Swin ImageNet release (keys without prefix, `.pth` or the `.pkl` of
    Mask2Former's `tools/convert-pretrained-swin-model-to-d2.py`) -> our `backbone.*`.

    A backbone-only source: the per-stage output norms `backbone.norm{i}` (absent there) and
    every head parameter keep their fresh init, which needs allow_partial (as the official
    fine-tuning, where they start at their init). Bias tables of another window size are
    resized (torch bicubic, as the official Swin loader). The classifier `head.*` and final
    `norm.*` are ignored. Raises CheckpointMismatch naming every missing, unused or mis-shaped
    key (missing ones only without allow_partial).
    """
    backbone = None if expected is None else {
        p: s for p, s in expected.items() if p[0] == "backbone"}
    sw = config.model.swin
    params, report = swin.convert_swin_state_dict(
        state_dict, backbone, depths=sw.depths, window_size=sw.window_size, their_prefix="",
        patch_norm=sw.patch_norm, allow_partial=True, resize_window=True, source=source)
    report.format = "swin"
    report.missing += [f"{param_paths.path_name(p)} <- (not in a backbone checkpoint)"
                       for p in (expected or {}) if p[0] != "backbone"]
    if report.missing and not allow_partial:
        raise engine.CheckpointMismatch(
            f"{source} is a backbone-only Swin checkpoint; pass allow_partial "
            f"(--allow-partial) to keep these {len(report.missing)} params at their fresh "
            f"init: {engine.key_summary(report.missing)}", {"missing keys": report.missing})
    return params, report
