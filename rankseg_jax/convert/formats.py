"""Source formats other than official mmseg: reading, detection and mapping tables.

Every format has an explicit table (our path, source key, transform kind) built from the
config, and the shared engine `engine.map_state_dict` does the checking. Formats:

  mmseg      official RankSeg / mmseg-0.17 `.pth` (`mmseg.py`): backbone + decode head.
  segmenter  original Segmenter (rstrudel/segmenter) `{'model': sd}` with `encoder.*` /
             `decoder.*`: backbone + Segmenter mask-transformer head. Encoder LN eps 1e-5.
  timm       timm ViT (`.pth`, `.bin`, `.safetensors`): backbone only.
  npz        Google ViT / AugReg `.npz` (optional `opt/target/` prefix): backbone only.
  detectron2 official Mask2Former(+RankSeg) checkpoints (`DetectionCheckpointer` `.pth`
             `{"model": sd}`, model zoo `.pkl`; `tables/mask2former.py`): the whole model,
             or the Swin backbone alone (`backbone.*` only: then backbone only).
  swin       the original Swin ImageNet release (`.pth` `{"model": sd}` without prefix, or
             its detectron2 `.pkl` conversion): Swin backbone only.

Readers are safe: `torch.load(weights_only=True)`, `safetensors`, `np.load(allow_pickle=False)`,
and a restricted unpickler for `.pkl` (`detectron2.py`: a global that could run code is
refused); torch is imported only for `.pth` / `.bin` (and `.pkl` holding torch tensors).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import ml_collections as mlc
import numpy as np

from rankseg_jax.convert import detectron2, engine, torch_io
from rankseg_jax.convert.engine import (
    CONV,
    HEADS_BIAS,
    HEADS_IN,
    HEADS_OUT,
    IDENTITY,
    CheckpointMismatch,
    Row,
)
from rankseg_jax.convert.tables import mask2former, mmseg

FORMATS = ("mmseg", "segmenter", "timm", "npz", "detectron2", "swin")
BACKBONE_ONLY = ("timm", "npz", "swin")
# The formats of each meta-architecture (`model.arch`).
ARCH_FORMATS = {"segmenter": ("mmseg", "segmenter", "timm", "npz"),
                "mask2former": ("detectron2", "swin")}
# A Swin block key of the detectron2 / Mask2Former (`backbone.`) and ImageNet (no prefix)
# layouts.
SWIN_BLOCK_KEY = "layers.0.blocks.0.attn.relative_position_bias_table"

# Source keys that are dropped by design (classifier heads of the pre-training task).
TIMM_IGNORED = ("head.weight", "head.bias", "pre_logits.fc.weight", "pre_logits.fc.bias")
SEGMENTER_IGNORED = ("encoder.head.weight", "encoder.head.bias")
NPZ_IGNORED = ("head/kernel", "head/bias", "pre_logits/kernel", "pre_logits/bias")
NPZ_PREFIX = "opt/target/"


# ------------------------------------------------------------------------------ tables

def timm_backbone_rows(config: mlc.ConfigDict, prefix: str = "") -> list[Row]:
    """timm `VisionTransformer` keys (also the rstrudel Segmenter encoder with `encoder.`)."""
    b = config.model.vit
    rows = [Row(("backbone", "cls_token"), f"{prefix}cls_token", IDENTITY),
            Row(("backbone", "pos_embed"), f"{prefix}pos_embed", IDENTITY),
            Row(("backbone", "patch_embed", "kernel"), f"{prefix}patch_embed.proj.weight", CONV),
            Row(("backbone", "patch_embed", "bias"), f"{prefix}patch_embed.proj.bias", IDENTITY)]
    for i in range(b.depth):
        ours, theirs = ("backbone", "layers", i), f"{prefix}blocks.{i}"
        engine.norm_rows(rows, ours + ("norm1",), f"{theirs}.norm1")
        engine.fused_qkv_rows(rows, ours + ("attn",), f"{theirs}.attn.qkv.weight",
                            f"{theirs}.attn.qkv.bias")
        engine.linear_rows(rows, ours + ("attn", "out"), f"{theirs}.attn.proj")
        engine.norm_rows(rows, ours + ("norm2",), f"{theirs}.norm2")
        engine.linear_rows(rows, ours + ("mlp", "fc1"), f"{theirs}.mlp.fc1")
        engine.linear_rows(rows, ours + ("mlp", "fc2"), f"{theirs}.mlp.fc2")
    if b.final_norm:
        engine.norm_rows(rows, ("backbone", "final_norm"), f"{prefix}norm")
    if b.oce:  # no source has it: listed so that it is reported (kept at init, zeros)
        rows.append(Row(("backbone", "cls_emb"), f"{prefix}cls_emb", IDENTITY))
    return rows


def segmenter_rows(config: mlc.ConfigDict) -> list[Row]:
    """rstrudel/segmenter `Segmenter` (ViT encoder + `MaskTransformer` decoder).

    Its decoder has the same module names as the mmseg port, under `decoder.` instead of
    `decode_head.`; only the baseline mask-transformer head (no OCE) exists there.
    """
    rows = timm_backbone_rows(config, "encoder.")
    rows += [Row(r.path, "decoder." + r.key[len("decode_head."):], r.kind)
             for r in mmseg.head_rows(config)]
    return rows


def _npz_norm(rows, ours, theirs):
    rows.append(Row(ours + ("scale",), theirs + "/scale", IDENTITY))
    rows.append(Row(ours + ("bias",), theirs + "/bias", IDENTITY))


def npz_rows(config: mlc.ConfigDict) -> list[Row]:
    """Google ViT / AugReg `.npz` keys (the official `load_weights_from_npz` layout); the
    tensors are already in Flax layout."""
    b = config.model.vit
    t = "Transformer/"
    rows = [Row(("backbone", "cls_token"), "cls", IDENTITY),
            Row(("backbone", "pos_embed"), t + "posembed_input/pos_embedding", IDENTITY),
            Row(("backbone", "patch_embed", "kernel"), "embedding/kernel", IDENTITY),
            Row(("backbone", "patch_embed", "bias"), "embedding/bias", IDENTITY)]
    for i in range(b.depth):
        ours, e = ("backbone", "layers", i), f"{t}encoderblock_{i}/"
        m = e + "MultiHeadDotProductAttention_1/"
        _npz_norm(rows, ours + ("norm1",), e + "LayerNorm_0")
        for name in ("query", "key", "value"):
            rows.append(Row(ours + ("attn", name, "kernel"), f"{m}{name}/kernel", HEADS_OUT))
            rows.append(Row(ours + ("attn", name, "bias"), f"{m}{name}/bias", HEADS_BIAS))
        rows.append(Row(ours + ("attn", "out", "kernel"), m + "out/kernel", HEADS_IN))
        rows.append(Row(ours + ("attn", "out", "bias"), m + "out/bias", IDENTITY))
        _npz_norm(rows, ours + ("norm2",), e + "LayerNorm_2")
        for j, name in enumerate(("fc1", "fc2")):
            rows.append(Row(ours + ("mlp", name, "kernel"), f"{e}MlpBlock_3/Dense_{j}/kernel",
                            IDENTITY))
            rows.append(Row(ours + ("mlp", name, "bias"), f"{e}MlpBlock_3/Dense_{j}/bias",
                            IDENTITY))
    if b.final_norm:
        _npz_norm(rows, ("backbone", "final_norm"), t + "encoder_norm")
    if b.oce:
        rows.append(Row(("backbone", "cls_emb"), "cls_emb", IDENTITY))
    return rows


def backbone_only_head_rows(config: mlc.ConfigDict, prefix: str) -> list[Row]:
    """Rows for the head params, under a prefix no backbone source has: reported missing."""
    return [Row(r.path, prefix + r.key, r.kind) for r in mmseg.head_rows(config)]


# ------------------------------------------------------------------------------ reading

def strip_prefixes(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops `module.` (DDP) / `model.` wrappers when every key has them."""
    sd = dict(sd)
    for prefix in ("module.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def read_torch(path: str | pathlib.Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """`.pth` / `.bin` -> (state dict, dropped top-level entries). weights_only=True."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading .pth/.bin checkpoints needs torch") from e
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        raise CheckpointMismatch(f"{path}: expected a dict, got {type(obj).__name__}")
    container = next((c for c in ("state_dict", "model", "module")
                      if isinstance(obj.get(c), Mapping)), None)
    sd = obj[container] if container else obj
    # e.g. 'optimizer', 'meta', 'epoch', 'lr_scheduler': not carried.
    extra = [f"top-level entry {k!r}" for k in obj if k != container] if container else []
    extra += [f"non-tensor entry {k!r}" for k, v in sd.items() if not hasattr(v, "detach")]
    return strip_prefixes(torch_io.tensors_to_numpy(sd)), extra


