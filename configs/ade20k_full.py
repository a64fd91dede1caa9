"""ADE20K-Full (847 classes): Segmenter ViT-B/16 + RankSeg, 512x512, 160k iterations.

The official repo has only the dataset config for ADE20K-Full (and a broken one: it names a
`LoadAnnotationsI16` that does not exist), no model config: kappa and the loss settings here
are our choices (kappa = 100, ASL(2,0) x 10, wd as the ADE20K RankSeg config), not the
paper's unpublished ones. Labels are 16-bit TIFF read as int16, ignore = -1 (65535), no
zero reduction; ImageNet mean/std (spec §8.1, §8.3).

    python main.py --config=configs/ade20k_full.py --workdir=runs/adefull
    python main.py --config=configs/ade20k_full.py:smoke --workdir=/tmp/adefull_smoke

Data: the MaskFormer `prepare_ade20k_full_sem_seg.py` output in the RankSeg layout
`{train,val}/{image,label}`, then `python -m data.prepare --dataset=ade20k_full --src=...
--out=data/ade20k_full`. Class names: `--config.data.class_names_file=...` (see data/README.md).
"""

from configs import common, variants


def get_config(arg=None):
    args = variants.parse(arg)
    c = common.base_config()
    c.model.num_classes = 847
    d = c.data
    d.name, d.format, d.root = "ade20k_full", "array_record", "data/ade20k_full"
    d.ignore_index, d.reduce_zero_label = -1, False
    d.mean, d.std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    d.crop_size, d.train_scale, d.test_scale = (512, 512), (2048, 512), (2048, 512)
    h = c.model.head
    h.type, h.topk, h.downsample, h.n_layers = "rankseg", 100, 8, 3
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
