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

from rankseg_jax import param_paths

# Transform kinds: how the official tensor becomes ours.
IDENTITY = "identity"
LINEAR = "linear"  # [out, in] -> [in, out]
CONV = "conv"  # OIHW -> HWIO
CONV1X1 = "conv1x1"  # [out, in, 1, 1] -> [in, out]
DROP_LEAD = "drop_lead"  # [1, ...] -> [...]
QKV = ("q", "k", "v")  # row third of a fused [3d, d] weight or [3d] bias, then (weight) .T
# Google/Flax `.npz` layouts (official_spec.md §2.8): the tensors are already [in, out] but
# keep a separate head axis, which ours folds head-major (index = head * d_h + j).
HEADS_OUT = "heads_out"  # query/key/value kernel [D, H, d_h] -> [D, H*d_h]
HEADS_BIAS = "heads_bias"  # query/key/value bias [H, d_h] -> [H*d_h]
HEADS_IN = "heads_in"  # out kernel [H, d_h, D] -> [H*d_h, D]


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
    h, b, r = config.model.head, config.model.vit, config.model.rankseg
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
    if r.enabled:
        if r.ml_encoder == "tran_enc":
            _norm(rows, ("head", "decoder_norm2"), "decode_head.decoder_norm2")
            rows.append(Row(("head", "ml_fc", "kernel"), "decode_head.ml_fc.W", DROP_LEAD))
            rows.append(Row(("head", "ml_fc", "bias"), "decode_head.ml_fc.b", DROP_LEAD))
        elif r.ml_encoder == "tran_dec":
            p, t = ("head", "ml_decoder"), "decode_head.img_cls_head"
            rows.append(Row(p + ("input_proj", "kernel"), f"{t}.input_proj.weight", CONV1X1))
            rows.append(Row(p + ("input_proj", "bias"), f"{t}.input_proj.bias", IDENTITY))
            for i in range(r.dec_layers):
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
    if kind == HEADS_OUT:
        return value.reshape(value.shape[0], -1)
    if kind == HEADS_BIAS:
        return value.reshape(-1)
    if kind == HEADS_IN:
        return value.reshape(-1, value.shape[-1])
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
    return tensors_to_numpy(obj)


def tensors_to_numpy(obj: Mapping) -> dict[str, np.ndarray]:
    """{key: torch tensor} -> {key: numpy array}; half/bfloat16 become float32."""
    import torch

    out = {}
    for k, v in obj.items():
        if hasattr(v, "detach"):
            v = v.detach().cpu()
            if v.dtype in (torch.float16, torch.bfloat16):
                v = v.float()
            out[k] = v.numpy()
    return out


