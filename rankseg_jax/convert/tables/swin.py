"""Official Swin checkpoints <-> our `SwinTransformer` (`rankseg_jax/models/backbones/swin.py`).

Two official layouts share the module names of `mask2former/modeling/backbone/swin.py`:

  * detectron2 / Mask2Former (`DetectionCheckpointer` `.pth`, model zoo `.pkl`): keys
    `backbone.patch_embed.*`, `backbone.layers.*`, `backbone.norm{0..3}.*`, plus the
    `relative_position_index` buffers (their_prefix "backbone.");
  * the original Swin ImageNet release (`swin_large_patch4_window12_384_22k.pth`,
    `{"model": ...}`): the same names without prefix (their_prefix ""), no `norm{i}` (they
    keep their init, 1/0, as in the official fine-tuning: pass allow_partial=True), a final
    `norm.*` and a classifier `head.*` the backbone does not use (reported as ignored), and
    `attn_mask` buffers of the shifted blocks at the pre-training resolution.

`relative_position_index` and `attn_mask` are recomputed constants: each stored one is
checked against ours for its own size (a mismatch is a warning) and never reported unused.
A window-7 checkpoint loads into a window-12 model with `resize_window=True`: the bias tables
are resized like the official Swin fine-tuning loader (torch bicubic).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rankseg_jax import resize
from rankseg_jax.convert import engine
from rankseg_jax.convert.engine import CONV, IDENTITY, CheckpointMismatch, Row
from rankseg_jax.models.backbones import swin

TABLE = "attn.relative_position_bias_table"
INDEX = "attn.relative_position_index"
ATTN_MASK = "attn_mask"


def swin_rows(depths, *, our_prefix=("backbone",), their_prefix="backbone.",
              out_indices=None, patch_norm: bool = True) -> list[Row]:
    """Mapping rows (our path, official key, transform) of a Swin with `depths` per stage.

    our_prefix: path of the Swin inside our model; their_prefix: key prefix in the
    checkpoint ("backbone." for detectron2, "" for the ImageNet release). Rows follow the
    official `state_dict()` order (the buffers aside). out_indices: stages with an output
    norm `norm{i}` (None = all).
    """
    p, t = tuple(our_prefix), their_prefix
    rows = [Row(p + ("patch_embed", "proj", "kernel"), f"{t}patch_embed.proj.weight", CONV),
            Row(p + ("patch_embed", "proj", "bias"), f"{t}patch_embed.proj.bias", IDENTITY)]
    if patch_norm:
        engine.norm_rows(rows, p + ("patch_embed", "norm"), f"{t}patch_embed.norm")
    for i, depth in enumerate(depths):
        for j in range(depth):
            ours, theirs = p + ("layers", i, "blocks", j), f"{t}layers.{i}.blocks.{j}"
            engine.norm_rows(rows, ours + ("norm1",), f"{theirs}.norm1")
            rows.append(Row(ours + ("attn", "relative_position_bias_table"),
                            f"{theirs}.{TABLE}", IDENTITY))
            engine.fused_qkv_rows(rows, ours + ("attn",), f"{theirs}.attn.qkv.weight",
                                f"{theirs}.attn.qkv.bias")
            engine.linear_rows(rows, ours + ("attn", "out"), f"{theirs}.attn.proj")
            engine.norm_rows(rows, ours + ("norm2",), f"{theirs}.norm2")
            engine.linear_rows(rows, ours + ("mlp", "fc1"), f"{theirs}.mlp.fc1")
            engine.linear_rows(rows, ours + ("mlp", "fc2"), f"{theirs}.mlp.fc2")
        if i < len(depths) - 1:
            ours, theirs = p + ("layers", i, "downsample"), f"{t}layers.{i}.downsample"
            engine.linear_rows(rows, ours + ("reduction",), f"{theirs}.reduction", bias=False)
            engine.norm_rows(rows, ours + ("norm",), f"{theirs}.norm")
    for i in sorted(range(len(depths)) if out_indices is None else out_indices):
        engine.norm_rows(rows, p + (f"norm{i}",), f"{t}norm{i}")
    return rows


def swin_depths(state_dict: Mapping[str, np.ndarray], their_prefix="backbone.") -> tuple:
    """Blocks per stage, read from the `layers.{i}.blocks.{j}.norm1.weight` keys."""
    depths: dict[int, int] = {}
    head = f"{their_prefix}layers."
    for key in state_dict:
        if key.startswith(head) and key.endswith(".norm1.weight"):
            parts = key[len(head):].split(".")
            if len(parts) == 5 and parts[1] == "blocks":
                i, j = int(parts[0]), int(parts[2])
                depths[i] = max(depths.get(i, 0), j + 1)
    if sorted(depths) != list(range(len(depths))):
        raise CheckpointMismatch(f"no contiguous Swin stages under {head!r}: {sorted(depths)}")
    return tuple(depths[i] for i in range(len(depths)))


def resize_relative_position_bias(table: np.ndarray, new_window: int) -> np.ndarray:
    """[(2w-1)^2, H] -> [(2w'-1)^2, H] for window w' = new_window.

    As the official Swin fine-tuning loader (`microsoft/Swin-Transformer utils.py`
    `load_pretrained`): each head's (2w-1) x (2w-1) table is resized with torch
    `F.interpolate(mode="bicubic", align_corners=False)`; here with the torch-exact bicubic
    matrices of `rankseg_jax.resize` in float64. Identity (a copy) when the size is unchanged.
    """
    table = np.asarray(table)
    rows, heads = table.shape
    s_in, s_out = int(round(rows ** 0.5)), 2 * new_window - 1
    if s_in * s_in != rows:
        raise CheckpointMismatch(f"relative position bias table with {rows} rows is not square")
    if s_in == s_out:
        return table.copy()
    grid = table.T.reshape(heads, s_in, s_in).astype(np.float64)
    m = resize.bicubic_matrix(s_in, s_out)
    out = np.einsum("oh,chw,pw->cop", m, grid, m).reshape(heads, s_out * s_out).T
    return np.ascontiguousarray(out.astype(table.dtype))


def _square_root(n: int) -> int | None:
    r = int(round(n ** 0.5))
    return r if r * r == n else None


def swin_buffers(state_dict: Mapping[str, np.ndarray], window_size: int,
                 their_prefix="backbone.") -> dict[str, np.ndarray]:
    """Our recomputation of every official constant buffer present in `state_dict`.

    `*.relative_position_index` [N, N]: the official index for the stored window
    (ws = sqrt(N); ours for a non-square N, which then mismatches). `*.attn_mask`
    [nW, N, N] of the ImageNet release (shifted blocks at the square pre-training
    resolution R = ws * sqrt(nW), shift ws//2). Returns {key: array} for `map_state_dict`.
    """
    out = {}
    for key, value in state_dict.items():
        if not key.startswith(f"{their_prefix}layers."):
            continue
        shape = np.shape(value)
        if key.endswith(f".{INDEX}") and len(shape) == 2:
            ws = _square_root(shape[0]) or window_size
            out[key] = swin.relative_position_index(ws)
        elif key.endswith(f".{ATTN_MASK}") and len(shape) == 3:
            ws, per_side = _square_root(shape[1]), _square_root(shape[0])
            if ws and per_side and ws > 1:
                out[key] = swin.shift_window_mask(ws * per_side, ws * per_side, ws, ws // 2)
            else:  # no square grid to recompute it on: any value is flagged as different
                out[key] = np.full((0,), np.nan, np.float32)
    return out


def swin_ignored(state_dict: Mapping[str, np.ndarray], their_prefix="backbone.") -> tuple:
    """Keys of the ImageNet classifier the backbone does not use: final `norm.*`, `head.*`."""
    final = (f"{their_prefix}norm.weight", f"{their_prefix}norm.bias")
    return tuple(k for k in state_dict
                 if k in final or k.startswith(f"{their_prefix}head."))


def convert_swin_state_dict(state_dict: Mapping[str, np.ndarray],
                            expected: Mapping[tuple, tuple] | None, *, depths,
                            window_size: int, our_prefix=("backbone",),
                            their_prefix="backbone.", out_indices=None,
                            patch_norm: bool = True, allow_partial: bool = False,
                            resize_window: bool = False, source: str = "checkpoint"
                            ) -> tuple[dict[tuple, np.ndarray], engine.Report]:
    """Official Swin state dict -> ({our path: array}, Report), checking every key.

    Only keys under `their_prefix` are looked at (a full Mask2Former checkpoint's other
    parts belong to other tables). expected: our path -> shape (`engine.param_shapes`).
    resize_window: bias tables of another window size are resized to `window_size`
    (`resize_relative_position_bias`, reported under `resized`); otherwise they are shape
    mismatches. allow_partial: model params absent from the source keep their init (needed
    for the ImageNet release, which has no `norm{i}`). Raises CheckpointMismatch naming
    every missing, unused or mis-shaped key.
    """
    sd = {k: np.asarray(v) for k, v in state_dict.items() if k.startswith(their_prefix)}
    resized = []
    if resize_window:
        want_rows = (2 * window_size - 1) ** 2
        for key, value in sd.items():
            if key.endswith(f".{TABLE}") and value.ndim == 2 and value.shape[0] != want_rows:
                sd[key] = resize_relative_position_bias(value, window_size)
                resized.append(f"{key}: {value.shape[0]} -> {want_rows} rows (torch bicubic)")
    rows = swin_rows(depths, our_prefix=our_prefix, their_prefix=their_prefix,
                     out_indices=out_indices, patch_norm=patch_norm)
    params, report = engine.map_state_dict(
        sd, rows, expected=expected, ignored=swin_ignored(sd, their_prefix),
        buffers=swin_buffers(sd, window_size, their_prefix), allow_partial=allow_partial,
        source=source, fmt="swin")
    report.resized += resized
    return params, report


def export_swin_state_dict(params: Mapping[tuple, np.ndarray], *, depths, window_size: int,
                           our_prefix=("backbone",), their_prefix="backbone.",
                           out_indices=None, patch_norm: bool = True
                           ) -> dict[str, np.ndarray]:
    """{our path: array} -> the official (detectron2) Swin state dict, in official order.

    Keys are exactly those of the official `D2SwinTransformer.state_dict()` (with
    `their_prefix`), including the int64 `relative_position_index` buffers; `attn.qkv` is
    re-assembled from our query/key/value. Loadable with `load_state_dict(strict=True)`.
    """
    rows = swin_rows(depths, our_prefix=our_prefix, their_prefix=their_prefix,
                     out_indices=out_indices, patch_norm=patch_norm)
    out = {}
    for key, value in engine.export_rows(params, rows).items():
        out[key] = value
        if key.endswith(f".{TABLE}"):
            out[key[:-len(TABLE)] + INDEX] = swin.relative_position_index(window_size).copy()
    return out
