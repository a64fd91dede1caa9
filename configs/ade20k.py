"""ADE20K (SceneParsing 150): Segmenter ViT-B/16 + RankSeg, 512x512, 160k iterations.

Official config: segmenter-ori_rankseg_vit-b16_512x512_160k_ade20k.py (spec §7.3).

    python main.py --config=configs/ade20k.py --workdir=runs/ade20k
    python main.py --config=configs/ade20k.py:vit_l --workdir=runs/ade20k_l      # ViT-L, 640
    python main.py --config=configs/ade20k.py:baseline --workdir=runs/ade20k_base
    python main.py --config=configs/ade20k.py:smoke --workdir=/tmp/ade_smoke     # seconds, CPU

Data: prepare once with `python -m data.prepare --dataset=ade20k --src=.../ADEChallengeData2016
--out=data/ade20k`, or read the mmseg folder directly with
`--config.data.format=folder --config.data.root=.../ADEChallengeData2016`. Pretrained backbone:
`--config.init.pretrained=.../B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_384.npz`.
Variants: see configs/variants.py.
"""

from configs import common, variants


def get_config(arg=None):
    args = variants.parse(arg)
    c = common.base_config()
    c.model.num_classes = 150
    d = c.data
    d.name, d.format, d.root = "ade20k", "array_record", "data/ade20k"
    d.ignore_index, d.reduce_zero_label = 255, True
    d.mean = d.std = (127.5, 127.5, 127.5)  # ade20k_meanstd0.5: pixels in [-1, 1]
    d.crop_size, d.train_scale, d.test_scale = (512, 512), (2048, 512), (2048, 512)
    h = c.model.head
    h.type, h.topk, h.downsample, h.n_layers = "rankseg", 50, 8, 3
    c.loss.img_type, c.loss.img_weight = "asl", 10.0
    c.loss.asl_gamma_neg, c.loss.asl_gamma_pos = 2.0, 0.0
    c.optim.weight_decay = 1e-6
    c.optim.decay_mult = variants.RANKSEG_DECAY_MULT
    c.train.steps, c.train.eval_every, c.train.ckpt_every = 160_000, 16_000, 16_000
    c.test.mode, c.test.crop_size, c.test.stride = "slide", (512, 512), (512, 512)
    if args.vit_l:
        variants.set_vit_l(c, 640)
    if args.baseline:
        variants.set_baseline(c)
    return variants.apply(c, args)
