"""PASCAL-Context-60: Segmenter ViT-B/16 + RankSeg, 480x480, 80k iterations, kappa = 25.

Official config: segmenter-ori_rankseg_vit-b16_480x480_80k_pascal-context.py:
ASL(2, 0) x 5, weight decay 1e-6 (x100 on the ML encoder). Its dataset file is
`pascal_context_meanstd0.5_test`, so even the periodic validation is 6-scale + flip
(pitfall 6); we reproduce that for the RankSeg config (`:ss` gives single scale) while the
baseline config is single-scale, as official. The position embedding stays at the 512 grid
(32x32) and is resized to 30x30 on every forward, as official.

    python main.py --config=configs/pascal_context.py --workdir=runs/pcontext
    python main.py --config=configs/pascal_context.py:baseline --workdir=runs/pcontext_base
    python main.py --config=configs/pascal_context.py:smoke --workdir=/tmp/pc_smoke

Data: `python -m data.prepare --dataset=pascal_context60 --src=.../VOCdevkit/VOC2010
--out=data/pascal_context60` (after the usual Detail-API conversion to
SegmentationClassContext).
"""

from rankseg_jax.config import base_config, variants


def get_config(arg=None):
    args = variants.parse(arg, ss=False)
    c = base_config()
    variants.set_dataset(c, "pascal_context60")
    variants.set_rankseg(c, topk=25, img_loss="asl", img_weight=5.0, weight_decay=1e-6)
    variants.set_schedule(c, 80_000, 8_000)
    if not (args.baseline or args.ss):
        c.test.scales, c.test.flip = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75), True
    return variants.finish(c, args)