def _strip_prefix(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops a DDP `module.` prefix if every key has it."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


@dataclasses.dataclass
class Report:
    """What a conversion did: every key and parameter is accounted for."""

    source: str = "checkpoint"
    format: str = ""
    loaded: list = dataclasses.field(default_factory=list)  # our paths written
    missing: list = dataclasses.field(default_factory=list)  # "our/path <- key" absent
    unused: list = dataclasses.field(default_factory=list)  # source keys nothing maps
    ignored: list = dataclasses.field(default_factory=list)  # source keys dropped by design
    reset: list = dataclasses.field(default_factory=list)  # our paths kept at fresh init
    dropped: list = dataclasses.field(default_factory=list)  # source keys dropped (reset_head)
    resized: list = dataclasses.field(default_factory=list)  # pos-embed resamplings
    warnings: list = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        parts = [f"{self.source} [{self.format}]: loaded {len(self.loaded)} params"]
        for name in ("missing", "reset", "unused", "ignored", "dropped", "resized", "warnings"):
            items = getattr(self, name)
            if items:
                parts.append(f"{name} ({len(items)}): {items}")
        return "\n  ".join(parts)


def is_class_dependent(path: tuple) -> bool:
    """Parameters replaced by `reset_head`: the whole decode head and OCE class tokens."""
    return path[0] == "head" or tuple(path) == ("backbone", "cls_emb")


def config_grid(config: mlc.ConfigDict) -> tuple[int, int]:
    b = config.model.vit
    return (b.img_size[0] // b.patch_size, b.img_size[1] // b.patch_size)


def resample_pos_embed(value: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, tuple]:
    """[1, 1+g*g, D] (square source grid) -> [1, 1+gh*gw, D], torch-bicubic exact (§2.3).

    The cls entry is kept; the grid part is resized with PyTorch's bicubic (A=-0.75,
    align_corners=False, no antialias), computed in float64. Returns (table, source grid).
    """
    from rankseg_jax import resize  # local: keeps this module light

    n = value.shape[1] - 1
    g = int(round(n ** 0.5))
    if g * g != n:
        raise CheckpointMismatch(f"position embedding with {n} grid tokens is not square")
    d = value.shape[-1]
    src = value[0, 1:].reshape(g, g, d).astype(np.float64)
    mh, mw = resize.bicubic_matrix(g, grid[0]), resize.bicubic_matrix(g, grid[1])
    out = np.einsum("oh,hwd,pw->opd", mh, src, mw).reshape(1, grid[0] * grid[1], d)
    table = np.concatenate([value[:, :1].astype(np.float64), out], axis=1)
    return table.astype(value.dtype), (g, g)


def map_state_dict(state_dict: Mapping[str, np.ndarray], rows: list[Row], *,
                   expected: Mapping[tuple, tuple] | None, config: mlc.ConfigDict | None = None,
                   ignored: tuple = (), buffers: Mapping[str, np.ndarray] | None = None,
                   allow_partial: bool = False, reset_head: bool = False,
                   head_prefixes: tuple = (), source: str = "checkpoint",
                   fmt: str = "") -> tuple[dict[tuple, np.ndarray], Report]:
    """The conversion engine shared by every source format.

    rows: the explicit mapping table (our path, source key, transform kind).
    expected: our path -> shape (from the built model); checked for every converted tensor.
    config: gives the position-embedding grid (a differing source grid is resampled).
    ignored: source keys dropped by design (e.g. a classifier `head`), reported as such.
    buffers: source key -> our recomputed value (constants, e.g. the TranDec sine table);
      a mismatch becomes a warning, never an unused key.
    allow_partial: model params absent from the source keep their fresh value (reported)
      instead of being an error. Unused source keys are always an error.
    reset_head: keep the model's fresh head (`head.*`, OCE `backbone.cls_emb`); the source's
      keys under `head_prefixes` are dropped (reported).
    Raises CheckpointMismatch listing every problem. Returns ({our path: array}, Report).
    """
    sd = dict(state_dict)
    report = Report(source=source, format=fmt)
    out, bad_shape, class_shape, used = {}, [], [], set()
    grid = config_grid(config) if config is not None else None
    for row in rows:
        if reset_head and is_class_dependent(row.path):
            if row.path not in report.reset:
                report.reset.append(row.path)
            continue
        if row.key not in sd:
            report.missing.append(f"{param_paths.path_name(row.path)} <- {row.key}")
            continue
        used.add(row.key)
        value = to_ours(np.asarray(sd[row.key]), row.kind)
        want = None if expected is None else expected.get(row.path)
        if (row.path[-1] == "pos_embed" and want is not None and grid is not None
                and value.ndim == 3 and tuple(value.shape) != tuple(want)
                and value.shape[-1] == want[-1]):
            value, src_grid = resample_pos_embed(value, grid)
            report.resized.append(f"{row.key}: grid {src_grid} -> {grid} (torch bicubic)")
        if want is not None and tuple(value.shape) != tuple(want):
            msg = (f"{row.key} -> {param_paths.path_name(row.path)}: {tuple(value.shape)} vs model "
                   f"{tuple(want)}")
            (class_shape if is_class_dependent(row.path) else bad_shape).append(msg)
            continue
        out[row.path] = value
    report.loaded = [param_paths.path_name(p) for p in out]
    report.reset = [param_paths.path_name(p) for p in report.reset]
    buffers = dict(buffers or {})
    for key in sorted(sd):
        if key in used:
            continue
        if key in ignored:
            report.ignored.append(key)
        elif reset_head and head_prefixes and key.startswith(head_prefixes):
            report.dropped.append(key)
        elif key in buffers:
            ours, theirs = np.asarray(buffers[key]), np.asarray(sd[key])
            if ours.shape != theirs.shape or not np.allclose(ours, theirs, atol=1e-4):
                report.warnings.append(f"buffer {key} differs from the recomputed constant")
        else:
            report.unused.append(key)
    problems = []
    if report.missing and not allow_partial:
        problems.append(f"missing keys ({len(report.missing)}): {report.missing} "
                        "(allow_partial keeps those params at their fresh init)")
    if report.unused:
        problems.append(f"unused keys ({len(report.unused)}): {report.unused}")
    if class_shape:
        problems.append(f"head shape mismatches (class count / top-k / head variant differ; "
                        f"reset_head keeps the model's fresh head) ({len(class_shape)}): "
                        f"{class_shape}")
    if bad_shape:
        problems.append(f"shape mismatches ({len(bad_shape)}): {bad_shape}")
    if expected is not None:
        mapped = {r.path for r in rows}
        unmapped = sorted(param_paths.path_name(p) for p in expected if p not in mapped)
        if unmapped:
            problems.append(f"model parameters with no mapping row: {unmapped}")
    if problems:
        raise CheckpointMismatch(f"{source} does not fit model config: " + "; ".join(problems))
    if report.missing:
        report.warnings.append(f"{len(report.missing)} model params not in the source keep "
                               "their fresh init")
    return out, report


def official_buffers(config: mlc.ConfigDict) -> dict[str, np.ndarray]:
    """Official constant buffers of the configured variant, recomputed (spec §6.4)."""
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
    sd = _strip_prefix(state_dict)
    if not reset_head:
        check_official_variant(sd, source)
    params, report = map_state_dict(
        sd, mapping_table(config), expected=expected, config=config,
        buffers=official_buffers(config), allow_partial=allow_partial, reset_head=reset_head,
        head_prefixes=("decode_head.",), source=source, fmt="mmseg")
    return (params, report) if return_report else params


# ---------------------------------------------------------------- export (ours -> official)

def from_ours(value: np.ndarray, kind: str) -> np.ndarray:
    """Inverse of `to_ours` for the official kinds (fused q|k|v handled by the caller)."""
    if kind == IDENTITY:
        return value
    if kind == LINEAR:
        return value.T
    if kind == CONV:
        return value.transpose(3, 2, 0, 1)
    if kind == CONV1X1:
        return value.T[:, :, None, None]
    if kind == DROP_LEAD:
        return value[None]
    raise ValueError(f"no inverse for transform kind {kind!r}")


def official_key_order(config: mlc.ConfigDict) -> list[str]:
    """Official `state_dict()` key order of the configured variant (spec App. A/B, §6.4)."""
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


def export_rows(params: Mapping[tuple, np.ndarray], rows: list[Row]) -> dict[str, np.ndarray]:
    """{our path: array} -> {source key: float32 array} for every key of `rows` (inverse of
    `map_state_dict` for these rows), in the order the keys first appear in `rows`.

    Fused `qkv_*` rows are re-assembled into one [3d, d] weight / [3d] bias (q|k|v). Raises
    CheckpointMismatch if a mapped parameter is absent from `params`.
    """
    missing = [param_paths.path_name(r.path) for r in rows if r.path not in params]
    if missing:
        raise CheckpointMismatch(f"params lack mapped entries: {missing}")
    values: dict[str, np.ndarray | None] = {}
    fused: dict[str, dict[str, np.ndarray]] = {}
    for row in rows:
        value = np.asarray(params[row.path], np.float32)
        if row.kind.startswith("qkv_"):
            fused.setdefault(row.key, {})[row.kind[-1]] = value.T if value.ndim == 2 else value
            values.setdefault(row.key, None)
        else:
            values[row.key] = from_ours(value, row.kind)
    for key, parts in fused.items():
        values[key] = np.concatenate([parts[p] for p in QKV], axis=0)
    return {k: np.ascontiguousarray(v) for k, v in values.items()}


def write_pth(path: str | pathlib.Path, state_dict: Mapping[str, np.ndarray],
              meta: Mapping | None = None) -> None:
    """Writes an mmcv-style checkpoint `{'state_dict': OrderedDict, 'meta': {...}}`."""
    import collections

    import torch

    sd = collections.OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in
                                 state_dict.items())
    torch.save({"state_dict": sd, "meta": dict(meta or {})}, str(path))


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
        var.set_value(np.asarray(value, dtype=var.get_value().dtype))
    nnx.update(model, state)


def load_official_checkpoint(model: nnx.Module, path: str | pathlib.Path,
                             config: mlc.ConfigDict) -> None:
    """Loads an official mmseg-format `.pth` into `model` (built from `config`), strictly."""
    params = convert_state_dict(read_pth(path), config, param_shapes(model), source=str(path))
    load_into(model, params)


def model_params(model: nnx.Module) -> dict[tuple, np.ndarray]:
    """{our path: numpy array} of every nnx.Param of `model`."""
    return {tuple(path): np.asarray(v.get_value())
            for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
