"""COCO+LVIS (1284 classes): Segmenter ViT-B/16 + RankSeg, 512x512, 320k iterations.

The official repo has only the dataset config (no model config): kappa and the loss settings
are our choices (kappa = 100, ASL(2,0) x 10, ADE-style weight decay). Labels are 16-bit PNG
read as int16 with zero reduction (label-1, so 0 -> -1 = ignore), ImageNet mean/std (the
official dataset config).
The official README also reports a 640 setting (`:vit_l` here).

    python main.py --config=configs/coco_lvis.py --workdir=runs/cocolvis
    python main.py --config=configs/coco_lvis.py:smoke --workdir=/tmp/cocolvis_smoke

Data: `python -m data.prepare --dataset=coco_lvis --src=.../lvis --out=data/coco_lvis`
(layout `images/{train2017,val2017}`, `lvis_mask/{train2017,val2017}/*.png`).
"""

from rankseg_jax.config import base_config, variants


def get_config(arg=None):
    args = variants.parse(arg)
    c = base_config()
    variants.set_dataset(c, "coco_lvis")
    variants.set_rankseg(c, topk=100, img_loss="asl", img_weight=10.0, weight_decay=1e-6)
    variants.set_schedule(c, 320_000, 32_000)
    return variants.finish(c, args)
