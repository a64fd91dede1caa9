"""Config variants shared by every dataset config: `configs/<dataset>.py:<variants>`.

A variant string is a comma-separated list of flags and key=value pairs, e.g.

    configs/ade20k.py:vit_l                  ViT-L/16 at 640 (official ViT-L settings)
    configs/ade20k.py:baseline               Segmenter baseline (no RankSeg)
    configs/ade20k.py:smoke                  same code on synthetic data of the same K, tiny
    configs/ade20k.py:ablation=mt            paper Table 1 rows (see ABLATIONS)
    configs/ade20k.py:ml_encoder=tran_dec    paper Table 6 (multi-label encoder xi)
    configs/ade20k.py:topk=25                paper Table 4 (kappa)
    configs/ade20k.py:img_weight=5           paper Table 5 (image loss weight)
    configs/ade20k.py:oracle=eval            paper Fig. 3 (ground-truth selection)
    configs/ade20k.py:oce                    class embeddings from the backbone (OCE)

Each flag maps to config values here, in one place; dataset files set the dataset facts.
"""

from __future__ import annotations

import ml_collections as mlc

from rankseg_jax.config import schema
from rankseg_jax.config.schema import ConfigError

# Every variant flag with its default (its type is the type of the default).
VARIANT_DEFAULTS = dict(
    vit_l=False, baseline=False, smoke=False, oce=False, ablation="", topk=0, img_weight=-1.0,
    ml_encoder="", temperature="", oracle="")

# Paper Table 1: MT = multi-task (image-level loss), LS = label selection (top-kappa),
# RA = rank-adaptive temperature. Rows without LS keep all K classes (kappa = K); rows
# without RA share one temperature over all rank slots.
ABLATIONS = {
    "mt": dict(topk_all=True, temperature="shared"),
    "mt_ls": dict(topk_all=False, temperature="shared"),
    "sort_only": dict(topk_all=True, temperature="rank_adaptive"),  # kappa = K with RA
    "mt_ls_ra": dict(topk_all=False, temperature="rank_adaptive"),  # the full method
}

# The official RankSeg configs with weight decay 1e-6 add these multipliers (their
# `optimizer.paramwise_cfg.custom_keys`, e.g. in
# `segmenter-ori_rankseg_vit-b16_512x512_160k_ade20k.py`).
RANKSEG_DECAY_MULT = (("pos_embed", 0.0), ("cls_token", 0.0), ("norm", 0.0),
                      ("decode_head.blocks.0.", 100.0), ("decode_head.ml_fc", 100.0))
PLAIN_DECAY_MULT = (("pos_embed", 0.0), ("cls_token", 0.0), ("norm", 0.0))


def parse_arg(arg: str | None, **defaults) -> mlc.ConfigDict:
    """Parses a `configs/x.py:a,b=2` argument into a dict of flags (`a` -> True).

    defaults: every accepted flag with its default; the default's type converts the value.
    Raises ConfigError for an unknown flag or a value of the wrong type.
    """
    out = mlc.ConfigDict(dict(defaults))
    for part in filter(None, (arg or "").split(",")):
        key, _, value = part.partition("=")
        if key not in out:
            raise ConfigError(f"unknown config variant {key!r}; known: {sorted(out.keys())}")
        if not value:
            out[key] = True
        elif isinstance(out[key], bool):
            out[key] = value in ("1", "true", "True")
        else:
            try:
                out[key] = type(out[key])(value)
            except ValueError as e:
                raise ConfigError(f"config variant {key}={value!r}: expected "
                                  f"{type(out[key]).__name__}") from e
    return out


def parse(arg: str | None, **extra) -> mlc.ConfigDict:
    """Parses the variant string of `get_config(arg)`; `extra` adds dataset-specific flags."""
    return parse_arg(arg, **VARIANT_DEFAULTS, **extra)


def set_dataset(c: mlc.ConfigDict, name: str) -> None:
    """Dataset facts from the registry (rankseg_jax/data/registry.py): K, ignore value, zero
    reduction, mean/std, crop and scales; data read from the prepared `data/<name>` shards;
    slide inference with crop = stride = the training crop (every official config)."""
    from rankseg_jax.data import registry  # noqa: PLC0415  (keeps config parsing import-light)

    c.model.num_classes = registry.get_dataset_info(name).num_classes
    c.data.update(registry.data_config_values(name))
    c.data.format, c.data.root = "array_record", f"data/{name}"
    c.test.mode, c.test.crop_size, c.test.stride = "slide", c.data.crop_size, c.data.crop_size


