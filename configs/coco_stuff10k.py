"""COCO-Stuff-10k (171 classes): Segmenter ViT-B/16 + RankSeg, 512x512, 40k iterations.

Official configs: segmenter-ori_rankseg_vit-b16_512x512_{40k,80k}_coco-stuff10k.py and the
ViT-L 640 40k config. The official ViT-B RankSeg configs use the head's default
BCE image loss (not ASL), no weight decay and ImageNet mean/std; the ViT-L one uses ASL(2, 0).

    python main.py --config=configs/coco_stuff10k.py --workdir=runs/cocostuff
    python main.py --config=configs/coco_stuff10k.py:iters80k --workdir=runs/cocostuff80k
    python main.py --config=configs/coco_stuff10k.py:vit_l --workdir=runs/cocostuff_l
    python main.py --config=configs/coco_stuff10k.py:smoke --workdir=/tmp/coco_smoke

Data: `python -m data.prepare --dataset=coco_stuff10k --src=.../coco_stuff10k
--out=data/coco_stuff10k` (mmseg layout with *_labelTrainIds.png).
"""

from rankseg_jax.config import base_config, variants


def get_config(arg=None):
    args = variants.parse(arg, iters80k=False)
    c = base_config()
    variants.set_dataset(c, "coco_stuff10k")
    variants.set_rankseg(c, topk=50, img_loss="bce", img_weight=10.0, weight_decay=0.0)
    variants.set_schedule(c, 40_000, 4_000)
    if args.iters80k:
        variants.set_schedule(c, 80_000, 8_000)
        c.loss.img_weight = 5.0
    if args.vit_l:
        c.loss.img_type = "asl"
    return variants.finish(c, args)
