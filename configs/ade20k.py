"""ADE20K (SceneParsing 150): Segmenter ViT-B/16 + RankSeg, 512x512, 160k iterations.

Official config: segmenter-ori_rankseg_vit-b16_512x512_160k_ade20k.py: kappa 50,
ASL(2, 0) x 10, SGD lr 1e-3 with weight decay 1e-6 (x100 on the ML encoder), mean = std =
127.5.

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

from rankseg_jax.config import base_config, variants


def get_config(arg=None):
    args = variants.parse(arg)
    c = base_config()
    variants.set_dataset(c, "ade20k")
    variants.set_rankseg(c, topk=50, img_loss="asl", img_weight=10.0, weight_decay=1e-6)
    variants.set_schedule(c, 160_000, 16_000)
    return variants.finish(c, args)