def set_rankseg(c: mlc.ConfigDict, *, topk: int, img_loss: str, img_weight: float,
                weight_decay: float) -> None:
    """The official RankSeg head (3 blocks, 8x8 pooled ML encoder) and its loss/decay."""
    r = c.model.rankseg
    r.enabled, r.topk, r.downsample = True, topk, 8
    c.model.head.n_layers = 3
    c.loss.img_type, c.loss.img_weight = img_loss, img_weight
    c.loss.asl_gamma_neg, c.loss.asl_gamma_pos = 2.0, 0.0
    c.optim.weight_decay = weight_decay
    if weight_decay:
        c.optim.decay_mult = RANKSEG_DECAY_MULT


def set_schedule(c: mlc.ConfigDict, steps: int, eval_every: int) -> None:
    """Iterations, and evaluation/checkpoint interval (official: every 1/10 of the run)."""
    c.train.steps, c.train.eval_every, c.train.ckpt_every = steps, eval_every, eval_every


def finish(c: mlc.ConfigDict, args: mlc.ConfigDict, vit_l_crop: int = 640) -> mlc.ConfigDict:
    """Applies `vit_l`, `baseline` and then the generic variants; returns c, locked."""
    if args.vit_l:
        set_vit_l(c, vit_l_crop)
    if args.baseline:
        set_baseline(c)
    return apply(c, args)


def set_vit_l(c: mlc.ConfigDict, crop: int = 640) -> None:
    """Official ViT-L/16 settings: 24 layers, width 1024, pos-embed grid of a 640 crop."""
    schema.apply_vit_preset(c, "l16")
    c.model.vit.img_size = (crop, crop)
    c.data.crop_size = (crop, crop)
    c.data.train_scale = (4 * crop, crop)
    c.data.test_scale = (4 * crop, crop)
    c.test.crop_size = c.test.stride = (crop, crop)


def set_baseline(c: mlc.ConfigDict) -> None:
    """Segmenter baseline head: 2 blocks, K-way masks, no image loss, no weight decay."""
    c.model.rankseg.enabled = False
    c.model.head.n_layers = 2
    c.optim.weight_decay = 0.0
    c.optim.decay_mult = PLAIN_DECAY_MULT


def apply(c: mlc.ConfigDict, args: mlc.ConfigDict) -> mlc.ConfigDict:
    """Applies the generic variants (everything but vit_l/baseline, which dataset files
    apply first because they interact with dataset settings). Returns c, locked (no new keys
    can be added; values can still be overridden)."""
    r = c.model.rankseg
    if args.oce:
        c.model.vit.oce = True
    if args.ml_encoder:
        r.ml_encoder = args.ml_encoder
        if args.ml_encoder != "tran_enc":
            # Official ablation configs (`segmenter-ori_rankseg-{tran_dec,gap_linear}*`):
            # 16x16 pooling, 2 segmentation blocks, clipped ASL(0, 0).
            r.downsample, c.model.head.n_layers = 16, 2
            c.loss.img_type, c.loss.asl_gamma_neg, c.loss.asl_gamma_pos = "asl", 0.0, 0.0
    if args.ablation:
        if args.ablation not in ABLATIONS:
            raise ConfigError(f"ablation={args.ablation!r} is not one of {sorted(ABLATIONS)}")
        spec = ABLATIONS[args.ablation]
        if spec["topk_all"]:
            r.topk = c.model.num_classes
        r.temperature = spec["temperature"]
    if args.topk:
        r.topk = args.topk
    if args.img_weight >= 0:
        c.loss.img_weight = args.img_weight
    if args.temperature:
        r.temperature = args.temperature
    if args.oracle:
        r.oracle = args.oracle
    if args.smoke:
        smoke(c)
    c.lock()
    return c


def smoke(c: mlc.ConfigDict) -> None:
    """Shrinks a config so the same code runs in seconds on CPU: tiny ViT, 64x64 crops,
    synthetic data with the same number of classes, a few steps."""
    b, h, r = c.model.vit, c.model.head, c.model.rankseg
    b.embed_dim, b.depth, b.num_heads, b.img_size = 64, 2, 2, (64, 64)
    b.drop_path_rate = 0.0
    h.d_model, h.num_heads, h.d_ff = 64, 2, 128
    r.downsample = 2
    r.dec_num_heads, r.dec_d_ff = 2, 128
    r.topk = min(r.topk, c.model.num_classes)
    d = c.data
    d.name, d.format, d.root = "synthetic", "synthetic", ""
    d.ignore_index, d.reduce_zero_label, d.class_names_file = 255, False, ""
    d.crop_size = (64, 64)
    d.train_scale, d.test_scale = (256, 64), (256, 64)
    d.synthetic.num_train, d.synthetic.num_val = 64, 4
    d.synthetic.image_size = (80, 96)
    c.test.crop_size = c.test.stride = (64, 64)
    c.test.scales = (1.0,)
    c.test.flip = False
    c.test.max_images = 2
    t = c.train
    t.steps, t.batch_size, t.grad_accum = 4, 2, 1
    t.log_every, t.eval_every, t.ckpt_every = 1, 4, 2
    c.optim.warmup_steps = min(c.optim.warmup_steps, t.steps - 1)
