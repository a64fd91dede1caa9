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

from configs import common

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

# The official RankSeg configs with weight decay 1e-6 add these multipliers (spec §7.2).
RANKSEG_DECAY_MULT = (("pos_embed", 0.0), ("cls_token", 0.0), ("norm", 0.0),
                      ("decode_head.blocks.0.", 100.0), ("decode_head.ml_fc", 100.0))


def parse(arg: str | None, **extra) -> mlc.ConfigDict:
    """Parses the variant string of `get_config(arg)`; `extra` adds dataset-specific flags."""
    return common.parse_arg(arg, **VARIANT_DEFAULTS, **extra)


def set_dataset(c: mlc.ConfigDict, name: str) -> None:
    """Dataset facts from the registry (rankseg_jax/datasets.py): K, ignore value, zero
    reduction, mean/std, crop and scales; data read from the prepared `data/<name>` shards;
    slide inference with crop = stride = the training crop (every official config)."""
    from rankseg_jax import datasets  # noqa: PLC0415  (keeps config parsing import-light)

    c.model.num_classes = datasets.get_dataset_info(name).num_classes
    c.data.update(datasets.data_config_values(name))
    c.data.format, c.data.root = "array_record", f"data/{name}"
    c.test.mode, c.test.crop_size, c.test.stride = "slide", c.data.crop_size, c.data.crop_size


def set_rankseg(c: mlc.ConfigDict, *, topk: int, img_loss: str, img_weight: float,
                weight_decay: float) -> None:
    """The official RankSeg head (3 blocks, 8x8 pooled ML encoder) and its loss/decay."""
    h = c.model.head
    h.type, h.topk, h.downsample, h.n_layers = "rankseg", topk, 8, 3
    c.loss.img_type, c.loss.img_weight = img_loss, img_weight
    c.loss.asl_gamma_neg, c.loss.asl_gamma_pos = 2.0, 0.0
    c.optim.weight_decay = weight_decay
    if weight_decay:
        c.optim.decay_mult = RANKSEG_DECAY_MULT


def set_schedule(c: mlc.ConfigDict, steps: int, eval_every: int) -> None:
    """Iterations, and evaluation/checkpoint interval (official: every 1/10 of the run)."""
    c.train.steps, c.train.eval_every, c.train.ckpt_every = steps, eval_every, eval_every


def finish(c: mlc.ConfigDict, args: mlc.ConfigDict, vit_l_crop: int = 640) -> mlc.ConfigDict:
    """Applies `vit_l`, `baseline` and then the generic variants; returns c."""
    if args.vit_l:
        set_vit_l(c, vit_l_crop)
    if args.baseline:
        set_baseline(c)
    return apply(c, args)


def set_vit_l(c: mlc.ConfigDict, crop: int = 640) -> None:
    """Official ViT-L/16 settings: 24 layers, width 1024, pos-embed grid of a 640 crop."""
    common.apply_vit_preset(c, "l16")
    c.model.backbone.img_size = (crop, crop)
    c.data.crop_size = (crop, crop)
    c.data.train_scale = (4 * crop, crop)
    c.data.test_scale = (4 * crop, crop)
    c.test.crop_size = c.test.stride = (crop, crop)


def set_baseline(c: mlc.ConfigDict) -> None:
    """Segmenter baseline head: 2 blocks, K-way masks, no image loss, no weight decay."""
    h = c.model.head
    h.type, h.n_layers = "segmenter", 2
    c.optim.weight_decay = 0.0
    c.optim.decay_mult = (("pos_embed", 0.0), ("cls_token", 0.0), ("norm", 0.0))


def apply(c: mlc.ConfigDict, args: mlc.ConfigDict) -> mlc.ConfigDict:
    """Applies the generic variants (everything but vit_l/baseline, which dataset files
    apply first because they interact with dataset settings). Returns c."""
    h = c.model.head
    if args.oce:
        c.model.backbone.oce = True
    if args.ml_encoder:
        h.ml_encoder = args.ml_encoder
        if args.ml_encoder != "tran_enc":
            # Official ablation configs (spec §3.5-3.6): 16x16 pooling, 2 segmentation blocks,
            # clipped ASL(0, 0).
            h.downsample, h.n_layers = 16, 2
            c.loss.img_type, c.loss.asl_gamma_neg, c.loss.asl_gamma_pos = "asl", 0.0, 0.0
    if args.ablation:
        if args.ablation not in ABLATIONS:
            raise common.ConfigError(
                f"ablation={args.ablation!r} is not one of {sorted(ABLATIONS)}")
        spec = ABLATIONS[args.ablation]
        if spec["topk_all"]:
            h.topk = c.model.num_classes
        h.temperature = spec["temperature"]
    if args.topk:
        h.topk = args.topk
    if args.img_weight >= 0:
        c.loss.img_weight = args.img_weight
    if args.temperature:
        h.temperature = args.temperature
    if args.oracle:
        h.oracle = args.oracle
    if args.smoke:
        smoke(c)
    return c


def smoke(c: mlc.ConfigDict) -> None:
    """Shrinks a config so the same code runs in seconds on CPU: tiny ViT, 64x64 crops,
    synthetic data with the same number of classes, a few steps."""
    b, h = c.model.backbone, c.model.head
    b.embed_dim, b.depth, b.num_heads, b.img_size = 64, 2, 2, (64, 64)
    b.drop_path_rate = 0.0
    h.d_model, h.num_heads, h.d_ff = 64, 2, 128
    h.downsample = 2
    h.dec_num_heads, h.dec_d_ff = 2, 128
    h.topk = min(h.topk, c.model.num_classes)
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
