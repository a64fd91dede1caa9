"""Mask2Former (and Mask2Former+RankSeg) on the synthetic panoptic dataset: CPU minutes.

    python main.py --config=configs/demo_mask2former.py --workdir=/tmp/demo_m2f
    python main.py --config=configs/demo_mask2former.py:rankseg --workdir=/tmp/demo_m2f_rs

No download: `synthetic_panoptic` (rankseg_jax/data/synthetic_panoptic.py) is generated on
the fly, 30 classes = 20 things (several instances per image, occluding each other, an
occasional crowd) + 10 stuff, VOID bands around things. The model is a tiny Swin (width 48,
depths 2, window 4) with a 64-wide Mask2Former head (2 deformable encoder layers, 3 masked-
attention decoder layers, 24 queries), trained with the official recipe and data path:
detectron2 mappers (short side choice(96..192) capped at 512, 128 crops, ColorAugSSD, flip,
128-padding), Hungarian matching, CE + point-sampled BCE / dice on every prediction, AdamW
with weight decay 0 on norms and embeddings, full-model clipping at 0.01 and poly decay.
Deviations for a CPU demo: lr 1e-3 and no backbone lr multiplier (the official 1e-4 and
x 0.1 assume an ImageNet-pretrained Swin; here everything starts from random init), 1024 loss
points instead of 12544 (the masks are 32 x 32 here). The run ends with an evaluation (PQ,
mIoU; and the multi-label metrics for `:rankseg`) on 64 validation images.

Variants: `rankseg` (the official -rankseg settings: kappa = K, cosine classifier, ML head of
width 128 reading decoder layer 1, 10 x ASL, ML head lr x 0.1), `steps=N`.
"""

from rankseg_jax.config import base_config, variants
from rankseg_jax.data import registry


def get_config(arg=None):
    args = variants.parse_arg(arg, rankseg=False, steps=1500)
    c = base_config()
    m = c.model
    m.arch, m.backbone, m.num_classes = "mask2former", "swin", 30
    sw = m.swin
    sw.embed_dim, sw.depths, sw.num_heads, sw.window_size = 48, (2, 2, 2, 2), (2, 4, 8, 16), 4
    sw.drop_path_rate = 0.1
    mf = m.mask2former
    mf.hidden_dim = mf.conv_dim = mf.mask_dim = 64
    mf.nheads, mf.dim_feedforward, mf.enc_ffn = 4, 256, 256
    mf.enc_layers, mf.dec_layers, mf.num_queries = 2, 4, 24
    mf.semantic_on, mf.panoptic_on = True, True
    m.rankseg.enabled = False
    c.loss.mask2former.num_points = 1024
    d = c.data
    d.name, d.format, d.root = "synthetic_panoptic", "synthetic", ""
    d.ignore_index, d.reduce_zero_label = 255, False
    d.mean, d.std = registry.IMAGENET_MEAN, registry.IMAGENET_STD
    s = d.synthetic
    s.num_things, s.max_instances = 20, 8
    s.num_train, s.num_val, s.image_size = 4096, 64, (144, 176)
    d.crop_size, d.cat_max_ratio = (128, 128), 1.0
    d.min_size_train, d.max_size_train = tuple(range(96, 193, 16)), 512
    d.max_targets = 16  # <= 3 stuff + 8 things (crowds are no targets)
    d.test_scale = (512, 144)  # test resize: short side 144 (the original size), max 512
    c.test.mode, c.test.max_images = "whole", 64
    o = c.optim
    o.name, o.lr, o.weight_decay, o.power, o.min_lr, o.clip_grad_norm = (
        "adamw", 1e-3, 0.05, 0.9, 0.0, 0.01)
    o.decay_mult, o.no_decay_paths = (), variants.MASK2FORMER_NO_DECAY
    o.backbone_lr_mult = 1.0
    if args.rankseg:
        variants.set_mask2former_rankseg(c)
        m.rankseg.ml_hidden_dim, m.rankseg.ml_read_layer = 128, 1
    t = c.train
    t.steps, t.batch_size = args.steps, 8
    t.log_every, t.eval_every, t.ckpt_every = 50, args.steps, 500
    c.lock()
    return c
