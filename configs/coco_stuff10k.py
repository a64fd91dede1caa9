"""COCO-Stuff-10k (171 classes): Segmenter ViT-B/16 + RankSeg, 512x512, 40k iterations.

Official configs: segmenter-ori_rankseg_vit-b16_512x512_{40k,80k}_coco-stuff10k.py and the
ViT-L 640 40k config (spec §7.3). Note the official ViT-B RankSeg configs use the head's
default BCE image loss (not ASL) and ImageNet mean/std; the ViT-L one uses ASL(2, 0).

    python main.py --config=configs/coco_stuff10k.py --workdir=runs/cocostuff
    python main.py --config=configs/coco_stuff10k.py:iters80k --workdir=runs/cocostuff80k
    python main.py --config=configs/coco_stuff10k.py:vit_l --workdir=runs/cocostuff_l
    python main.py --config=configs/coco_stuff10k.py:smoke --workdir=/tmp/coco_smoke

Data: `python -m data.prepare --dataset=coco_stuff10k --src=.../coco_stuff10k
--out=data/coco_stuff10k` (mmseg layout with *_labelTrainIds.png).
"""

from configs import common, variants


def get_config(arg=None):
    args = variants.parse(arg, iters80k=False)
    c = common.base_config()
    c.model.num_classes = 171
    d = c.data
    d.name, d.format, d.root = "coco_stuff10k", "array_record", "data/coco_stuff10k"
    d.ignore_index, d.reduce_zero_label = 255, True
    d.mean, d.std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)  # ImageNet
    d.crop_size, d.train_scale, d.test_scale = (512, 512), (2048, 512), (2048, 512)
    h = c.model.head
    h.type, h.topk, h.downsample, h.n_layers = "rankseg", 50, 8, 3
    c.loss.img_type, c.loss.img_weight = "bce", 10.0  # the head default (pitfall 3)
    c.optim.weight_decay = 0.0
    c.train.steps, c.train.eval_every, c.train.ckpt_every = 40_000, 4_000, 4_000
    if args.iters80k:
        c.train.steps, c.train.eval_every, c.train.ckpt_every = 80_000, 8_000, 8_000
        c.loss.img_weight = 5.0
    c.test.mode, c.test.crop_size, c.test.stride = "slide", (512, 512), (512, 512)
    if args.vit_l:
        variants.set_vit_l(c, 640)
        c.loss.img_type, c.loss.asl_gamma_neg, c.loss.asl_gamma_pos = "asl", 2.0, 0.0
    if args.baseline:
        variants.set_baseline(c)
    return variants.apply(c, args)