def read_safetensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        sd = load_file(str(path))
    except (TypeError, ValueError):  # bfloat16 has no numpy dtype: go through torch
        from safetensors.torch import load_file as load_torch

        sd = torch_io.tensors_to_numpy(load_torch(str(path)))
    return strip_prefixes(sd)


def read_npz(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    with np.load(str(path), allow_pickle=False) as f:
        sd = {k: np.asarray(f[k]) for k in f.files}
    if NPZ_PREFIX + "embedding/kernel" in sd:
        sd = {k[len(NPZ_PREFIX):] if k.startswith(NPZ_PREFIX) else k: v for k, v in sd.items()}
    return sd


def read_any(path: str | pathlib.Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Reads a checkpoint by extension. Returns (flat state dict, dropped container entries)."""
    suffix = pathlib.Path(path).suffix.lower()
    readers = {".npz": lambda: (read_npz(path), []),
               ".safetensors": lambda: (read_safetensors(path), [])}
    readers.update(dict.fromkeys((".pth", ".pt", ".bin", ".ckpt"), lambda: read_torch(path)))
    readers[".pkl"] = lambda: (detectron2.read_pkl(path), [])
    if suffix not in readers:
        raise CheckpointMismatch(f"{path}: unknown checkpoint extension {suffix!r} "
                                 "(.pth/.pt/.bin/.ckpt, .pkl, .safetensors, .npz)")
    if not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return readers[suffix]()
    except (CheckpointMismatch, detectron2.UnsafePickleError):
        raise
    except Exception as e:  # corrupt/truncated files: name the file, keep the cause
        raise CheckpointMismatch(f"{path}: cannot read as {suffix} checkpoint: {e}") from e


def detect_format(sd: Mapping[str, np.ndarray], path: str | pathlib.Path = "") -> str:
    """Source format from the keys (and extension). Raises if nothing fits."""
    keys = set(sd)
    if "embedding/kernel" in keys or str(path).lower().endswith(".npz"):
        return "npz"
    if any(k.startswith("sem_seg_head.") for k in keys) or "backbone." + SWIN_BLOCK_KEY in keys:
        return "detectron2"
    if SWIN_BLOCK_KEY in keys:
        return "swin"
    if any(k.startswith(("backbone.", "decode_head.")) for k in keys):
        return "mmseg"
    if "encoder.patch_embed.proj.weight" in keys:
        return "segmenter"
    if "patch_embed.proj.weight" in keys and "blocks.0.attn.qkv.weight" in keys:
        return "timm"
    raise CheckpointMismatch(f"{path}: cannot tell the checkpoint format from its keys "
                             f"(first keys: {sorted(keys)[:8]}); pass --format")


# ------------------------------------------------------------------------------ converting

def check_eps(config: mlc.ConfigDict, fmt: str, report: engine.Report) -> None:
    """The source's backbone LayerNorm eps must match model.vit.ln_eps."""
    want = 1e-5 if fmt == "segmenter" else 1e-6
    have = config.model.vit.ln_eps
    if abs(have - want) > 1e-12:
        msg = (f"{fmt} checkpoints were trained with backbone LayerNorm eps {want:g}, but "
               f"model.vit.ln_eps={have:g}")
        if fmt == "segmenter":
            raise CheckpointMismatch(msg + "; set model.vit.ln_eps=1e-5")
        report.warnings.append(msg)


def check_npz_heads(sd: Mapping[str, np.ndarray], config: mlc.ConfigDict, source: str) -> None:
    key = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"
    if key in sd and sd[key].ndim == 3 and sd[key].shape[1] != config.model.vit.num_heads:
        raise CheckpointMismatch(
            f"{source}: {sd[key].shape[1]} attention heads but model.vit.num_heads="
            f"{config.model.vit.num_heads}")


def is_backbone_only(fmt: str, sd: Mapping[str, np.ndarray]) -> bool:
    """Whether a source of format `fmt` with keys `sd` holds only a backbone (the head then
    keeps its fresh init): timm, npz, swin, and detectron2 files without `sem_seg_head.*`."""
    if fmt == "detectron2":
        return not any(k.startswith("sem_seg_head.") for k in sd)
    return fmt in BACKBONE_ONLY


def check_arch(config: mlc.ConfigDict, fmt: str, source: str) -> None:
    """A format fits one meta-architecture (ARCH_FORMATS); raises CheckpointMismatch."""
    arch = config.model.arch
    if fmt not in ARCH_FORMATS[arch]:
        other = next(a for a, f in ARCH_FORMATS.items() if fmt in f)
        raise CheckpointMismatch(
            f"{source}: {fmt} checkpoints hold a {other} model, but the config has "
            f"model.arch={arch!r} (formats of {arch}: {ARCH_FORMATS[arch]})")


def convert(sd: Mapping[str, np.ndarray], config: mlc.ConfigDict, fmt: str, *,
            expected: Mapping[tuple, tuple] | None, allow_partial: bool = False,
            reset_head: bool = False, source: str = "checkpoint"
            ) -> tuple[dict[tuple, np.ndarray], engine.Report]:
    """Converts a flat state dict of format `fmt` to {our path: array} plus a Report."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    check_arch(config, fmt, source)
    if fmt in ("detectron2", "swin"):
        if reset_head:
            raise CheckpointMismatch(f"{source}: reset_head is not supported for {fmt} "
                                     "checkpoints (load the backbone with allow_partial)")
        if fmt == "swin":
            return mask2former.convert_imagenet_swin(sd, config, expected,
                                                     allow_partial=allow_partial, source=source)
        return mask2former.convert_state_dict(sd, config, expected,
                                              allow_partial=allow_partial, source=source)
    if fmt == "mmseg":
        params, report = mmseg.convert_state_dict(
            sd, config, expected, source, allow_partial=allow_partial, reset_head=reset_head,
            return_report=True)
        check_eps(config, fmt, report)
        return params, report
    if fmt == "segmenter":
        rankseg_on = config.model.rankseg.enabled
        if (rankseg_on or config.model.vit.oce) and not reset_head:
            raise CheckpointMismatch(
                f"{source}: Segmenter checkpoints hold a baseline mask-transformer head, but "
                f"the config has model.rankseg.enabled={rankseg_on}, "
                f"model.vit.oce={config.model.vit.oce}; use reset_head (--reset-head) to "
                "take the backbone and keep a fresh head.")
        rows, ignored, head_prefixes = segmenter_rows(config), SEGMENTER_IGNORED, ("decoder.",)
    elif fmt == "timm":
        rows = timm_backbone_rows(config) + backbone_only_head_rows(config, "<no head>.")
        ignored, head_prefixes = TIMM_IGNORED, ()
    else:  # npz
        check_npz_heads(sd, config, source)
        rows = npz_rows(config) + backbone_only_head_rows(config, "<no head>/")
        ignored = NPZ_IGNORED + tuple(k for k in sd if k.startswith("opt/"))
        head_prefixes = ()
    report = engine.Report(source=source, format=fmt)
    check_eps(config, fmt, report)
    params, rep = engine.map_state_dict(
        sd, rows, expected=expected, pos_embed_grid=mmseg.config_grid(config),
        class_dependent=mmseg.is_class_dependent, ignored=ignored,
        allow_partial=allow_partial, reset_head=reset_head, head_prefixes=head_prefixes,
        source=source, fmt=fmt)
    rep.warnings = report.warnings + rep.warnings
    return params, rep
