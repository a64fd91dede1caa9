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

The Mask2Former configs (`configs/ade20k_mask2former.py`, `configs/ade20k_panoptic.py`) take
their own flags (MASK2FORMER_VARIANT_DEFAULTS): `rankseg` (the official -rankseg configs),
`gt` (the -gt oracle), `swin_b` (Swin-B backbone), `tta` (the official multi-scale + flip
test, semantic only), `smoke`, and `topk`, `img_weight`, `temperature` as above.

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

# The flags of the Mask2Former configs (the Segmenter-only flags are unknown there).
MASK2FORMER_VARIANT_DEFAULTS = dict(
    rankseg=False, gt=False, swin_b=False, smoke=False, topk=0, img_weight=-1.0,
    temperature="", tta=False)

# detectron2 TEST.AUG of the Mask2Former ADE20K semantic configs (disabled there; the model
# zoo's "mIoU (ms+flip)" column): short sides, long-side cap, flip.
MASK2FORMER_TTA = dict(aug_min_sizes=(320, 480, 640, 800, 960, 1120), aug_max_size=4480,
                       flip=True)

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

# Mask2Former's weight-decay-0 parameters as regexes on our paths (`optim.no_decay_paths`),
# the official groups of `train_net.py:275-357` (WEIGHT_DECAY_NORM = WEIGHT_DECAY_EMBED = 0):
# every LayerNorm / GroupNorm (Swin, pixel decoder, transformer decoder, RankSeg's ML head
# and `ml_norm`; our norm modules are the path components named *norm*), the decoder's
# nn.Embeddings, Swin's relative-position bias tables, and RankSeg's class tokens
# `ml_head.cls_emb`. The last is a deliberate fix: the official rule for it
# (`"cls_emb" in module_name`, `train_net.py:322`) never fires, so the official runs decay it
# by 0.05. The pixel decoder's bare `level_embed` Parameter is decayed (0.05) as in every
# official Mask2Former run (it is no nn.Embedding): kept for training parity.
MASK2FORMER_NO_DECAY = (
    r"norm\d*\.(scale|bias)$",
    r"^predictor\.(query_feat|query_embed|level_embed)$",
    r"relative_position_bias_table$",
    r"^ml_head\.cls_emb$",
)


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
    """Shrinks a config so the same code runs in a minute or two on CPU (mostly compiling):
    tiny ViT (or tiny Swin + Mask2Former head), 64x64 crops, synthetic data with the same
    number of classes, a few steps."""
    r = c.model.rankseg
    r.topk = min(r.topk, c.model.num_classes)
    if c.model.arch == "mask2former":
        _smoke_mask2former(c)
    else:
        b, h = c.model.vit, c.model.head
        b.embed_dim, b.depth, b.num_heads, b.img_size = 64, 2, 2, (64, 64)
        b.drop_path_rate = 0.0
        h.d_model, h.num_heads, h.d_ff = 64, 2, 128
        r.downsample = 2
        r.dec_num_heads, r.dec_d_ff = 2, 128
    d = c.data
    panoptic = c.model.arch == "mask2former" and c.model.mask2former.panoptic_on
    if panoptic:  # the dataset's thing / stuff split (ADE20K: 100 things + 50 stuff)
        from rankseg_jax.data import registry  # noqa: PLC0415 (keeps config parsing light)

        things = len(registry.get_dataset_info(d.name).thing_classes)
        d.synthetic.num_things = min(max(things, 1), c.model.num_classes - 1)
    d.name, d.format, d.root = ("synthetic_panoptic" if panoptic else "synthetic",
                                "synthetic", "")
    d.ignore_index, d.reduce_zero_label, d.class_names_file = 255, False, ""
    d.crop_size = (64, 64)
    d.train_scale, d.test_scale = (256, 64), (256, 64)
    d.min_size_train, d.max_size_train = (48, 64, 80, 96), 256
    d.synthetic.num_train, d.synthetic.num_val = 64, 4
    d.synthetic.image_size = (80, 96)
    c.test.crop_size = c.test.stride = (64, 64)
    c.test.scales = (1.0,)
    # Mask2Former's TTA (`tta`) shrinks with the test scale (640 -> 64); its flip stays.
    c.test.flip = bool(c.test.aug_min_sizes) and c.test.flip
    c.test.aug_min_sizes = tuple(max(8, v // 10) for v in c.test.aug_min_sizes)
    c.test.aug_max_size = max(64, c.test.aug_max_size // 10)
    c.test.max_images = 2
    t = c.train
    t.steps, t.batch_size, t.grad_accum = 4, 2, 1
    t.log_every, t.eval_every, t.ckpt_every = 1, 4, 2
    c.optim.warmup_steps = min(c.optim.warmup_steps, t.steps - 1)


def _smoke_mask2former(c: mlc.ConfigDict) -> None:
    """The official fixtures' tiny Mask2Former: Swin embed 32, depths 2, window 4; width 32,
    2 encoder layers, 4 decoder layers (the ML head reads layer 2), 10 queries, 96 loss
    points (the fixtures' TRAIN_NUM_POINTS). Panoptic configs train on `synthetic_panoptic`
    with the dataset's thing / stuff split (set by `smoke` after this), at most 6 thing
    instances per image (<= 9 targets for the 10 queries)."""
    sw, mf, r = c.model.swin, c.model.mask2former, c.model.rankseg
    sw.embed_dim, sw.depths, sw.num_heads, sw.window_size = 32, (2, 2, 2, 2), (1, 2, 4, 8), 4
    sw.drop_path_rate = 0.0
    mf.hidden_dim = mf.conv_dim = mf.mask_dim = 32
    mf.enc_layers, mf.dim_feedforward, mf.dec_layers, mf.num_queries = 2, 64, 5, 10
    r.ml_hidden_dim = 64
    c.loss.mask2former.num_points = 96
    c.data.max_targets = mf.num_queries
    c.data.synthetic.max_instances = 6


def parse_mask2former(arg: str | None) -> mlc.ConfigDict:
    """Parses the variant string of a Mask2Former config (MASK2FORMER_VARIANT_DEFAULTS)."""
    return parse_arg(arg, **MASK2FORMER_VARIANT_DEFAULTS)


def set_mask2former(c: mlc.ConfigDict, *, num_queries: int, panoptic: bool) -> None:
    """Official Mask2Former Swin-L (IN-22k, 384, window 12) ADE20K settings (plain model).

    Semantic: Q = 100, semantic inference; panoptic: Q = 200, panoptic + semantic inference.
    Data: ADE20K-150 with ImageNet mean/std, the official training mappers (short side
    choice(320, 384, ..., 1280) capped at 2560, 640 crops without the category-area check,
    ColorAugSSD, flip, at most Q targets), short side 640 at test (whole image). AdamW 1e-4,
    weight decay 0.05 (0 on norms and embeddings, MASK2FORMER_NO_DECAY), backbone lr x 0.1,
    poly 0.9 to 0, full-model gradient clip 0.01, batch 16, 160k iterations, evaluation
    every 5k.
    """
    from rankseg_jax.data import registry  # noqa: PLC0415  (keeps config parsing import-light)

    m = c.model
    m.arch, m.backbone = "mask2former", "swin"
    schema.apply_swin_preset(c, "large")
    m.swin.window_size, m.swin.drop_path_rate = 12, 0.3
    m.mask2former.num_queries = num_queries
    m.mask2former.semantic_on, m.mask2former.panoptic_on = True, panoptic
    m.rankseg.enabled = False
    # Panoptic: the COCO-panoptic files of ADE20K (`data/ade20k_panoptic`, prepared by
    # `python -m data.prepare --dataset=ade20k_panoptic`), read by the panoptic mapper.
    set_dataset(c, "ade20k_panoptic" if panoptic else "ade20k")
    d = c.data
    d.mean, d.std = registry.IMAGENET_MEAN, registry.IMAGENET_STD
    d.crop_size, d.train_scale, d.test_scale = (640, 640), (2560, 640), (2560, 640)
    d.min_size_train, d.max_size_train = tuple(range(320, 1281, 64)), 2560
    d.cat_max_ratio, d.max_targets = 1.0, num_queries
    c.test.mode = "whole"
    o = c.optim
    o.name, o.lr, o.weight_decay, o.power, o.min_lr, o.clip_grad_norm = (
        "adamw", 1e-4, 0.05, 0.9, 0.0, 0.01)
    o.b1, o.b2, o.eps, o.warmup_steps = 0.9, 0.999, 1e-8, 0
    o.decay_mult, o.no_decay_paths = (), MASK2FORMER_NO_DECAY
    o.backbone_lr_mult, o.ml_head_lr_mult = 0.1, 1.0
    c.train.batch_size = 16
    set_schedule(c, 160_000, 5_000)


def set_mask2former_rankseg(c: mlc.ConfigDict) -> None:
    """The official `-rankseg` settings: kappa = K, cosine classifier, ML head of width 512
    reading decoder layer 2, ASL(2, 0, clip 0.05) x 10, ML head lr x 0.1
    (SOLVER.MLHEAD_MULTIPLIER)."""
    r = c.model.rankseg
    r.enabled, r.topk, r.temperature = True, c.model.num_classes, "rank_adaptive"
    r.ml_hidden_dim, r.ml_read_layer, r.ml_dropout = 512, 2, 0.1
    c.model.mask2former.cosine_classifier = True
    c.loss.img_type, c.loss.img_weight = "asl", 10.0
    c.loss.asl_gamma_neg, c.loss.asl_gamma_pos, c.loss.asl_clip = 2.0, 0.0, 0.05
    c.optim.ml_head_lr_mult = 0.1


def finish_mask2former(c: mlc.ConfigDict, args: mlc.ConfigDict) -> mlc.ConfigDict:
    """Applies the Mask2Former flags (MASK2FORMER_VARIANT_DEFAULTS); returns c, locked."""
    if args.rankseg and args.gt:
        raise ConfigError("variants 'rankseg' and 'gt' are separate official configs; "
                          "choose one")
    if args.swin_b:
        schema.apply_swin_preset(c, "base")
    if args.rankseg:
        set_mask2former_rankseg(c)
    if args.gt:
        c.model.mask2former.gt_oracle = True
    if args.topk:
        c.model.rankseg.topk = args.topk
    if args.img_weight >= 0:
        c.loss.img_weight = args.img_weight
    if args.temperature:
        c.model.rankseg.temperature = args.temperature
    if args.tta:
        c.test.update(MASK2FORMER_TTA)
    if args.smoke:
        smoke(c)
    c.lock()
    return c
