"""The embedded default: RankSeg on the synthetic many-class dataset, tiny ViT, CPU-friendly.

    python main.py --config=configs/demo.py --workdir=/tmp/demo

No download: the synthetic dataset (rankseg_jax/synthetic.py) is generated on the fly, with
48 classes in 8 scene types, locally ambiguous class pairs that only the whole image
disambiguates, and 2-8 classes per image. The model is a 4-layer ViT of width 96 on 128x128
crops (8x8 patch grid), RankSeg keeps kappa = 16 of the 48 classes per image. It trains
1500 steps of batch 8 (the whole run, compiling included, took 106 s on an idle 2-core AMD
EPYC CPU; measured up to 16 minutes on an earlier host whose two cores were shared with
other jobs), writes checkpoints,
TensorBoard logs and metrics.jsonl, and ends with an evaluation table. `:baseline` trains
the Segmenter baseline for comparison; `:steps=300` is a quicker look.
"""

from rankseg_jax.config import ConfigError, base_config, variants


def get_config(arg=None):
    args = variants.parse(arg, steps=1500)
    c = base_config()
    c.model.num_classes = 48
    b, h, r = c.model.vit, c.model.head, c.model.rankseg
    b.embed_dim, b.depth, b.num_heads, b.img_size = 96, 4, 3, (128, 128)
    b.drop_path_rate = 0.0
    h.d_model, h.num_heads, h.d_ff, h.dropout, h.n_layers = 96, 3, 384, 0.0, 3
    r.enabled, r.topk, r.downsample = True, 16, 4  # kappa ~ K/3 as the paper
    r.dec_num_heads, r.dec_d_ff = 3, 192
    c.loss.img_type, c.loss.img_weight = "asl", 10.0
    d = c.data
    d.name, d.format, d.root = "synthetic", "synthetic", ""
    d.ignore_index, d.reduce_zero_label = 255, False
    d.crop_size, d.train_scale, d.test_scale = (128, 128), (512, 128), (512, 128)
    d.synthetic.num_train, d.synthetic.num_val = 4096, 32
    d.synthetic.image_size = (144, 176)
    d.synthetic.num_scenes = 8
    # Adam-style optimiser: the official SGD at lr 1e-3 needs a pretrained backbone.
    o = c.optim
    o.name, o.lr, o.weight_decay, o.min_lr = "adamw", 1e-3, 1e-4, 1e-5
    o.warmup_steps = min(20, args.steps // 10)  # shorter runs (:steps=10) warm up less
    t = c.train
    t.steps, t.batch_size = args.steps, 8
    t.log_every, t.eval_every, t.ckpt_every = 50, args.steps, 500
    c.test.mode, c.test.crop_size, c.test.stride = "slide", (128, 128), (96, 96)
    c.test.max_images = 32
    if args.baseline:
        variants.set_baseline(c)
        c.optim.name, c.optim.weight_decay = "adamw", 1e-4
    if args.vit_l:
        raise ConfigError("configs/demo.py has no vit_l variant (the demo is CPU-sized)")
    return variants.apply(c, args)
