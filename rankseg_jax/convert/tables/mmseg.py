"""Official RankSeg / mmseg-0.17 Segmenter checkpoints <-> our Flax parameters.

The mapping is an explicit table built from the config (depth, head blocks, RankSeg
variant): one row per Flax parameter, naming the official key and the layout transform.
Loading checks every shape and reports every missing and unused key (`engine`).
Official key names: mmseg-0.17 `VisionTransformer` (`backbone.*`) and the RankSeg decode
heads (`decode_head.*`); the state-dict order is that of `state_dict()` of the official
models.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import ml_collections as mlc
import numpy as np
from flax import nnx

from rankseg_jax.convert import torch_io
from rankseg_jax.convert.engine import (
    CONV,
    CONV1X1,
    DROP_LEAD,
    IDENTITY,
    CheckpointMismatch,
    Row,
    export_rows,
    fused_qkv_rows,
    linear_rows,
    load_into,
    map_state_dict,
    norm_rows,
    param_shapes,
    strip_ddp_prefix,
)


def backbone_rows(config: mlc.ConfigDict) -> list[Row]:
    """Mapping rows of the mmseg `VisionTransformer` (keys `backbone.*`)."""
    b = config.model.vit
    rows = [Row(("backbone", "cls_token"), "backbone.cls_token", IDENTITY),
            Row(("backbone", "pos_embed"), "backbone.pos_embed", IDENTITY)]
    if b.oce:
        rows.append(Row(("backbone", "cls_emb"), "backbone.cls_emb", IDENTITY))
    rows.append(Row(("backbone", "patch_embed", "kernel"),
                    "backbone.patch_embed.projection.weight", CONV))
    rows.append(Row(("backbone", "patch_embed", "bias"),
                    "backbone.patch_embed.projection.bias", IDENTITY))
    for i in range(b.depth):
        ours, theirs = ("backbone", "layers", i), f"backbone.layers.{i}"
        norm_rows(rows, ours + ("norm1",), f"{theirs}.ln1")
        fused_qkv_rows(rows, ours + ("attn",), f"{theirs}.attn.attn.in_proj_weight",
                   f"{theirs}.attn.attn.in_proj_bias")
        linear_rows(rows, ours + ("attn", "out"), f"{theirs}.attn.attn.out_proj")
        norm_rows(rows, ours + ("norm2",), f"{theirs}.ln2")
        linear_rows(rows, ours + ("mlp", "fc1"), f"{theirs}.ffn.layers.0.0")
        linear_rows(rows, ours + ("mlp", "fc2"), f"{theirs}.ffn.layers.1")
    if b.final_norm:
        norm_rows(rows, ("backbone", "final_norm"), "backbone.ln1")
    return rows


def head_rows(config: mlc.ConfigDict) -> list[Row]:
    """Mapping rows of the decode head (keys `decode_head.*`) for the configured variant."""
    h, b, r = config.model.head, config.model.vit, config.model.rankseg
    rows = []
    if not b.oce:
        rows.append(Row(("head", "cls_emb"), "decode_head.cls_emb", IDENTITY))
    rows.append(Row(("head", "proj_patch"), "decode_head.proj_patch", IDENTITY))
    rows.append(Row(("head", "proj_classes"), "decode_head.proj_classes", IDENTITY))
    for j in range(h.n_layers):
        ours, theirs = ("head", "blocks", j), f"decode_head.blocks.{j}"
        norm_rows(rows, ours + ("norm1",), f"{theirs}.norm1")
        norm_rows(rows, ours + ("norm2",), f"{theirs}.norm2")
        fused_qkv_rows(rows, ours + ("attn",), f"{theirs}.attn.qkv.weight",
                   f"{theirs}.attn.qkv.bias")
        linear_rows(rows, ours + ("attn", "out"), f"{theirs}.attn.proj")
        linear_rows(rows, ours + ("mlp", "fc1"), f"{theirs}.mlp.fc1")
        linear_rows(rows, ours + ("mlp", "fc2"), f"{theirs}.mlp.fc2")
    linear_rows(rows, ("head", "proj_dec"), "decode_head.proj_dec")
    norm_rows(rows, ("head", "decoder_norm"), "decode_head.decoder_norm")
    norm_rows(rows, ("head", "mask_norm"), "decode_head.mask_norm")
    if r.enabled:
        if r.ml_encoder == "tran_enc":
            norm_rows(rows, ("head", "decoder_norm2"), "decode_head.decoder_norm2")
            rows.append(Row(("head", "ml_fc", "kernel"), "decode_head.ml_fc.W", DROP_LEAD))
            rows.append(Row(("head", "ml_fc", "bias"), "decode_head.ml_fc.b", DROP_LEAD))
        elif r.ml_encoder == "tran_dec":
            p, t = ("head", "ml_decoder"), "decode_head.img_cls_head"
            rows.append(Row(p + ("input_proj", "kernel"), f"{t}.input_proj.weight", CONV1X1))
            rows.append(Row(p + ("input_proj", "bias"), f"{t}.input_proj.bias", IDENTITY))
            for i in range(r.dec_layers):
                lo, lt = p + ("layers", i), f"{t}.transformer.decoder.layers.{i}"
                fused_qkv_rows(rows, lo + ("cross_attn",), f"{lt}.multihead_attn.in_proj_weight",
                           f"{lt}.multihead_attn.in_proj_bias")
                linear_rows(rows, lo + ("cross_attn", "out"), f"{lt}.multihead_attn.out_proj")
                linear_rows(rows, lo + ("linear1",), f"{lt}.linear1")
                linear_rows(rows, lo + ("linear2",), f"{lt}.linear2")
                norm_rows(rows, lo + ("norm2",), f"{lt}.norm2")
                norm_rows(rows, lo + ("norm3",), f"{lt}.norm3")
            norm_rows(rows, p + ("norm",), f"{t}.transformer.decoder.norm")
            rows.append(Row(p + ("fc", "kernel"), f"{t}.fc.W", DROP_LEAD))
            rows.append(Row(p + ("fc", "bias"), f"{t}.fc.b", DROP_LEAD))
        elif r.ml_encoder == "gap_linear":
            p, t = ("head", "ml_gap"), "decode_head.img_cls_head"
            rows.append(Row(p + ("fc1", "kernel"), f"{t}.1.conv.weight", CONV1X1))
            rows.append(Row(p + ("fc1", "bias"), f"{t}.1.conv.bias", IDENTITY))
            rows.append(Row(p + ("fc2", "kernel"), f"{t}.2.weight", CONV1X1))
            rows.append(Row(p + ("fc2", "bias"), f"{t}.2.bias", IDENTITY))
    return rows


# Official tensors that are not parameters of ours (recomputed constants). They are checked
# against our value where possible and never reported as unused.


BUFFERS = ("decode_head.img_cls_head.position_embedding.pe",)


def mapping_table(config: mlc.ConfigDict) -> list[Row]:
    """All rows for `config.model`: backbone then head."""
    return backbone_rows(config) + head_rows(config)


def official_names(config: mlc.ConfigDict) -> dict[tuple, str]:
    """Our parameter path -> official parameter name (used for the official wd groups)."""
    return {row.path: row.key for row in mapping_table(config)}


def is_class_dependent(path: tuple) -> bool:
    """Parameters replaced by `reset_head`: the whole decode head and OCE class tokens."""
    return path[0] == "head" or tuple(path) == ("backbone", "cls_emb")


def config_grid(config: mlc.ConfigDict) -> tuple[int, int]:
    b = config.model.vit
    return (b.img_size[0] // b.patch_size, b.img_size[1] // b.patch_size)


def official_buffers(config: mlc.ConfigDict) -> dict[str, np.ndarray]:
    """Official constant buffers of the configured variant, recomputed (the `tran_dec`
    head's sine `position_embedding.pe`)."""
    r = config.model.rankseg
    if r.enabled and r.ml_encoder == "tran_dec":
        from rankseg_jax.rankseg import encoders  # local: keeps table work light

        s, d = r.downsample, config.model.head.d_model
        pe = encoders.sine_position_grid(s, d).reshape(s, s, d).transpose(2, 0, 1)[None]
        return {BUFFERS[0]: np.ascontiguousarray(pe, np.float32)}
    return {}


def check_official_variant(state_dict: Mapping[str, np.ndarray], source: str) -> None:
    """Rejects official variants that have no counterpart here (with the reason)."""
    if "decode_head.mask_norm.gamma" in state_dict:
        raise CheckpointMismatch(
            f"{source} is a GT (oracle) head checkpoint (MaskTransformerRankSegGTHead, "
            "SelectedLayerNorm mask_norm.gamma/beta); it has no counterpart here. Use "
            "reset_head (--reset-head) to take its backbone only.")


def convert_state_dict(state_dict: Mapping[str, np.ndarray], config: mlc.ConfigDict,
                       expected: Mapping[tuple, tuple] | None = None,
                       source: str = "checkpoint", *, allow_partial: bool = False,
                       reset_head: bool = False, return_report: bool = False):
    """Converts an official (mmseg) state dict to {our path: array}, checking everything.

    expected: our path -> shape, to check shapes against (e.g. from the built model).
    Raises CheckpointMismatch listing every missing key, unused key and shape mismatch.
    With return_report, returns (params, Report).
    """
    sd = strip_ddp_prefix(state_dict)
    if not reset_head:
        check_official_variant(sd, source)
    params, report = map_state_dict(
        sd, mapping_table(config), expected=expected, pos_embed_grid=config_grid(config),
        class_dependent=is_class_dependent,
        buffers=official_buffers(config), allow_partial=allow_partial, reset_head=reset_head,
        head_prefixes=("decode_head.",), source=source, fmt="mmseg")
    return (params, report) if return_report else params


def official_key_order(config: mlc.ConfigDict) -> list[str]:
    """The configured variant's key order, as `state_dict()` of the official models lists it."""
    keys = list(dict.fromkeys(r.key for r in mapping_table(config)))
    r = config.model.rankseg
    if r.enabled and r.ml_encoder == "tran_enc":
        norm2 = ["decode_head.decoder_norm2.weight", "decode_head.decoder_norm2.bias"]
        keys = [k for k in keys if k not in norm2]
        at = keys.index("decode_head.decoder_norm.bias") + 1
        keys[at:at] = norm2
    if r.enabled and r.ml_encoder == "tran_dec":
        t = "decode_head.img_cls_head."
        moved = [t + "input_proj.weight", t + "input_proj.bias"]
        keys = [k for k in keys if k not in moved]
        at = keys.index(t + "transformer.decoder.norm.bias") + 1
        keys[at:at] = [BUFFERS[0]] + moved
    return keys


def export_state_dict(params: Mapping[tuple, np.ndarray],
                      config: mlc.ConfigDict) -> dict[str, np.ndarray]:
    """{our path: array} -> official state dict (insertion-ordered, float32 numpy).

    Fused `in_proj`/`qkv` tensors are re-assembled from our query/key/value rows; constant
    buffers (TranDec sine table) are recomputed. Raises CheckpointMismatch if a mapped
    parameter is absent.
    """
    values = export_rows(params, mapping_table(config))
    values.update(official_buffers(config))
    return {k: np.ascontiguousarray(values[k]) for k in official_key_order(config)}


def load_official_checkpoint(model: nnx.Module, path: str | pathlib.Path,
                             config: mlc.ConfigDict) -> None:
    """Loads an official mmseg-format `.pth` into `model` (built from `config`), strictly."""
    params = convert_state_dict(torch_io.read_pth(path), config, param_shapes(model),
                                source=str(path))
    load_into(model, params)
