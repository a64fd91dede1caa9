"""Official RankSeg / mmseg-0.17 Segmenter checkpoints <-> our Flax parameters.

The mapping is an explicit table built from the config (depth, head blocks, variant): one row
per Flax parameter, naming the official key and the layout transform. Nothing is guessed by
pattern. Loading checks every shape and reports every missing and unused key.

Official layouts (official_spec.md §6): Linear weights are [out, in] (ours: kernel [in, out]);
the patch conv is OIHW (ours HWIO); torch `in_proj_weight` / `qkv.weight` [3d, d] hold q|k|v
row blocks (ours: separate query/key/value kernels [d, d]); `ml_fc.W` [1, K, d].
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping

import ml_collections as mlc
import numpy as np
from flax import nnx

# Transform kinds: how the official tensor becomes ours.
IDENTITY = "identity"
LINEAR = "linear"  # [out, in] -> [in, out]
CONV = "conv"  # OIHW -> HWIO
CONV1X1 = "conv1x1"  # [out, in, 1, 1] -> [in, out]
DROP_LEAD = "drop_lead"  # [1, ...] -> [...]
QKV = ("q", "k", "v")  # row third of a fused [3d, d] weight or [3d] bias, then (weight) .T


@dataclasses.dataclass(frozen=True)
class Row:
    """One mapped parameter: our path, the official key, and the transform kind."""

    path: tuple
    key: str
    kind: str


class CheckpointMismatch(ValueError):
    """The checkpoint does not fit the model; the message lists every offending key."""


def _linear(rows, ours, theirs, bias=True):
    rows.append(Row(ours + ("kernel",), theirs + ".weight", LINEAR))
    if bias:
        rows.append(Row(ours + ("bias",), theirs + ".bias", IDENTITY))


def _norm(rows, ours, theirs, scale="weight", bias="bias"):
    rows.append(Row(ours + ("scale",), f"{theirs}.{scale}", IDENTITY))
    rows.append(Row(ours + ("bias",), f"{theirs}.{bias}", IDENTITY))


def _fused_qkv(rows, ours, weight_key, bias_key):
    for part in QKV:
        name = {"q": "query", "k": "key", "v": "value"}[part]
        rows.append(Row(ours + (name, "kernel"), weight_key, f"qkv_{part}"))
        rows.append(Row(ours + (name, "bias"), bias_key, f"qkv_{part}"))


def backbone_rows(config: mlc.ConfigDict) -> list[Row]:
    """Mapping rows of the mmseg `VisionTransformer` (keys `backbone.*`)."""
    b = config.model.backbone
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
        _norm(rows, ours + ("norm1",), f"{theirs}.ln1")
        _fused_qkv(rows, ours + ("attn",), f"{theirs}.attn.attn.in_proj_weight",
                   f"{theirs}.attn.attn.in_proj_bias")
        _linear(rows, ours + ("attn", "out"), f"{theirs}.attn.attn.out_proj")
        _norm(rows, ours + ("norm2",), f"{theirs}.ln2")
        _linear(rows, ours + ("mlp", "fc1"), f"{theirs}.ffn.layers.0.0")
        _linear(rows, ours + ("mlp", "fc2"), f"{theirs}.ffn.layers.1")
    if b.final_norm:
        _norm(rows, ("backbone", "final_norm"), "backbone.ln1")
    return rows


def head_rows(config: mlc.ConfigDict) -> list[Row]:
    """Mapping rows of the decode head (keys `decode_head.*`) for the configured variant."""
    h, b = config.model.head, config.model.backbone
    rows = []
    if not b.oce:
        rows.append(Row(("head", "cls_emb"), "decode_head.cls_emb", IDENTITY))
    rows.append(Row(("head", "proj_patch"), "decode_head.proj_patch", IDENTITY))
    rows.append(Row(("head", "proj_classes"), "decode_head.proj_classes", IDENTITY))
    for j in range(h.n_layers):
        ours, theirs = ("head", "blocks", j), f"decode_head.blocks.{j}"
        _norm(rows, ours + ("norm1",), f"{theirs}.norm1")
        _norm(rows, ours + ("norm2",), f"{theirs}.norm2")
        _fused_qkv(rows, ours + ("attn",), f"{theirs}.attn.qkv.weight",
                   f"{theirs}.attn.qkv.bias")
        _linear(rows, ours + ("attn", "out"), f"{theirs}.attn.proj")
        _linear(rows, ours + ("mlp", "fc1"), f"{theirs}.mlp.fc1")
        _linear(rows, ours + ("mlp", "fc2"), f"{theirs}.mlp.fc2")
    _linear(rows, ("head", "proj_dec"), "decode_head.proj_dec")
    _norm(rows, ("head", "decoder_norm"), "decode_head.decoder_norm")
    _norm(rows, ("head", "mask_norm"), "decode_head.mask_norm")
    if h.type == "rankseg":
        if h.ml_encoder == "tran_enc":
            _norm(rows, ("head", "decoder_norm2"), "decode_head.decoder_norm2")
            rows.append(Row(("head", "ml_fc", "kernel"), "decode_head.ml_fc.W", DROP_LEAD))
            rows.append(Row(("head", "ml_fc", "bias"), "decode_head.ml_fc.b", DROP_LEAD))
        elif h.ml_encoder == "tran_dec":
            p, t = ("head", "ml_decoder"), "decode_head.img_cls_head"
            rows.append(Row(p + ("input_proj", "kernel"), f"{t}.input_proj.weight", CONV1X1))
            rows.append(Row(p + ("input_proj", "bias"), f"{t}.input_proj.bias", IDENTITY))
            for i in range(h.dec_layers):
                lo, lt = p + ("layers", i), f"{t}.transformer.decoder.layers.{i}"
                _fused_qkv(rows, lo + ("cross_attn",), f"{lt}.multihead_attn.in_proj_weight",
                           f"{lt}.multihead_attn.in_proj_bias")
                _linear(rows, lo + ("cross_attn", "out"), f"{lt}.multihead_attn.out_proj")
                _linear(rows, lo + ("linear1",), f"{lt}.linear1")
                _linear(rows, lo + ("linear2",), f"{lt}.linear2")
                _norm(rows, lo + ("norm2",), f"{lt}.norm2")
                _norm(rows, lo + ("norm3",), f"{lt}.norm3")
            _norm(rows, p + ("norm",), f"{t}.transformer.decoder.norm")
            rows.append(Row(p + ("fc", "kernel"), f"{t}.fc.W", DROP_LEAD))
            rows.append(Row(p + ("fc", "bias"), f"{t}.fc.b", DROP_LEAD))
        elif h.ml_encoder == "gap_linear":
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


def to_ours(value: np.ndarray, kind: str) -> np.ndarray:
    """Converts one official tensor to our layout according to `kind`."""
    if kind == IDENTITY:
        return value
    if kind == LINEAR:
        return value.T
    if kind == CONV:
        return value.transpose(2, 3, 1, 0)
    if kind == CONV1X1:
        return value[:, :, 0, 0].T
    if kind == DROP_LEAD:
        return value[0]
    if kind.startswith("qkv_"):
        third = value.shape[0] // 3
        part = QKV.index(kind[-1])
        sl = value[part * third:(part + 1) * third]
        return sl.T if sl.ndim == 2 else sl
    raise ValueError(f"unknown transform kind {kind!r}")


def read_pth(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Reads an mmcv checkpoint (`{'state_dict', 'meta'}`) or a bare state dict safely.

    Uses `torch.load(weights_only=True)` (no pickle code execution). Returns key -> float32
    (or original dtype for non-float) numpy arrays. torch is imported only here.
    """
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading .pth checkpoints needs torch: pip install torch") from e
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointMismatch(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, "detach")}


