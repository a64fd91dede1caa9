"""COCO+LVIS (1284 classes): Segmenter ViT-B/16 + RankSeg, 512x512, 320k iterations.

The official repo has only the dataset config (no model config): kappa and the loss settings
are our choices (kappa = 100, ASL(2,0) x 10, ADE-style weight decay). Labels are 16-bit PNG
read as int16 with zero reduction (label-1, so 0 -> -1 = ignore), ImageNet mean/std
(spec §8.1, §8.3). The README reports ViT-B 512 320k and a 640 setting (`:vit_l` here is the
ViT-L 640 variant).

    python main.py --config=configs/coco_lvis.py --workdir=runs/cocolvis
    python main.py --config=configs/coco_lvis.py:smoke --workdir=/tmp/cocolvis_smoke

Data: `python -m data.prepare --dataset=coco_lvis --src=.../lvis --out=data/coco_lvis`
(layout `images/{train2017,val2017}`, `lvis_mask/{train2017,val2017}/*.png`).
"""

from configs import common, variants


def get_config(arg=None):
    args = variants.parse(arg)
    c = common.base_config()
    c.model.num_classes = 1284
    d = c.data
    d.name, d.format, d.root = "coco_lvis", "array_record", "data/coco_lvis"
    d.ignore_index, d.reduce_zero_label = -1, True
    d.mean, d.std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    d.crop_size, d.train_scale, d.test_scale = (512, 512), (2048, 512), (2048, 512)
    h = c.model.head
    h.type, h.topk, h.downsample, h.n_layers = "rankseg", 100, 8, 3
    c.loss.img_type, c.loss.img_weight = "asl", 10.0
    c.loss.asl_gamma_neg, c.loss.asl_gamma_pos = 2.0, 0.0
    c.optim.weight_decay = 1e-6
    c.optim.decay_mult = variants.RANKSEG_DECAY_MULT
    c.train.steps, c.train.eval_every, c.train.ckpt_every = 320_000, 32_000, 32_000
    c.test.mode, c.test.crop_size, c.test.stride = "slide", (512, 512), (512, 512)
    if args.vit_l:
        variants.set_vit_l(c, 640)
    if args.baseline:
        variants.set_baseline(c)
    return variants.apply(c, args)
