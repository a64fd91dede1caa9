"""`validate(config)`: every check that can be done before compiling, in one place.

Called once by the entry points (train, eval, predict, convert, export) before anything is
built. Raises `ConfigError` naming the option at fault. Code that runs later trusts the
validated config and does not re-check it.
"""

from __future__ import annotations

import re

import ml_collections as mlc

from rankseg_jax import paths
from rankseg_jax.config import schema
from rankseg_jax.config.checks import choice, finite, positive_pair
from rankseg_jax.config.numbers import FLOAT_RANGES, INT_MINIMUMS, validate_numbers  # noqa: F401
from rankseg_jax.config.overrides import check_override_names, option_names  # noqa: F401
from rankseg_jax.config.schema import ConfigError


def validate_model(config: mlc.ConfigDict, backend: str | None = None) -> None:
    """The model, loss and test sections (no devices or files involved; `backend`, the
    platform compiled for, only matters to model.attention='cudnn': see `validate`).

    Options of the host that `model.arch` does not build (and of the backbone it does not
    use) are not checked: they are ignored.
    """
    m, r = config.model, config.model.rankseg
    choice(m.arch, schema.ARCHS, "model.arch")
    choice(m.backbone, schema.BACKBONES, "model.backbone")
    if m.backbone not in schema.ARCH_BACKBONES[m.arch]:
        raise ConfigError(f"model.backbone={m.backbone!r} cannot feed model.arch={m.arch!r}; "
                          f"use one of {schema.ARCH_BACKBONES[m.arch]}")
    choice(m.dtype, schema.DTYPES, "model.dtype")
    choice(m.remat_policy, schema.REMAT_POLICIES, "model.remat_policy")
    choice(m.attention, schema.ATTENTION_IMPLEMENTATIONS, "model.attention")
    if m.attention == "cudnn":
        _validate_cudnn_attention(config, backend)
    choice(r.temperature, schema.TEMPERATURES, "model.rankseg.temperature")
    choice(r.oracle, schema.ORACLES, "model.rankseg.oracle")
    choice(config.loss.img_type, schema.IMG_LOSSES, "loss.img_type")
    choice(config.loss.seg_average, schema.SEG_AVERAGES, "loss.seg_average")
    choice(config.test.mode, schema.TEST_MODES, "test.mode")
    choice(config.train.dropout_prng, schema.DROPOUT_PRNGS, "train.dropout_prng")
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
    positive_pair(config.data.crop_size, "data.crop_size")
    positive_pair(config.test.crop_size, "test.crop_size")
    positive_pair(config.test.stride, "test.stride")
    if config.test.mode == "slide" and any(
            s > c for s, c in zip(config.test.stride, config.test.crop_size, strict=True)):
        # mmseg's slide_inference asserts every pixel is covered; a stride above the window
        # leaves gaps.
        raise ConfigError(f"test.stride={tuple(config.test.stride)} must not exceed "
                          f"test.crop_size={tuple(config.test.crop_size)} (windows would leave "
                          "pixels uncovered)")
    if config.test.class_chunk < 1 or config.test.size_bucket < 1:
        raise ConfigError(f"test.class_chunk={config.test.class_chunk} and test.size_bucket="
                          f"{config.test.size_bucket} must be >= 1")
    if not config.test.scales or any(r <= 0 for r in config.test.scales):
        raise ConfigError(f"test.scales={tuple(config.test.scales)} must be non-empty and > 0")
    aug = tuple(config.test.aug_min_sizes)
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in aug):
        raise ConfigError(f"test.aug_min_sizes={aug} must be positive integers (short sides)")
    if not isinstance(config.test.aug_max_size, int) or config.test.aug_max_size < 1:
        raise ConfigError(f"test.aug_max_size={config.test.aug_max_size!r} must be a positive "
                          "integer")
    if aug and config.model.arch != "mask2former":
        raise ConfigError(f"test.aug_min_sizes={aug} is Mask2Former's test-time augmentation; "
                          f"model.arch={config.model.arch!r} uses test.scales and test.flip")


def _validate_vit(config: mlc.ConfigDict) -> None:
    b = config.model.vit
    if b.embed_dim % b.num_heads:
        raise ConfigError(f"model.vit.embed_dim={b.embed_dim} is not divisible by "
                          f"model.vit.num_heads={b.num_heads}")
    for name, size in (("model.vit.img_size", b.img_size),
                       ("data.crop_size", config.data.crop_size),
                       ("test.crop_size", config.test.crop_size)):
        positive_pair(size, name)
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
    finite(sw.mlp_ratio, "model.swin.mlp_ratio", low=0.0, low_open=True)
    finite(sw.drop_path_rate, "model.swin.drop_path_rate", low=0.0, high=0.999)


