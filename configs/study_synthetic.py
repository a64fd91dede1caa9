"""The "does ranking help?" study on the synthetic benchmark (docs/synthetic_study.md).

    python main.py --config=configs/study_synthetic.py:k=150,seed=0 --workdir=/tmp/s
    python benchmarks/study_synthetic.py            # the whole grid, 3 seeds, and the doc

One row of the paper's ablations per variant string (flags of rankseg_jax/config/variants.py
plus `k`, `seed` and `steps`):

    k=150                        RankSeg = +MT+LS+RA (Table 1, last row), kappa from the paper
    k=150,baseline               Segmenter baseline (Table 1, first row)
    k=150,ablation=mt            +MT: multi-label loss, kappa = K, shared temperature
    k=150,ablation=mt_ls         +MT+LS: sort & select top-kappa, shared temperature
    k=150,oracle=eval            ground-truth classes ranked first at evaluation (Fig. 3)
    k=150,oracle=train_eval      ... in training and evaluation
    k=150,topk=25                kappa sweep (Table 4)
    k=48 | k=150 | k=847         number of classes (small, ADE20K-150, ADE20K-847)

The benchmark's parameters are fixed here, before any run, for the reasons given in
docs/synthetic_study.md ("How the benchmark was chosen"): 8 scene types, 2-8 classes per
image, groups of 4 classes that look alike locally and belong to 4 different scenes (only the
whole image's scene cue tells them apart), the original dataset's long tail, noise and cue.
Every row trains the same small ViT (width 96, 4 layers, 64x64 crops of 8x8 patches) from
scratch for the same steps with the same optimiser; only the head and its loss differ.
"""

from rankseg_jax.config import ConfigError, base_config, variants

# kappa of the paper's configs for a dataset of this size: K // 3 up to ADE20K-150 (50), 100
# for ADE20K-847 and COCO-LVIS-1284 (configs/ade20k_full.py, configs/coco_lvis.py).
PAPER_KAPPA_LARGE_K = 100


def default_kappa(num_classes: int) -> int:
    """The paper's kappa for K classes: K // 3 (at least 1) up to K = 300, else 100."""
    return max(1, num_classes // 3) if num_classes <= 300 else PAPER_KAPPA_LARGE_K


def get_config(arg=None):
    args = variants.parse(arg, k=150, seed=0, steps=600)
    if args.vit_l or args.smoke:
        raise ConfigError("configs/study_synthetic.py has no vit_l/smoke variants (the study is "
                          "CPU-sized; lower `steps` for a quick look)")
    if args.k < 2 or args.steps < 1:
        raise ConfigError(f"configs/study_synthetic.py: k={args.k} (>= 2) and "
                          f"steps={args.steps} (>= 1)")
    c = base_config()
    c.seed = args.seed  # model init, dropout and the synthetic train/val streams
    c.model.num_classes = args.k
    b, h, r = c.model.vit, c.model.head, c.model.rankseg
    b.embed_dim, b.depth, b.num_heads, b.patch_size = 96, 4, 3, 8
    b.img_size, b.drop_path_rate = (64, 64), 0.0
    h.d_model, h.num_heads, h.d_ff, h.dropout, h.n_layers = 96, 3, 384, 0.0, 3
    r.enabled, r.topk, r.downsample = True, default_kappa(args.k), 4
    r.dec_num_heads, r.dec_d_ff = 3, 192
    c.loss.img_type, c.loss.img_weight = "asl", 10.0

    d = c.data
    d.name, d.format, d.root = "synthetic", "synthetic", ""
    d.ignore_index, d.reduce_zero_label = 255, False
    d.crop_size, d.train_scale, d.test_scale = (64, 64), (256, 64), (256, 64)
    s = d.synthetic
    s.num_train, s.num_val, s.image_size = 4096, 128, (80, 96)
    s.min_classes, s.max_classes, s.num_scenes = 2, 8, 8
    s.confusable = 4  # a local look names 4 candidate classes, one per scene (of 8)
    s.in_scene, s.scene_cue, s.tail, s.noise = 0.85, 30.0, 0.8, 6.0  # the dataset defaults

    # One optimiser for every row (the baseline keeps it: set_baseline would drop the decay).
    o = c.optim
    o.name, o.lr, o.weight_decay, o.min_lr = "adamw", 1e-3, 1e-4, 1e-5
    o.warmup_steps = min(20, args.steps // 10)
    t = c.train
    t.steps, t.batch_size, t.log_every = args.steps, 8, 50
    t.eval_every = t.ckpt_every = args.steps  # one evaluation and one checkpoint, at the end
    t.keep_checkpoints, t.keep_best = 1, False
    c.test.mode, c.test.crop_size, c.test.stride = "slide", (64, 64), (48, 48)
    c.test.max_images = 0
    if args.baseline:
        variants.set_baseline(c)
        c.optim.weight_decay = 1e-4
    return variants.apply(c, args)
