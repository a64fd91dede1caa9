"""`validate(config)`: every check that can be done before compiling, in one place.

Called once by the entry points (train, eval, predict, convert, export) before anything is
built. Raises `ConfigError` naming the option at fault. Code that runs later trusts the
validated config and does not re-check it.
"""

from __future__ import annotations

import difflib
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
    # A command-line `--config.data.crop_size=64` gives an int or a 1-tuple, not a pair.
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
        raise ConfigError(f"{name}={value!r} must be two positive integer sizes (height, "
                          f"width), e.g. --config.{name}='(512, 512)'")


def _finite(value, name: str, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False) -> None:
    """value must be a finite number in [low, high]; `low_open`/`high_open` exclude the end."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} must be a finite number")
    too_low = low is not None and (value < low or (low_open and value == low))
    too_high = high is not None and (value > high or (high_open and value == high))
    if too_low or too_high:
        raise ConfigError(f"{name}={value} must be in {'(' if low_open else '['}"
                          f"{'-inf' if low is None else low}, {'inf' if high is None else high}"
                          f"{')' if high_open or high is None else ']'}")


def _option(config: mlc.ConfigDict, name: str):
    node = config
    for part in name.split("."):
        node = node[part]
    return node


_INF = None
# Every float option of the schema with its range: (name, low, high, low_open, high_open).
# NaN and +-inf are refused everywhere (a NaN learning rate or weight trains a NaN model).
FLOAT_RANGES = (
    ("model.vit.mlp_ratio", 0.0, _INF, True, False),
    ("model.vit.drop_rate", 0.0, 1.0, False, True),
    ("model.vit.attn_drop_rate", 0.0, 1.0, False, True),
    ("model.vit.drop_path_rate", 0.0, 1.0, False, True),
    ("model.vit.ln_eps", 0.0, _INF, True, False),
    ("model.head.dropout", 0.0, 1.0, False, True),
    ("model.head.drop_path_rate", 0.0, 1.0, False, True),
    ("model.head.ln_eps", 0.0, _INF, True, False),
    ("model.rankseg.dynamic_k_threshold", 0.0, 1.0, False, True),
    ("loss.seg_weight", 0.0, _INF, False, False),
    ("loss.img_weight", 0.0, _INF, False, False),
    ("loss.asl_gamma_neg", 0.0, _INF, False, False),
    ("loss.asl_gamma_pos", 0.0, _INF, False, False),
    ("loss.asl_clip", 0.0, 1.0, False, True),
    ("loss.asl_eps", 0.0, 1.0, True, True),
    ("data.cat_max_ratio", 0.0, 1.0, True, False),
    ("data.flip_prob", 0.0, 1.0, False, False),
    ("optim.lr", 0.0, _INF, True, False),
    ("optim.momentum", 0.0, 1.0, False, True),
    ("optim.weight_decay", 0.0, _INF, False, False),
    ("optim.power", 0.0, _INF, False, False),
    ("optim.min_lr", 0.0, _INF, False, False),
    ("optim.warmup_ratio", 0.0, 1.0, True, False),  # mmcv: 0 < warmup_ratio <= 1
    ("optim.clip_grad_norm", 0.0, _INF, False, False),  # 0 disables
    ("optim.b1", 0.0, 1.0, False, True),
    ("optim.b2", 0.0, 1.0, False, True),
    ("optim.eps", 0.0, _INF, True, False),
)
# Integer options that must be >= the given minimum.
INT_MINIMUMS = (
    ("model.vit.embed_dim", 1), ("model.vit.depth", 1), ("model.vit.num_heads", 1),
    ("model.vit.patch_size", 1), ("model.head.d_model", 1), ("model.head.num_heads", 1),
    ("model.head.d_ff", 1), ("model.head.n_layers", 1), ("model.rankseg.downsample", 1),
    ("model.rankseg.dec_num_heads", 1), ("model.rankseg.dec_d_ff", 1),
    ("model.rankseg.dec_layers", 1), ("data.num_workers", 0), ("data.prefetch", 0),
    ("data.read_threads", 0), ("data.synthetic.num_train", 1), ("data.synthetic.num_val", 1),
    ("data.synthetic.num_scenes", 1), ("data.synthetic.min_classes", 1),
    ("test.max_images", 0), ("train.keep_checkpoints", 1), ("train.check_finite_every", 0),
    ("mesh.fsdp_min_size", 0),
)


def validate_numbers(config: mlc.ConfigDict) -> None:
    """Every float option finite and in its range (`FLOAT_RANGES`), integer options above
    their minimum (`INT_MINIMUMS`), and the numeric tuples (mean, std, ratio_range, scales,
    decay multipliers)."""
    for name, low, high, low_open, high_open in FLOAT_RANGES:
        _finite(_option(config, name), name, low=low, high=high, low_open=low_open,
                high_open=high_open)
    for name, minimum in INT_MINIMUMS:
        value = _option(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")
    d = config.data
    for name, values in (("data.mean", d.mean), ("data.std", d.std)):
        if len(tuple(values)) != 3:
            raise ConfigError(f"{name}={tuple(values)} must have 3 values (R, G, B)")
    for i, v in enumerate(d.mean):
        _finite(v, f"data.mean[{i}]")
    for i, v in enumerate(d.std):
        _finite(v, f"data.std[{i}]", low=0.0, low_open=True)
    if len(tuple(d.ratio_range)) != 2:
        raise ConfigError(f"data.ratio_range={tuple(d.ratio_range)} must be (low, high)")
    for i, v in enumerate(d.ratio_range):
        _finite(v, f"data.ratio_range[{i}]", low=0.0, low_open=True)
    if d.ratio_range[0] > d.ratio_range[1]:
        raise ConfigError(f"data.ratio_range={tuple(d.ratio_range)} must have low <= high")
    for name in ("data.train_scale", "data.test_scale", "data.synthetic.image_size"):
        _positive_pair(_option(config, name), name)
    s = d.synthetic
    if s.min_classes > s.max_classes:
        raise ConfigError(f"data.synthetic.min_classes={s.min_classes} must be <= "
                          f"data.synthetic.max_classes={s.max_classes}")
    if not config.test.scales:
        raise ConfigError("test.scales must not be empty")
    for i, v in enumerate(config.test.scales):
        _finite(v, f"test.scales[{i}]", low=0.0, low_open=True)
    for item in config.optim.decay_mult:
        if len(item) != 2 or not isinstance(item[0], str):
            raise ConfigError(f"optim.decay_mult entry {item!r} is not a (substring, mult) pair")
        _finite(item[1], f"optim.decay_mult[{item[0]!r}]", low=0.0)


def validate_model(config: mlc.ConfigDict) -> None:
    """The model, loss and test sections (no devices or files involved)."""
    m, b, h, r = config.model, config.model.vit, config.model.head, config.model.rankseg
    _choice(m.arch, schema.ARCHS, "model.arch")
    _choice(m.backbone, schema.BACKBONES, "model.backbone")
    _choice(m.dtype, schema.DTYPES, "model.dtype")
    _choice(r.ml_encoder, schema.ML_ENCODERS, "model.rankseg.ml_encoder")
    _choice(r.temperature, schema.TEMPERATURES, "model.rankseg.temperature")
    _choice(r.oracle, schema.ORACLES, "model.rankseg.oracle")
    _choice(config.loss.img_type, schema.IMG_LOSSES, "loss.img_type")
    _choice(config.loss.seg_average, schema.SEG_AVERAGES, "loss.seg_average")
    _choice(config.test.mode, schema.TEST_MODES, "test.mode")
    if m.num_classes < 1:
        raise ConfigError(f"model.num_classes={m.num_classes} must be >= 1")
    if b.embed_dim % b.num_heads:
        raise ConfigError(f"model.vit.embed_dim={b.embed_dim} is not divisible by "
                          f"model.vit.num_heads={b.num_heads}")
    if h.d_model % h.num_heads:
        raise ConfigError(f"model.head.d_model={h.d_model} is not divisible by "
                          f"model.head.num_heads={h.num_heads}")
    for name, size in (("model.vit.img_size", b.img_size),
                       ("data.crop_size", config.data.crop_size),
                       ("test.crop_size", config.test.crop_size)):
        _positive_pair(size, name)
        if any(s % b.patch_size for s in size):
            raise ConfigError(
                f"{name}={tuple(size)} is not a multiple of the patch size {b.patch_size}")
    _positive_pair(config.test.stride, "test.stride")
    if config.test.mode == "slide" and any(
            s > c for s, c in zip(config.test.stride, config.test.crop_size, strict=True)):
        # mmseg's slide_inference asserts every pixel is covered; a stride above the window
        # leaves gaps.
        raise ConfigError(f"test.stride={tuple(config.test.stride)} must not exceed "
                          f"test.crop_size={tuple(config.test.crop_size)} (windows would leave "
                          "pixels uncovered)")
    if b.oce and h.d_model != b.embed_dim:
        raise ConfigError(
            f"model.vit.oce needs model.head.d_model ({h.d_model}) == "
            f"model.vit.embed_dim ({b.embed_dim}): OCE tokens skip proj_dec")
    if r.enabled:
        if not 1 <= r.topk <= m.num_classes:
            raise ConfigError(
                f"model.rankseg.topk={r.topk} must be in [1, model.num_classes={m.num_classes}]")
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
    elif r.oracle != "none":
        raise ConfigError(f"model.rankseg.oracle={r.oracle!r} needs model.rankseg.enabled")
    if config.test.class_chunk < 1 or config.test.size_bucket < 1:
        raise ConfigError(f"test.class_chunk={config.test.class_chunk} and test.size_bucket="
                          f"{config.test.size_bucket} must be >= 1")


def validate_optim(config: mlc.ConfigDict) -> None:
    """Optimizer and schedule options."""
    o = config.optim
    _choice(o.name, schema.OPTIMIZERS, "optim.name")
    _choice(o.schedule, schema.SCHEDULES, "optim.schedule")
    if o.warmup_steps < 0 or o.warmup_steps >= max(config.train.steps, 1) and o.warmup_steps:
        raise ConfigError(f"optim.warmup_steps={o.warmup_steps} must be in [0, train.steps)")


def validate_data(config: mlc.ConfigDict, *, check_files: bool = True) -> None:
    """Dataset name, format and label conventions against the registry; the root exists."""
    from rankseg_jax.data import registry  # light: no jax, no grain

    d = config.data
    _choice(d.format, schema.DATA_FORMATS, "data.format")
    _choice(d.bad_example_policy, schema.BAD_EXAMPLE_POLICIES, "data.bad_example_policy")
    try:
        registry.dataset_info(config)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if check_files and d.format in ("folder", "array_record"):
        if not d.root or not pathlib.Path(d.root).exists():
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
    folder = pathlib.Path(root) / meta["tfds"]["builder"] / meta["tfds"]["version"]
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
    validate_numbers(config)
    validate_model(config)
    validate_optim(config)
    validate_data(config, check_files=check_files)
    if num_devices is None or process_count is None:
        import jax

        num_devices = num_devices or jax.device_count()
        process_count = process_count or jax.process_count()
    validate_train(config, num_devices, process_count, check_files=check_files)


def option_names(config: mlc.ConfigDict, prefix: str = "") -> list[str]:
    """Dotted names of every option (leaf, not section) of `config`."""
    names = []
    for key, value in config.items():
        if isinstance(value, mlc.ConfigDict):
            names.extend(option_names(value, f"{prefix}{key}."))
        else:
            names.append(prefix + key)
    return names


def check_override_names(argv, flag: str = "config") -> None:
    """Raises ConfigError for a command-line override `--config.<name>=...` whose name is no
    option or section of the schema, naming the full option and the closest existing ones.

    ml_collections would fail with a bare `AttributeError: "'num_steps'"` while parsing the
    flags; config files never add options, so the schema is the complete list.
    """
    options = option_names(schema.base_config())
    sections = {o.rsplit(".", i)[0] for o in options for i in range(1, o.count(".") + 1)}
    pattern = re.compile(rf"^--?(?:no)?{re.escape(flag)}\.([^=]+)")
    for arg in argv:
        match = pattern.match(arg)
        if not match or match.group(1) in options or match.group(1) in sections:
            continue
        name = match.group(1)
        same_leaf = [o for o in options if o.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1]]
        hint = difflib.get_close_matches(name, options, n=2, cutoff=0.75) or same_leaf
        raise ConfigError(f"--{flag}.{name}: there is no option {name!r}"
                          + (f"; did you mean {' or '.join(hint)}?" if hint else "")
                          + " (all options: rankseg_jax/config/schema.py)")
