"""Mapping rows of Mask2Former's `sem_seg_head` (pixel decoder + transformer decoder).

Official (detectron2) keys `sem_seg_head.pixel_decoder.*` and `sem_seg_head.predictor.*` ->
our paths of `MSDeformAttnPixelDecoder` / `MultiScaleMaskedTransformerDecoder` (their module
docstrings list every path). Rows are emitted in the official state-dict order. Transforms:
Linear [out, in] -> kernel [in, out] (`linear`); every conv, 1x1 included, is an nnx.Conv, so
OIHW -> HWIO (`conv`); torch MultiheadAttention `in_proj_{weight,bias}` [3D, D] / [3D] -> the
query/key/value thirds (`qkv_q|k|v`); nn.Embedding weights and the bare
`transformer.level_embed` Parameter as they are (`identity`).
"""

from __future__ import annotations

from rankseg_jax.convert.engine import (
    CONV,
    IDENTITY,
    Row,
    fused_qkv_rows,
    linear_rows,
    norm_rows,
)


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
