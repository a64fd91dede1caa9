"""ADE20K-Full (847 classes): Segmenter ViT-B/16 + RankSeg, 512x512, 160k iterations.

The official repo has only the dataset config for ADE20K-Full (and a broken one: it names a
`LoadAnnotationsI16` that does not exist), no model config: kappa and the loss settings here
are our choices (kappa = 100, ASL(2,0) x 10, weight decay as the ADE20K RankSeg config), not
the paper's unpublished ones. Labels are 16-bit TIFF read as int16, ignore = -1 (65535), no
zero reduction; ImageNet mean/std (the official
dataset config).

    python main.py --config=configs/ade20k_full.py --workdir=runs/adefull
    python main.py --config=configs/ade20k_full.py:smoke --workdir=/tmp/adefull_smoke

Data: the MaskFormer `prepare_ade20k_full_sem_seg.py` output in the RankSeg layout
`{train,val}/{image,label}`, then `python -m data.prepare --dataset=ade20k_full --src=...
--out=data/ade20k_full`. Class names: `--config.data.class_names_file=...` (data/README.md).
"""

from rankseg_jax.config import base_config, variants


def get_config(arg=None):
    args = variants.parse(arg)
    c = base_config()
    variants.set_dataset(c, "ade20k_full")
    variants.set_rankseg(c, topk=100, img_loss="asl", img_weight=10.0, weight_decay=1e-6)
    variants.set_schedule(c, 160_000, 16_000)
    return variants.finish(c, args)