def _validate_segmenter(config: mlc.ConfigDict) -> None:
    b, h, r = config.model.vit, config.model.head, config.model.rankseg
    choice(r.ml_encoder, schema.ML_ENCODERS, "model.rankseg.ml_encoder")
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
        if r.oracle != "none" and not config.test.memory_light:
            raise ConfigError(f"model.rankseg.oracle={r.oracle!r} evaluates with the ground-truth "
                              "classes, which only test.memory_light=True supports")
        finite(r.dynamic_k_threshold, "model.rankseg.dynamic_k_threshold", low=0.0)
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
    finite(mf.dropout, "model.mask2former.dropout", low=0.0, high=0.999)
    for name in ("object_mask_threshold", "overlap_threshold"):
        finite(mf[name], f"model.mask2former.{name}", low=0.0, high=1.0)
    if not (mf.semantic_on or mf.panoptic_on):
        raise ConfigError("model.mask2former.semantic_on and panoptic_on are both False: "
                          "inference would produce nothing")
    # Mask2Former's test-time inference is the official one: whole image, one scale, no flip,
    # unless the official multi-scale(+flip) TTA is asked for with test.aug_min_sizes.
    t = config.test
    if t.mode != "whole" or tuple(t.scales) != (1.0,):
        raise ConfigError(f"test.mode={t.mode!r}, test.scales={tuple(t.scales)}: "
                          "model.arch='mask2former' infers whole images (set "
                          "test.mode='whole', scales=(1.0,); its multi-scale test is "
                          "test.aug_min_sizes)")
    if t.flip and not t.aug_min_sizes:
        raise ConfigError("test.flip=True: Mask2Former flips only inside its multi-scale "
                          "test-time augmentation; set test.aug_min_sizes too (official: "
                          "(320, 480, 640, 800, 960, 1120)) or test.flip=False")
    if t.aug_min_sizes and mf.panoptic_on:
        raise ConfigError("test.aug_min_sizes (test-time augmentation) is semantic only, as "
                          "in the official code (SemanticSegmentorWithTTA); set "
                          "model.mask2former.panoptic_on=False")
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
    finite(r.ml_dropout, "model.rankseg.ml_dropout", low=0.0, high=0.999)
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


def _validate_cudnn_attention(config: mlc.ConfigDict, backend: str | None) -> None:
    """model.attention="cudnn": what cuDNN flash attention (jax.nn.dot_product_attention's
    'cudnn' implementation) accepts, checked here rather than as a lowering error."""
    m = config.model
    if m.arch != "segmenter" or m.backbone != "vit":
        raise ConfigError(f"model.attention='cudnn' is wired for the Segmenter ViT (model.arch="
                          f"'segmenter', model.backbone='vit'), not model.arch={m.arch!r} with "
                          f"model.backbone={m.backbone!r}; use model.attention='xla'")
    if m.dtype != "bfloat16":
        raise ConfigError(f"model.attention='cudnn' needs model.dtype='bfloat16' (cuDNN flash "
                          f"attention takes bf16/fp16 inputs), not {m.dtype!r}")
    for name, dim, heads in (("model.vit", m.vit.embed_dim, m.vit.num_heads),
                             ("model.head", m.head.d_model, m.head.num_heads)):
        head_dim = dim // heads
        if head_dim % 8 or head_dim > 128:
            raise ConfigError(f"model.attention='cudnn' needs a head dim that is a multiple of "
                              f"8 and <= 128; {name} has {dim} / {heads} heads = {head_dim}")
    if backend is None:
        import jax

        backend = jax.default_backend()
    if backend != "gpu":
        raise ConfigError(f"model.attention='cudnn' needs a CUDA GPU; this run's backend is "
                          f"{backend!r}; use model.attention='xla'")


def validate_mask2former_training(config: mlc.ConfigDict) -> None:
    """Mask2Former's training targets and mappers: `data.max_targets` against the queries,
    `data.min_size_train`. The ranges of the criterion's weights and ratios, of
    `data.max_size_train` and `data.cat_max_ratio` are in `numbers.FLOAT_RANGES` /
    `INT_MINIMUMS`."""
    d = config.data
    num_queries = config.model.mask2former.num_queries
    if not 1 <= d.max_targets <= num_queries:
        raise ConfigError(f"data.max_targets={d.max_targets} must be in [1, "
                          f"model.mask2former.num_queries={num_queries}]: every target needs "
                          "its own query in the matching")
    sizes = tuple(d.min_size_train)
    if not sizes or any(int(v) < 1 for v in sizes):
        raise ConfigError(f"data.min_size_train={sizes} must be non-empty positive sizes")


