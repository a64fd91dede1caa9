"""Numeric options: every float option finite and in its range, integers above a minimum.

`FLOAT_RANGES` lists every float option of the schema (a test checks that none is missing), so
a NaN or infinite learning rate, weight or probability is refused before anything runs.
"""

from __future__ import annotations

import ml_collections as mlc

from rankseg_jax.config.checks import finite, option, positive_pair
from rankseg_jax.config.schema import ConfigError

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
    ("model.rankseg.ml_dropout", 0.0, 1.0, False, True),
    ("model.swin.mlp_ratio", 0.0, _INF, True, False),
    ("model.swin.drop_path_rate", 0.0, 1.0, False, True),
    ("model.mask2former.dropout", 0.0, 1.0, False, True),
    ("model.mask2former.object_mask_threshold", 0.0, 1.0, False, False),
    ("model.mask2former.overlap_threshold", 0.0, 1.0, False, False),
    ("loss.seg_weight", 0.0, _INF, False, False),
    ("loss.img_weight", 0.0, _INF, False, False),
    ("loss.asl_gamma_neg", 0.0, _INF, False, False),
    ("loss.asl_gamma_pos", 0.0, _INF, False, False),
    ("loss.asl_clip", 0.0, 1.0, False, True),
    ("loss.asl_eps", 0.0, 1.0, True, True),
    ("loss.mask2former.class_weight", 0.0, _INF, False, False),
    ("loss.mask2former.mask_weight", 0.0, _INF, False, False),
    ("loss.mask2former.dice_weight", 0.0, _INF, False, False),
    ("loss.mask2former.no_object_weight", 0.0, _INF, True, False),
    ("loss.mask2former.oversample_ratio", 1.0, _INF, False, False),
    ("loss.mask2former.importance_ratio", 0.0, 1.0, False, False),
    ("data.cat_max_ratio", 0.0, 1.0, True, False),
    ("data.flip_prob", 0.0, 1.0, False, False),
    # Difficulty knobs of the synthetic dataset (rankseg_jax/data/synthetic.py).
    ("data.synthetic.in_scene", 0.0, 1.0, False, False),
    ("data.synthetic.scene_cue", 0.0, _INF, False, False),
    ("data.synthetic.tail", 0.0, _INF, False, False),
    ("data.synthetic.noise", 0.0, _INF, False, False),
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
    ("optim.backbone_lr_mult", 0.0, _INF, False, False),
    ("optim.ml_head_lr_mult", 0.0, _INF, False, False),
)
# Integer options that must be >= the given minimum.
INT_MINIMUMS = (
    ("model.vit.embed_dim", 1), ("model.vit.depth", 1), ("model.vit.num_heads", 1),
    ("model.vit.patch_size", 1), ("model.head.d_model", 1), ("model.head.num_heads", 1),
    ("model.head.d_ff", 1), ("model.head.n_layers", 1), ("model.rankseg.downsample", 1),
    ("model.rankseg.dec_num_heads", 1), ("model.rankseg.dec_d_ff", 1),
    ("model.rankseg.dec_layers", 1), ("model.rankseg.ml_hidden_dim", 1),
    ("model.rankseg.ml_read_layer", 0), ("model.swin.embed_dim", 1),
    ("model.swin.window_size", 1), ("model.swin.patch_size", 1),
    ("model.mask2former.hidden_dim", 1), ("model.mask2former.num_queries", 1),
    ("model.mask2former.nheads", 1), ("model.mask2former.dim_feedforward", 1),
    ("model.mask2former.dec_layers", 2), ("model.mask2former.enc_layers", 0),
    ("model.mask2former.enc_ffn", 1), ("model.mask2former.enc_points", 1),
    ("model.mask2former.conv_dim", 1), ("model.mask2former.mask_dim", 1),
    ("model.mask2former.size_divisibility", 1), ("data.num_workers", 0), ("data.prefetch", 0),
    ("data.read_threads", 0), ("data.synthetic.num_train", 1), ("data.synthetic.num_val", 1),
    ("data.synthetic.num_scenes", 1), ("data.synthetic.min_classes", 1),
    ("data.synthetic.max_instances", 1), ("data.synthetic.confusable", 1),
    ("test.max_images", 0), ("loss.mask2former.num_points", 1), ("data.max_size_train", 1),
    ("train.keep_checkpoints", 1), ("train.check_finite_every", 0),
    ("mesh.fsdp_min_size", 0),
)


def validate_numbers(config: mlc.ConfigDict) -> None:
    """Every float option finite and in its range (`FLOAT_RANGES`), integer options above
    their minimum (`INT_MINIMUMS`), and the numeric tuples (mean, std, ratio_range, scales,
    decay multipliers)."""
    for name, low, high, low_open, high_open in FLOAT_RANGES:
        finite(option(config, name), name, low=low, high=high, low_open=low_open,
                high_open=high_open)
    for name, minimum in INT_MINIMUMS:
        value = option(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")
    d = config.data
    for name, values in (("data.mean", d.mean), ("data.std", d.std)):
        if len(tuple(values)) != 3:
            raise ConfigError(f"{name}={tuple(values)} must have 3 values (R, G, B)")
    for i, v in enumerate(d.mean):
        finite(v, f"data.mean[{i}]")
    for i, v in enumerate(d.std):
        finite(v, f"data.std[{i}]", low=0.0, low_open=True)
    if len(tuple(d.ratio_range)) != 2:
        raise ConfigError(f"data.ratio_range={tuple(d.ratio_range)} must be (low, high)")
    for i, v in enumerate(d.ratio_range):
        finite(v, f"data.ratio_range[{i}]", low=0.0, low_open=True)
    if d.ratio_range[0] > d.ratio_range[1]:
        raise ConfigError(f"data.ratio_range={tuple(d.ratio_range)} must have low <= high")
    for name in ("data.train_scale", "data.test_scale", "data.synthetic.image_size"):
        positive_pair(option(config, name), name)
    s = d.synthetic
    if s.min_classes > s.max_classes:
        raise ConfigError(f"data.synthetic.min_classes={s.min_classes} must be <= "
                          f"data.synthetic.max_classes={s.max_classes}")
    if not config.test.scales:
        raise ConfigError("test.scales must not be empty")
    for i, v in enumerate(config.test.scales):
        finite(v, f"test.scales[{i}]", low=0.0, low_open=True)
    for item in config.optim.decay_mult:
        if len(item) != 2 or not isinstance(item[0], str):
            raise ConfigError(f"optim.decay_mult entry {item!r} is not a (substring, mult) pair")
        finite(item[1], f"optim.decay_mult[{item[0]!r}]", low=0.0)