def _strip_prefix(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops a DDP `module.` prefix if every key has it."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], config: mlc.ConfigDict,
                       expected: Mapping[tuple, tuple] | None = None,
                       source: str = "checkpoint") -> dict[tuple, np.ndarray]:
    """Converts an official state dict to {our path: array}, checking everything.

    expected: our path -> shape, to check shapes against (e.g. from the built model).
    Raises CheckpointMismatch listing every missing key, unused key and shape mismatch.
    """
    sd = _strip_prefix(state_dict)
    rows = mapping_table(config)
    out, missing, bad_shape, used = {}, [], [], set()
    for row in rows:
        if row.key not in sd:
            missing.append(row.key)
            continue
        used.add(row.key)
        value = to_ours(np.asarray(sd[row.key]), row.kind)
        want = None if expected is None else expected.get(row.path)
        if want is not None and tuple(value.shape) != tuple(want):
            bad_shape.append(f"{row.key} -> {'/'.join(map(str, row.path))}: "
                             f"{tuple(value.shape)} vs model {tuple(want)}")
            continue
        out[row.path] = value
    unused = sorted(k for k in sd if k not in used and k not in BUFFERS)
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing}")
    if unused:
        problems.append(f"unused keys ({len(unused)}): {unused}")
    if bad_shape:
        problems.append(f"shape mismatches ({len(bad_shape)}): {bad_shape}")
    if expected is not None:
        unmapped = sorted("/".join(map(str, p)) for p in expected if p not in
                          {r.path for r in rows})
        if unmapped:
            problems.append(f"model parameters with no mapping row: {unmapped}")
    if problems:
        raise CheckpointMismatch(f"{source} does not fit model config: " + "; ".join(problems))
    return out


def param_shapes(model: nnx.Module) -> dict[tuple, tuple]:
    """Our path -> shape for every nnx.Param of `model`."""
    return {tuple(path): tuple(v.shape) for path, v in
            nnx.to_flat_state(nnx.state(model, nnx.Param))}


def load_into(model: nnx.Module, params: Mapping[tuple, np.ndarray]) -> None:
    """Writes {our path: array} into the model's params in place (dtypes kept)."""
    state = nnx.state(model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    for path, value in params.items():
        var = flat[path]
        var.set_value(np.asarray(value, dtype=var.get_value().dtype)) if hasattr(
            var, "set_value") else setattr(var, "value", np.asarray(value))
    nnx.update(model, state)


def load_official_checkpoint(model: nnx.Module, path: str | pathlib.Path,
                             config: mlc.ConfigDict) -> None:
    """Loads an official mmseg-format `.pth` into `model` (built from `config`), strictly."""
    params = convert_state_dict(read_pth(path), config, param_shapes(model), source=str(path))
    load_into(model, params)
