"""PASCAL-Context-60: Segmenter ViT-B/16 + RankSeg, 480x480, 80k iterations, kappa = 25.

Official config: segmenter-ori_rankseg_vit-b16_480x480_80k_pascal-context.py (spec §7.3).
Its dataset file is `pascal_context_meanstd0.5_test`, so even the periodic validation is
6-scale + flip (pitfall 6); we reproduce that for the RankSeg config (`:ss` gives single
scale) while the baseline config is single-scale, as official. The position embedding stays
at the 512 grid (32x32) and is resized to 30x30 on every forward, as official.

    python main.py --config=configs/pascal_context.py --workdir=runs/pcontext
    python main.py --config=configs/pascal_context.py:baseline --workdir=runs/pcontext_base
    python main.py --config=configs/pascal_context.py:smoke --workdir=/tmp/pc_smoke

Data: `python -m data.prepare --dataset=pascal_context60 --src=.../VOCdevkit/VOC2010
--out=data/pascal_context60` (after the usual Detail-API conversion to
SegmentationClassContext).
"""

from configs import common, variants


def get_config(arg=None):
    args = variants.parse(arg, ss=False)
    c = common.base_config()
    c.model.num_classes = 60
    d = c.data
    d.name, d.format, d.root = "pascal_context60", "array_record", "data/pascal_context60"
    d.ignore_index, d.reduce_zero_label = 255, False  # background 0 is a class
    d.mean = d.std = (127.5, 127.5, 127.5)
    d.crop_size, d.train_scale, d.test_scale = (480, 480), (4160, 520), (4160, 520)
    h = c.model.head
    h.type, h.topk, h.downsample, h.n_layers = "rankseg", 25, 8, 3
    c.loss.img_type, c.loss.img_weight = "asl", 5.0
    c.loss.asl_gamma_neg, c.loss.asl_gamma_pos = 2.0, 0.0
    c.optim.weight_decay = 1e-6
    c.optim.decay_mult = variants.RANKSEG_DECAY_MULT
    c.train.steps, c.train.eval_every, c.train.ckpt_every = 80_000, 8_000, 8_000
    c.test.mode, c.test.crop_size, c.test.stride = "slide", (480, 480), (480, 480)
    c.test.scales, c.test.flip = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75), True
    if args.baseline or args.ss:
        c.test.scales, c.test.flip = (1.0,), False
    if args.baseline:
        variants.set_baseline(c)
    return variants.apply(c, args)
