"""The conversion engine: explicit mapping tables between checkpoint keys and our params.

A table is a list of `Row(path, key, kind)`: our parameter path, the source key, and the
layout transform. `map_state_dict` applies a table to a state dict and accounts for every
key (loaded / missing / unused / ignored / recomputed buffer) and every shape;
`export_rows` is its inverse. The per-format tables live in `rankseg_jax/convert/tables/`;
nothing is matched by pattern.

Layouts: torch Linear weights are [out, in] (ours: kernel [in, out]); convs are OIHW (ours
HWIO); torch `in_proj_weight` / `qkv.weight` [3d, d] hold q|k|v row blocks (ours: separate
query/key/value kernels [d, d], head-major columns); Google `.npz` keeps a head axis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
from flax import nnx

from rankseg_jax import param_paths, resize

# Transform kinds: how the source tensor becomes ours.
IDENTITY = "identity"
LINEAR = "linear"  # [out, in] -> [in, out]
CONV = "conv"  # OIHW -> HWIO
CONV1X1 = "conv1x1"  # [out, in, 1, 1] -> [in, out]
DROP_LEAD = "drop_lead"  # [1, ...] -> [...]
QKV = ("q", "k", "v")  # row third of a fused [3d, d] weight or [3d] bias, then (weight) .T
# Google/Flax `.npz` layouts (read by the official `mmseg/models/backbones/helpers/vit.py`
# `load_weights_from_npz`): the tensors are already [in, out] but
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
    """The checkpoint does not fit the model. The message gives, per kind of problem, the
    count and the first keys (`key_summary`); `details` holds every key: {kind: [keys]}."""

    def __init__(self, message: str, details: dict[str, list] | None = None):
        super().__init__(message)
        self.details = details or {}


def key_summary(items: list, first: int = 10) -> str:
    """'a, b, c, ... and 290 more': the first `first` items and how many are not shown."""
    shown = ", ".join(str(x) for x in items[:first])
    return shown + (f", ... and {len(items) - first} more" if len(items) > first else "")


def linear_rows(rows: list[Row], ours: tuple, theirs: str, bias: bool = True) -> None:
    """Appends the rows of a torch Linear `theirs` ({weight [out,in], bias}) -> ours."""
    rows.append(Row(ours + ("kernel",), theirs + ".weight", LINEAR))
    if bias:
        rows.append(Row(ours + ("bias",), theirs + ".bias", IDENTITY))


def norm_rows(rows: list[Row], ours: tuple, theirs: str, scale: str = "weight",
              bias: str = "bias") -> None:
    """Appends the rows of a torch LayerNorm/GroupNorm `theirs` -> ours.{scale,bias}."""
    rows.append(Row(ours + ("scale",), f"{theirs}.{scale}", IDENTITY))
    rows.append(Row(ours + ("bias",), f"{theirs}.{bias}", IDENTITY))


def fused_qkv_rows(rows: list[Row], ours: tuple, weight_key: str, bias_key: str) -> None:
    """Appends the rows splitting a fused [3d, d] q|k|v weight (+ [3d] bias) into our
    query/key/value Linears."""
    for part in QKV:
        name = {"q": "query", "k": "key", "v": "value"}[part]
        rows.append(Row(ours + (name, "kernel"), weight_key, f"qkv_{part}"))
        rows.append(Row(ours + (name, "bias"), bias_key, f"qkv_{part}"))


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


def strip_ddp_prefix(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
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


def resample_pos_embed(value: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, tuple]:
    """[1, 1+g*g, D] (square source grid) -> [1, 1+gh*gw, D], torch-bicubic exact
    (as the official `VisionTransformer.resize_pos_embed` does when loading).

    The cls entry is kept; the grid part is resized with PyTorch's bicubic (A=-0.75,
    align_corners=False, no antialias), computed in float64. Returns (table, source grid).
    """
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
                   expected: Mapping[tuple, tuple] | None,
                   pos_embed_grid: tuple[int, int] | None = None,
                   class_dependent: Callable[[tuple], bool] = lambda path: False,
                   ignored: tuple = (), buffers: Mapping[str, np.ndarray] | None = None,
                   allow_partial: bool = False, reset_head: bool = False,
                   head_prefixes: tuple = (), source: str = "checkpoint",
                   fmt: str = "") -> tuple[dict[tuple, np.ndarray], Report]:
    """The conversion engine shared by every source format.

    rows: the explicit mapping table (our path, source key, transform kind).
    expected: our path -> shape (from the built model); checked for every converted tensor.
    pos_embed_grid: the model's ViT position-embedding grid; a `pos_embed` stored at another
      (square) grid is resampled to it.
    class_dependent: which of our paths depend on the class set (kept fresh by reset_head;
      their shape mismatches are reported as a class-count/head-variant difference).
    ignored: source keys dropped by design (e.g. a classifier `head`), reported as such.
    buffers: source key -> our recomputed value (constants, e.g. the TranDec sine table);
      a mismatch becomes a warning, never an unused key.
    allow_partial: model params absent from the source keep their fresh value (reported)
      instead of being an error. Unused source keys are always an error.
    reset_head: keep the model's fresh class-dependent params (`class_dependent`); the
      source's keys under `head_prefixes` are dropped (reported).
    Raises CheckpointMismatch listing every problem. Returns ({our path: array}, Report).
    """
    sd = dict(state_dict)
    report = Report(source=source, format=fmt)
    out, bad_shape, class_shape, used = {}, [], [], set()
    grid = pos_embed_grid
    for row in rows:
        if reset_head and class_dependent(row.path):
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
            (class_shape if class_dependent(row.path) else bad_shape).append(msg)
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
    problems, details = [], {}

    def problem(kind: str, items: list, note: str = "") -> None:
        if items:
            details[kind] = list(items)
            problems.append(f"  {kind} ({len(items)}){note}: {key_summary(items)}")

    if not allow_partial:
        problem("missing keys", report.missing,
                " (allow_partial keeps those params at their fresh init)")
    problem("unused keys", report.unused)
    problem("head shape mismatches", class_shape, " (class count / top-k / head variant "
            "differ; reset_head keeps the model's fresh head)")
    problem("shape mismatches", bad_shape)
    if expected is not None:
        mapped = {r.path for r in rows}
        problem("model parameters with no mapping row",
                sorted(param_paths.path_name(p) for p in expected if p not in mapped))
    if problems:
        raise CheckpointMismatch(f"{source} does not fit model config:\n" + "\n".join(problems),
                                 details)
    if report.missing:
        report.warnings.append(f"{len(report.missing)} model params not in the source keep "
                               "their fresh init")
    return out, report


def export_rows(params: Mapping[tuple, np.ndarray], rows: list[Row]) -> dict[str, np.ndarray]:
    """{our path: array} -> {source key: float32 array} for every key of `rows` (inverse of
    `map_state_dict` for these rows), in the order the keys first appear in `rows`.

    Fused `qkv_*` rows are re-assembled into one [3d, d] weight / [3d] bias (q|k|v). Raises
    CheckpointMismatch if a mapped parameter is absent from `params`.
    """
    missing = [param_paths.path_name(r.path) for r in rows if r.path not in params]
    if missing:
        raise CheckpointMismatch(f"params lack {len(missing)} mapped entries: "
                                 f"{key_summary(missing)}", {"missing": missing})
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


def model_params(model: nnx.Module) -> dict[tuple, np.ndarray]:
    """{our path: numpy array} of every nnx.Param of `model`."""
    return {tuple(path): np.asarray(v.get_value())
            for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
