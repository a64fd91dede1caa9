"""`validate(config)`: every check that can be done before compiling, in one place.

Called once by the entry points (train, eval, predict, convert, export) before anything is
built. Raises `ConfigError` naming the option at fault. Code that runs later trusts the
validated config and does not re-check it.
"""

from __future__ import annotations

import math
import pathlib
import re

import ml_collections as mlc

from rankseg_jax.config import schema
from rankseg_jax.config.schema import ConfigError


def _choice(value, choices, name: str) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {choices}")


def _positive_pair(value, name: str) -> None:
    if len(tuple(value)) != 2 or any(int(v) < 1 for v in value):
        raise ConfigError(f"{name}={tuple(value)} must be two positive sizes (height, width)")


def _finite(value, name: str, *, low: float | None = None, high: float | None = None,
            low_open: bool = False) -> None:
    """value must be a finite number in [low, high] (or (low, high] with low_open)."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} must be a finite number")
    if low is not None and (value < low or (low_open and value == low)):
        bracket = "(" if low_open else "["
        raise ConfigError(f"{name}={value} must be in {bracket}{low}, "
                          f"{'inf' if high is None else high}]")
    if high is not None and value > high:
        raise ConfigError(f"{name}={value} must be <= {high}")


def validate_model(config: mlc.ConfigDict) -> None:
    """The model, loss and test sections (no devices or files involved).

    Options of the host that `model.arch` does not build (and of the backbone it does not
    use) are not checked: they are ignored.
    """
    m, r = config.model, config.model.rankseg
    _choice(m.arch, schema.ARCHS, "model.arch")
    _choice(m.backbone, schema.BACKBONES, "model.backbone")
    if m.backbone not in schema.ARCH_BACKBONES[m.arch]:
        raise ConfigError(f"model.backbone={m.backbone!r} cannot feed model.arch={m.arch!r}; "
                          f"use one of {schema.ARCH_BACKBONES[m.arch]}")
    _choice(m.dtype, schema.DTYPES, "model.dtype")
    _choice(r.temperature, schema.TEMPERATURES, "model.rankseg.temperature")
    _choice(r.oracle, schema.ORACLES, "model.rankseg.oracle")
    _choice(config.loss.img_type, schema.IMG_LOSSES, "loss.img_type")
    _choice(config.loss.seg_average, schema.SEG_AVERAGES, "loss.seg_average")
    _choice(config.test.mode, schema.TEST_MODES, "test.mode")
    if m.num_classes < 1:
        raise ConfigError(f"model.num_classes={m.num_classes} must be >= 1")
    if r.enabled and not 1 <= r.topk <= m.num_classes:
        raise ConfigError(
            f"model.rankseg.topk={r.topk} must be in [1, model.num_classes={m.num_classes}]")
    if m.backbone == "vit":
        _validate_vit(config)
    else:
        _validate_swin(config)
    if m.arch == "segmenter":
        _validate_segmenter(config)
    else:
        _validate_mask2former(config)
    _positive_pair(config.data.crop_size, "data.crop_size")
    _positive_pair(config.test.crop_size, "test.crop_size")
    _positive_pair(config.test.stride, "test.stride")
    if config.test.class_chunk < 1 or config.test.size_bucket < 1:
        raise ConfigError(f"test.class_chunk={config.test.class_chunk} and test.size_bucket="
                          f"{config.test.size_bucket} must be >= 1")
    if not config.test.scales or any(r <= 0 for r in config.test.scales):
        raise ConfigError(f"test.scales={tuple(config.test.scales)} must be non-empty and > 0")


def _validate_vit(config: mlc.ConfigDict) -> None:
    b = config.model.vit
    if b.embed_dim % b.num_heads:
        raise ConfigError(f"model.vit.embed_dim={b.embed_dim} is not divisible by "
                          f"model.vit.num_heads={b.num_heads}")
    for name, size in (("model.vit.img_size", b.img_size),
                       ("data.crop_size", config.data.crop_size),
                       ("test.crop_size", config.test.crop_size)):
        _positive_pair(size, name)
        if any(s % b.patch_size for s in size):
            raise ConfigError(
                f"{name}={tuple(size)} is not a multiple of the patch size {b.patch_size}")


def _validate_swin(config: mlc.ConfigDict) -> None:
    sw = config.model.swin
    depths, heads = tuple(sw.depths), tuple(sw.num_heads)
    if len(depths) != 4 or len(heads) != 4:
        raise ConfigError(f"model.swin.depths={depths} and model.swin.num_heads={heads} must "
                          "give 4 stages (res2..res5)")
    if any(d < 1 for d in depths) or any(h < 1 for h in heads):
        raise ConfigError(f"model.swin.depths={depths} and num_heads={heads} must be >= 1")
    for i, h in enumerate(heads):
        if (sw.embed_dim * 2 ** i) % h:
            raise ConfigError(f"model.swin: stage {i} width {sw.embed_dim * 2 ** i} "
                              f"(model.swin.embed_dim * 2**{i}) is not divisible by "
                              f"model.swin.num_heads[{i}]={h}")
    for name in ("embed_dim", "window_size", "patch_size"):
        if sw[name] < 1:
            raise ConfigError(f"model.swin.{name}={sw[name]} must be >= 1")
    _finite(sw.mlp_ratio, "model.swin.mlp_ratio", low=0.0, low_open=True)
    _finite(sw.drop_path_rate, "model.swin.drop_path_rate", low=0.0, high=0.999)


def _validate_segmenter(config: mlc.ConfigDict) -> None:
    b, h, r = config.model.vit, config.model.head, config.model.rankseg
    _choice(r.ml_encoder, schema.ML_ENCODERS, "model.rankseg.ml_encoder")
    if h.d_model % h.num_heads:
        raise ConfigError(f"model.head.d_model={h.d_model} is not divisible by "
                          f"model.head.num_heads={h.num_heads}")
    if b.oce and h.d_model != b.embed_dim:
        raise ConfigError(
            f"model.vit.oce needs model.head.d_model ({h.d_model}) == "
            f"model.vit.embed_dim ({b.embed_dim}): OCE tokens skip proj_dec")
    if r.enabled:
        if r.ml_encoder == "tran_enc" and h.n_layers < 2:
            raise ConfigError(
                f"model.head.n_layers={h.n_layers}: the tran_enc encoder uses block 0, so at "
                "least 2 blocks are needed")
        if r.ml_encoder != "tran_enc" and b.oce:
            raise ConfigError(
                f"model.rankseg.ml_encoder={r.ml_encoder!r} gathers the head's own class "
                "embeddings; it cannot be combined with backbone class tokens (model.vit.oce)")
        if r.ml_encoder == "tran_dec" and h.d_model % r.dec_num_heads:
            raise ConfigError(
                f"model.head.d_model={h.d_model} is not divisible by "
                f"model.rankseg.dec_num_heads={r.dec_num_heads}")
        _finite(r.dynamic_k_threshold, "model.rankseg.dynamic_k_threshold", low=0.0)
        if r.dynamic_k_threshold >= 1.0:
            raise ConfigError(f"model.rankseg.dynamic_k_threshold={r.dynamic_k_threshold} "
                              "must be in [0, 1)")
    elif r.oracle != "none":
        raise ConfigError(f"model.rankseg.oracle={r.oracle!r} needs model.rankseg.enabled")


def _validate_mask2former(config: mlc.ConfigDict) -> None:
    mf, r = config.model.mask2former, config.model.rankseg
    for name in ("hidden_dim", "num_queries", "nheads", "dim_feedforward", "dec_layers",
                 "enc_ffn", "enc_points", "conv_dim", "mask_dim", "size_divisibility"):
        if mf[name] < 1:
            raise ConfigError(f"model.mask2former.{name}={mf[name]} must be >= 1")
    if mf.enc_layers < 0:
        raise ConfigError(f"model.mask2former.enc_layers={mf.enc_layers} must be >= 0")
    for name in ("hidden_dim", "conv_dim"):
        if mf[name] % mf.nheads:
            raise ConfigError(f"model.mask2former.{name}={mf[name]} is not divisible by "
                              f"model.mask2former.nheads={mf.nheads}")
    if mf.conv_dim % 32:
        raise ConfigError(f"model.mask2former.conv_dim={mf.conv_dim} must be a multiple of "
                          "32 (the pixel decoder's GroupNorm(32, conv_dim))")
    _finite(mf.dropout, "model.mask2former.dropout", low=0.0, high=0.999)
    for name in ("object_mask_threshold", "overlap_threshold"):
        _finite(mf[name], f"model.mask2former.{name}", low=0.0, high=1.0)
    if not (mf.semantic_on or mf.panoptic_on):
        raise ConfigError("model.mask2former.semantic_on and panoptic_on are both False: "
                          "inference would produce nothing")
    if not r.enabled:
        return
    num_layers = mf.dec_layers - 1
    if not 0 <= r.ml_read_layer < num_layers:
        raise ConfigError(
            f"model.rankseg.ml_read_layer={r.ml_read_layer} must index one of the "
            f"{num_layers} decoder layers (model.mask2former.dec_layers={mf.dec_layers} "
            "predictions = layers + 1)")
    if mf.conv_dim != mf.hidden_dim:
        raise ConfigError(
            f"model.mask2former.conv_dim={mf.conv_dim} != hidden_dim={mf.hidden_dim}: the "
            "official multi-label head is sized by CONVS_DIM but reads HIDDEN_DIM-wide "
            "decoder queries, so RankSeg needs them equal")
    if r.ml_hidden_dim < 64 or r.ml_hidden_dim % 64:
        raise ConfigError(f"model.rankseg.ml_hidden_dim={r.ml_hidden_dim} must be a positive "
                          "multiple of 64 (the head has ml_hidden_dim // 64 heads of width 64)")
    _finite(r.ml_dropout, "model.rankseg.ml_dropout", low=0.0, high=0.999)
    # Options of the Segmenter host's RankSeg that have no Mask2Former counterpart here.
    if r.oracle != "none":
        raise ConfigError(f"model.rankseg.oracle={r.oracle!r} is not implemented for "
                          "model.arch='mask2former' (use model.mask2former.gt_oracle for the "
                          "official -gt oracle)")
    if r.dynamic_k_threshold != 0.0:
        raise ConfigError(f"model.rankseg.dynamic_k_threshold={r.dynamic_k_threshold} is not "
                          "implemented for model.arch='mask2former'")
    if r.ml_encoder != "tran_enc":
        raise ConfigError(f"model.rankseg.ml_encoder={r.ml_encoder!r}: Mask2Former's "
                          "multi-label head is a transformer over [queries; class tokens] "
                          "(tran_enc); the other encoders read a pixel grid")
    if config.loss.img_type != "asl":
        raise ConfigError(f"loss.img_type={config.loss.img_type!r}: Mask2Former's RankSeg "
                          "multi-label loss is the official AsymmetricLoss ('asl')")


def validate_mask2former_training(config: mlc.ConfigDict) -> None:
    """Mask2Former's criterion (`loss.mask2former`), training mappers (`data.min_size_train`,
    `max_size_train`, `max_targets`, `cat_max_ratio`) and synthetic panoptic data."""
    lm, d = config.loss.mask2former, config.data
    for name in ("class_weight", "mask_weight", "dice_weight"):
        _finite(lm[name], f"loss.mask2former.{name}", low=0.0)
    _finite(lm.no_object_weight, "loss.mask2former.no_object_weight", low=0.0, low_open=True)
    if lm.num_points < 1:
        raise ConfigError(f"loss.mask2former.num_points={lm.num_points} must be >= 1")
    _finite(lm.oversample_ratio, "loss.mask2former.oversample_ratio", low=1.0)
    _finite(lm.importance_ratio, "loss.mask2former.importance_ratio", low=0.0, high=1.0)
    num_queries = config.model.mask2former.num_queries
    if not 1 <= d.max_targets <= num_queries:
        raise ConfigError(f"data.max_targets={d.max_targets} must be in [1, "
                          f"model.mask2former.num_queries={num_queries}]: every target needs "
                          "its own query in the matching")
    sizes = tuple(d.min_size_train)
    if not sizes or any(int(v) < 1 for v in sizes):
        raise ConfigError(f"data.min_size_train={sizes} must be non-empty positive sizes")
    if d.max_size_train < 1:
        raise ConfigError(f"data.max_size_train={d.max_size_train} must be >= 1")
    _finite(d.cat_max_ratio, "data.cat_max_ratio", low=0.0, high=1.0, low_open=True)
    _finite(d.flip_prob, "data.flip_prob", low=0.0, high=1.0)


def _validate_synthetic_panoptic(config: mlc.ConfigDict) -> None:
    s, k = config.data.synthetic, config.model.num_classes
    if not 1 <= s.num_things < k:
        raise ConfigError(f"data.synthetic.num_things={s.num_things} must be in [1, "
                          f"model.num_classes={k}): the rest of the classes are stuff")
    if s.max_instances < 1:
        raise ConfigError(f"data.synthetic.max_instances={s.max_instances} must be >= 1")


def validate_optim(config: mlc.ConfigDict) -> None:
    """Optimizer and schedule options."""
    o = config.optim
    _choice(o.name, schema.OPTIMIZERS, "optim.name")
    _choice(o.schedule, schema.SCHEDULES, "optim.schedule")
    _finite(o.lr, "optim.lr", low=0.0, low_open=True)
    if o.warmup_steps < 0 or o.warmup_steps >= max(config.train.steps, 1) and o.warmup_steps:
        raise ConfigError(f"optim.warmup_steps={o.warmup_steps} must be in [0, train.steps)")
    if o.warmup_steps:  # mmcv LrUpdaterHook asserts 0 < warmup_ratio <= 1
        _finite(o.warmup_ratio, "optim.warmup_ratio", low=0.0, high=1.0, low_open=True)
    for item in o.decay_mult:
        if len(item) != 2 or not isinstance(item[0], str):
            raise ConfigError(f"optim.decay_mult entry {item!r} is not a (substring, mult) pair")
    _validate_param_groups(config)


def _validate_param_groups(config: mlc.ConfigDict) -> None:
    """The path-rule parameter groups (`optim.backbone_lr_mult`, `ml_head_lr_mult`,
    `no_decay_paths`) and the clipping norm."""
    o = config.optim
    _finite(o.clip_grad_norm, "optim.clip_grad_norm", low=0.0)
    for name in ("backbone_lr_mult", "ml_head_lr_mult"):
        _finite(o[name], f"optim.{name}", low=0.0)
    if o.ml_head_lr_mult != 1.0 and not (config.model.arch == "mask2former"
                                         and config.model.rankseg.enabled):
        raise ConfigError(f"optim.ml_head_lr_mult={o.ml_head_lr_mult} scales Mask2Former's "
                          "RankSeg `ml_head.*` parameters, which this model does not have")
    for pattern in o.no_decay_paths:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as e:
            raise ConfigError(f"optim.no_decay_paths entry {pattern!r} is not a regular "
                              f"expression: {e}") from e


def validate_data(config: mlc.ConfigDict, *, check_files: bool = True) -> None:
    """Dataset name, format and label conventions against the registry; the root exists."""
    from rankseg_jax.data import registry  # light: no jax, no grain

    d = config.data
    _choice(d.format, schema.DATA_FORMATS, "data.format")
    _choice(d.bad_example_policy, schema.BAD_EXAMPLE_POLICIES, "data.bad_example_policy")
    if d.name == "synthetic_panoptic":
        _validate_synthetic_panoptic(config)
    try:
        registry.dataset_info(config)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if config.model.arch == "mask2former":
        validate_mask2former_training(config)
    if check_files and d.format in ("folder", "array_record"):
        panoptic = config.model.arch == "mask2former" and config.model.mask2former.panoptic_on
        if panoptic and (not d.root or not pathlib.Path(d.root).exists()):
            raise ConfigError(
                f"data.root={d.root!r} does not exist: model.mask2former.panoptic_on needs "
                "ADE20K panoptic annotations (segment PNGs + segments JSON), and their "
                "preparation is not implemented yet. Use the `:smoke` variant (synthetic "
                "data) or set model.mask2former.panoptic_on=False for semantic data.")
        if not d.root or not pathlib.Path(d.root).exists():
            raise ConfigError(
                f"data.root={d.root!r} does not exist. Prepare the dataset first, e.g.\n"
                f"  python -m data.prepare --dataset={d.name} --src=/path/to/download "
                f"--out=data/{d.name}\nand set --config.data.root=data/{d.name} "
                "(see data/README.md for where to download it)")


def validate_train(config: mlc.ConfigDict, num_devices: int, process_count: int, *,
                   check_files: bool = True) -> None:
    """Batch sizes against the mesh and processes; intervals; initial-weight paths."""
    from rankseg_jax import sharding  # imports jax; only needed for the mesh arithmetic

    try:
        mesh_sizes = sharding.mesh_shape(config, num_devices)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    dp = mesh_sizes[0] * mesh_sizes[1]
    t = config.train
    if t.batch_size < 1 or t.grad_accum < 1:
        raise ConfigError("train.batch_size and train.grad_accum must be >= 1")
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by "
                          f"train.grad_accum={t.grad_accum}")
    if t.batch_size % dp:
        raise ConfigError(
            f"train.batch_size={t.batch_size} is not divisible by the data-parallel size "
            f"mesh.data*mesh.fsdp={dp}")
    if (t.batch_size // t.grad_accum) % dp:
        raise ConfigError(
            f"train.batch_size/train.grad_accum={t.batch_size // t.grad_accum} (the micro-batch) "
            f"is not divisible by the data-parallel size mesh.data*mesh.fsdp={dp}")
    if t.batch_size % process_count:
        raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by the process "
                          f"count {process_count}")
    for name in ("steps", "log_every", "ckpt_every"):
        if t[name] < 1:
            raise ConfigError(f"train.{name}={t[name]} must be >= 1")
    if t.eval_every < 0:
        raise ConfigError(f"train.eval_every={t.eval_every} must be >= 0 (0 = never)")
    for name in ("resume", "pretrained"):
        path = config.init[name]
        if check_files and path and not pathlib.Path(path).exists():
            raise ConfigError(f"init.{name}={path!r} does not exist")


def validate(config: mlc.ConfigDict, *, num_devices: int | None = None,
             process_count: int | None = None, check_files: bool = True) -> None:
    """Checks the whole config once, before compilation.

    num_devices / process_count: the run's devices and processes (default: jax's). With
    check_files=False, dataset roots and initial-weight paths are not looked up (for tools
    that only build models, e.g. conversion). Raises ConfigError naming the option.
    """
    validate_model(config)
    validate_optim(config)
    validate_data(config, check_files=check_files)
    if num_devices is None or process_count is None:
        import jax

        num_devices = num_devices or jax.device_count()
        process_count = process_count or jax.process_count()
    validate_train(config, num_devices, process_count, check_files=check_files)
