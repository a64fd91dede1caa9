"""Weight conversion: external checkpoints -> our params, and ours -> official `.pth`.

Public API:
  load_pretrained(model, path, config, *, fmt='auto', allow_partial=False, reset_head=False)
      -> Report. Loads any supported source into `model` in place (used for
      `config.init.pretrained`).
  read_checkpoint(path, config, expected, ...) -> (params {our path: array}, Report).
  export_official(model, config, path, meta=None) -> state dict written as the official
      `.pth` of the arch: mmseg-0.17 (Segmenter) or detectron2 (Mask2Former).
  FORMATS, CheckpointMismatch, Report.
CLI: `python -m rankseg_jax.convert --config=... --src=... --out=...` (see __main__.py and
docs/conversion.md).
"""

from __future__ import annotations

import datetime
import hashlib
import pathlib

import ml_collections as mlc
from flax import nnx

from rankseg_jax.convert import engine, formats, torch_io
from rankseg_jax.convert.engine import CheckpointMismatch, Report  # noqa: F401
from rankseg_jax.convert.tables import mask2former, mmseg

FORMATS = formats.FORMATS


def file_sha256(path: str | pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checkpoint(path: str | pathlib.Path, config: mlc.ConfigDict,
                    expected: dict | None, *, fmt: str = "auto",
                    allow_partial: bool | None = False,
                    reset_head: bool = False) -> tuple[dict, Report]:
    """Reads and converts `path` for a model built from `config`.

    expected: our path -> shape (`engine.param_shapes(model)`). fmt: 'auto' detects from the
    extension and keys, else one of FORMATS. allow_partial=None allows missing parameters
    exactly for backbone-only sources (timm, npz, swin, a backbone-only detectron2 file), as
    backbone initialisation does.
    Returns ({our path: array}, Report).
    """
    sd, dropped = formats.read_any(path)
    detected = formats.detect_format(sd, path)
    if fmt == "auto":
        fmt = detected
    elif fmt not in FORMATS:
        raise ValueError(f"format={fmt!r} is not 'auto' or one of {FORMATS}")
    if allow_partial is None:
        allow_partial = formats.is_backbone_only(fmt, sd)
    params, report = formats.convert(sd, config, fmt, expected=expected,
                                     allow_partial=allow_partial, reset_head=reset_head,
                                     source=str(path))
    report.ignored = dropped + report.ignored
    if detected != fmt:
        report.warnings.append(f"format forced to {fmt!r}; keys look like {detected!r}")
    return params, report


def load_pretrained(model: nnx.Module, path: str | pathlib.Path, config: mlc.ConfigDict, *,
                    fmt: str = "auto", allow_partial: bool = False,
                    reset_head: bool = False) -> Report:
    """Loads a checkpoint of any supported format into `model` (built from `config`).

    Backbone-only sources (timm, npz, swin) need allow_partial=True: the head keeps its fresh init.
    reset_head=True keeps the model's fresh head even if the source has one (class-count or
    head-variant change). Raises CheckpointMismatch naming every offending key.
    """
    params, report = read_checkpoint(path, config, engine.param_shapes(model), fmt=fmt,
                                     allow_partial=allow_partial, reset_head=reset_head)
    engine.load_into(model, params)
    return report


def config_summary(config: mlc.ConfigDict) -> dict:
    """The model options that decide the parameter layout (recorded with converted weights)."""
    m = config.model
    head = {"head": m.head.to_dict()} if m.arch == "segmenter" else {
        "mask2former": m.mask2former.to_dict()}
    return {"arch": m.arch, "num_classes": m.num_classes, "backbone": m.backbone,
            m.backbone: m[m.backbone].to_dict(), **head, "rankseg": m.rankseg.to_dict()}


def export_official(model: nnx.Module, config: mlc.ConfigDict, path: str | pathlib.Path,
                    meta: dict | None = None) -> dict:
    """Writes `model` as an official checkpoint of its arch.

    Segmenter: mmseg-0.17 `.pth` `{'state_dict', 'meta'}`; Mask2Former: detectron2 `.pth`
    `{'model', 'meta'}` (what `DetectionCheckpointer` loads), buffers included. The state
    dict has exactly the official keys, shapes and order of the configured variant (loadable
    with strict=True). Returns the numpy state dict.
    """
    params = engine.model_params(model)
    info = {"exported_by": "rankseg_jax", "time": datetime.datetime.now().isoformat(),
            "config_summary": config_summary(config)}
    if config.model.arch == "mask2former":
        sd, container = mask2former.export_state_dict(params, config), "model"
    else:
        sd, container = mmseg.export_state_dict(params, config), "state_dict"
        info["mmseg_version"] = "0.17.0"
    info.update(meta or {})
    torch_io.write_pth(path, sd, info, container=container)
    return sd