def _validate_synthetic_panoptic(config: mlc.ConfigDict) -> None:
    s, k = config.data.synthetic, config.model.num_classes
    if not 1 <= s.num_things < k:
        raise ConfigError(f"data.synthetic.num_things={s.num_things} must be in [1, "
                          f"model.num_classes={k}): the rest of the classes are stuff")


def validate_optim(config: mlc.ConfigDict) -> None:
    """Optimizer and schedule options."""
    o = config.optim
    choice(o.name, schema.OPTIMIZERS, "optim.name")
    choice(o.schedule, schema.SCHEDULES, "optim.schedule")
    if o.warmup_steps < 0 or o.warmup_steps >= max(config.train.steps, 1) and o.warmup_steps:
        raise ConfigError(f"optim.warmup_steps={o.warmup_steps} must be in [0, train.steps)")
    for item in o.decay_mult:
        if len(item) != 2 or not isinstance(item[0], str):
            raise ConfigError(f"optim.decay_mult entry {item!r} is not a (substring, mult) pair")
    _validate_param_groups(config)


def _validate_param_groups(config: mlc.ConfigDict) -> None:
    """The path-rule parameter groups (`optim.ml_head_lr_mult`, `no_decay_paths`); the
    ranges of the multipliers and the clipping norm are in `numbers.FLOAT_RANGES`."""
    o = config.optim
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
    choice(d.format, schema.DATA_FORMATS, "data.format")
    choice(d.bad_example_policy, schema.BAD_EXAMPLE_POLICIES, "data.bad_example_policy")
    if d.name == "synthetic_panoptic":
        _validate_synthetic_panoptic(config)
    try:
        registry.dataset_info(config)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if config.model.arch == "mask2former":
        validate_mask2former_training(config)
    if d.format == "folder" and d.root and not paths.is_local(d.root):
        raise ConfigError(f"data.root={d.root!r}: data.format='folder' reads local files only; "
                          "prepare the dataset (python -m data.prepare, data.format="
                          "'array_record'), which TFDS reads from cloud storage too")
    if check_files and d.format in ("folder", "array_record"):
        if not d.root or not paths.check_usable(d.root, "data.root").exists():
            raise ConfigError(
                f"data.root={d.root!r} does not exist. Prepare the dataset first, e.g.\n"
                f"  python -m data.prepare --dataset={d.name} --src=/path/to/download "
                f"--out=data/{d.name}\nand set --config.data.root=data/{d.name} "
                "(see data/README.md for where to download it)")
    if check_files and d.format == "array_record":
        _check_prepared(d.root)


def _check_prepared(root: str) -> None:
    """data.root holds a complete prepared dataset (metadata.json and the TFDS folder it
    names), so training never ends in TFDS's long "dataset not found" listing."""
    from rankseg_jax.data import sources

    try:
        meta = sources.read_metadata(root)
    except (OSError, ValueError) as e:
        raise ConfigError(f"data.root={root!r}: {e}") from e
    folder = paths.as_path(root, "data.root") / meta["tfds"]["builder"] / meta["tfds"]["version"]
    if not (folder / "dataset_info.json").is_file():
        raise ConfigError(
            f"data.root={root!r}: the prepared dataset folder {folder} is missing or incomplete "
            "(deleted, or an older data.prepare failed while rebuilding it); run python -m "
            "data.prepare again")


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
    if t.profile_steps and not (
            len(t.profile_steps) == 2 and all(isinstance(v, int) for v in t.profile_steps)
            and 0 <= t.profile_steps[0] < t.profile_steps[1] <= t.steps):
        raise ConfigError(f"train.profile_steps={tuple(t.profile_steps)!r} must be () or "
                          f"(start, stop) with 0 <= start < stop <= train.steps={t.steps}")
    for name in ("resume", "pretrained"):
        path = config.init[name]
        if check_files and path and not paths.check_usable(path, f"init.{name}").exists():
            raise ConfigError(f"init.{name}={path!r} does not exist")


def validate(config: mlc.ConfigDict, *, num_devices: int | None = None,
             process_count: int | None = None, check_files: bool = True,
             backend: str | None = None) -> None:
    """Checks the whole config once, before compilation.

    num_devices / process_count: the run's devices and processes (default: jax's). With
    check_files=False, dataset roots and initial-weight paths are not looked up (for tools
    that only build models, e.g. conversion). backend: the jax platform the run compiles
    for ("cpu", "gpu", "tpu"; default jax.default_backend(); an ahead-of-time compile for
    another platform names it). Raises ConfigError naming the option.
    """
    validate_numbers(config)
    validate_model(config, backend)
    validate_optim(config)
    validate_data(config, check_files=check_files)
    if num_devices is None or process_count is None:
        import jax

        num_devices = num_devices or jax.device_count()
        process_count = process_count or jax.process_count()
    validate_train(config, num_devices, process_count, check_files=check_files)


