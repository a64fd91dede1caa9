"""The config schema: every option of rankseg_jax and its default, in one place.

Each config file (`configs/ade20k.py`, ...) starts from `base_config()` and changes values; it
never adds keys (the returned ConfigDict is locked). `rankseg_jax.config.validate(config)` runs
once, before anything compiles, and raises `ConfigError` naming the option at fault.

Conventions:
  * sizes are (height, width); image scales are (long side, short side) as in mmseg;
  * `model.rankseg.topk` is kappa, the number of classes kept per image;
  * defaults are the official Segmenter+RankSeg ViT-B/16 ADE20K values unless noted;
    `model.swin` and `model.mask2former` default to the official Mask2Former Swin-L
    (IN-22k, 384, window 12) ADE20K semantic values.

Sections of `model` are named after the component they configure: `model.arch` picks the
meta-architecture (the RankSeg host: `segmenter` pixel classification, `mask2former` region
classification), `model.backbone` the backbone type, whose options live in the section of
the same name (`model.vit`, `model.swin`), `model.head` is the Segmenter mask-transformer
decode head, `model.mask2former` the Mask2Former pixel decoder + transformer decoder +
inference, and `model.rankseg` the RankSeg component every host uses. Options of one host
are ignored by the other (and validated only for the host that reads them).
"""

from __future__ import annotations

import ml_collections as mlc

# Width, depth and heads of the ViT presets (patch 16, MLP ratio 4).
VIT_PRESETS = {
    "ti16": dict(embed_dim=192, depth=12, num_heads=3),
    "s16": dict(embed_dim=384, depth=12, num_heads=6),
    "b16": dict(embed_dim=768, depth=12, num_heads=12),
    "l16": dict(embed_dim=1024, depth=24, num_heads=16),
}

# Width, depths and heads of the Swin presets (`microsoft/Swin-Transformer` configs; the
# window is set separately: 7 for the 224 ImageNet models, 12 for the 384 ones).
SWIN_PRESETS = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "large": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}

# The choices of every enumerated option (validated once, before compiling).
ARCHS = ("segmenter", "mask2former")
BACKBONES = ("vit", "swin")
# The backbone each meta-architecture can host (Mask2Former needs res2..res5 maps).
ARCH_BACKBONES = {"segmenter": ("vit",), "mask2former": ("swin",)}
ML_ENCODERS = ("tran_enc", "tran_dec", "gap_linear")
TEMPERATURES = ("rank_adaptive", "shared")
ORACLES = ("none", "train_eval", "eval")
IMG_LOSSES = ("asl", "bce")
SEG_AVERAGES = ("all_pixels", "valid_pixels")
TEST_MODES = ("whole", "slide")
DTYPES = ("float32", "bfloat16")
DATA_FORMATS = ("folder", "array_record", "synthetic")
BAD_EXAMPLE_POLICIES = ("fail", "skip")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("poly", "constant")
DROPOUT_PRNGS = ("threefry", "rbg")
# Names in jax.checkpoint_policies (what a rematerialised block keeps from its forward).
REMAT_POLICIES = ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable")
# `implementation` of jax.nn.dot_product_attention: XLA's own, or cuDNN's fused flash attention.
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")


class ConfigError(ValueError):
    """A config value is invalid; the message names the option."""


def base_config() -> mlc.ConfigDict:
    """Returns the full schema with defaults (an unlocked ConfigDict)."""
    c = mlc.ConfigDict()
    c.seed = 0  # seed of parameter init, data order, augmentation and dropout

    # ------------------------------------------------------------------ model
    c.model = m = mlc.ConfigDict()
    m.arch = "segmenter"  # meta-architecture: "segmenter" | "mask2former"
    m.backbone = "vit"  # backbone type ("vit" | "swin"); options in the section of that name
    m.num_classes = 150  # K, the number of classes the model predicts
    m.dtype = "float32"  # compute dtype; params stay float32
    m.remat = False  # rematerialise transformer blocks in the backward pass
    # What a rematerialised block saves from its forward pass (jax.checkpoint_policies):
    # "nothing_saveable" recomputes the whole block (least memory); "dots_saveable" keeps
    # every matmul output and recomputes only the cheap element-wise ops and norms;
    # "dots_with_no_batch_dims_saveable" keeps the projections and MLP matmuls but not the
    # attention score / weighted-sum matmuls (which grow with tokens squared).
    m.remat_policy = "nothing_saveable"
    # Attention kernel of the Segmenter ViT blocks and head blocks: "xla" (any backend,
    # the reference numerics) or "cudnn" (cuDNN flash attention: CUDA GPUs, bfloat16 compute,
    # head dim a multiple of 8; not the attention-dropout path, which stays in XLA). jax's
    # cuDNN path refuses odd sequence lengths when differentiated (seen with jax 0.11.2 on
    # an H200: ViT-B/16 at 512² has 1 + 32² = 1025 tokens), so for training at the usual
    # crops it is an inference option; see docs/training.md.
    m.attention = "xla"

    m.vit = b = mlc.ConfigDict()
    b.embed_dim = 768  # ViT width (presets: VIT_PRESETS)
    b.depth = 12  # number of ViT blocks
    b.num_heads = 12  # attention heads per block
    b.mlp_ratio = 4.0  # MLP hidden width = mlp_ratio * embed_dim
    b.patch_size = 16  # patch size in pixels
    # The stored position embedding covers img_size // patch_size; it is resized (torch-exact
    # bicubic) at run time to the input's grid when the grid differs.
    b.img_size = (512, 512)
    b.qkv_bias = True  # bias on the q/k/v projections
    b.drop_rate = 0.0  # dropout after the position embedding and in the blocks
    b.attn_drop_rate = 0.0  # dropout on the attention weights
    b.drop_path_rate = 0.1  # stochastic depth, linear over the blocks
    b.final_norm = True  # LayerNorm after the last block
    b.ln_eps = 1e-6  # LayerNorm epsilon
    # OCE variant: class embeddings appended before layer `oce_start_layer` (-1 = last layer).
    b.oce = False
    b.oce_start_layer = -1  # the layer the OCE class embeddings enter before
    # Run the blocks as one lax.scan over their stacked parameters (stacked per call; the
    # parameters keep their `layers.{i}` paths): one block body to compile instead of
    # `depth`, same values. See docs/training.md.
    b.scan_layers = False

    # Swin Transformer (model.backbone = "swin", Mask2Former's `D2SwinTransformer`): stage i
    # has embed_dim * 2**i channels; outputs res2..res5 (strides 4..32) after per-stage norms.
    m.swin = sw = mlc.ConfigDict()
    sw.embed_dim = 192  # Swin-L (IN-22k 384)
    sw.depths = (2, 2, 18, 2)  # blocks per stage
    sw.num_heads = (6, 12, 24, 48)  # attention heads per stage
    sw.window_size = 12  # 12 for the 384 ImageNet models, 7 for the 224 ones
    sw.mlp_ratio = 4.0  # MLP hidden width = mlp_ratio * stage width
    sw.patch_size = 4  # patch-embedding stride in pixels
    sw.drop_path_rate = 0.3  # stochastic depth, linear over all blocks
    sw.qkv_bias = True  # bias on the q/k/v projections
    sw.patch_norm = True  # LayerNorm after the patch embedding

    # The Segmenter mask-transformer decode head (model.arch = "segmenter").
    m.head = h = mlc.ConfigDict()
    h.d_model = 768  # head width
    h.num_heads = 12  # attention heads per head block
    h.d_ff = 3072  # MLP hidden width of the head blocks
    # Number of head transformer blocks. With RankSeg's `tran_enc` encoder block 0 is the
    # multi-label encoder and blocks 1.. segment (official n_layers=3); otherwise all blocks
    # segment (the Segmenter baseline has 2).
    h.n_layers = 3
    h.dropout = 0.1  # dropout in the head blocks
    h.drop_path_rate = 0.0  # stochastic depth in the head blocks
    h.ln_eps = 1e-5  # LayerNorm epsilon of the head

    # Mask2Former (model.arch = "mask2former"): MSDeformAttn pixel decoder, masked-attention
    # transformer decoder and its inference. Defaults: official ADE20K semantic Swin-L.
    m.mask2former = mf = mlc.ConfigDict()
    mf.hidden_dim = 256  # decoder width D (MASK_FORMER.HIDDEN_DIM)
    mf.num_queries = 100  # 100 semantic, 200 panoptic
    mf.nheads = 8  # decoder and deformable-encoder heads
    mf.dim_feedforward = 2048  # decoder FFN
    # Number of predictions = transformer decoder layers + 1 (official DEC_LAYERS: 10 -> 9
    # layers; prediction 0 reads the learnable queries).
    mf.dec_layers = 10
    mf.enc_layers = 6  # deformable encoder layers (SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS)
    mf.enc_ffn = 1024  # encoder FFN (hard-coded officially, msdeformattn.py:306)
    mf.enc_points = 4  # sampling points per head, level (hard-coded officially)
    mf.conv_dim = 256  # pixel decoder width (SEM_SEG_HEAD.CONVS_DIM; GroupNorm(32) groups)
    mf.mask_dim = 256  # mask_features channels
    mf.dropout = 0.0  # encoder dropout (the decoder's is hard-coded 0.0 officially)
    mf.enforce_input_proj = False  # decoder 1x1 input projections even when conv == hidden
    # Class head: RankSeg's cosine classifier (SEM_SEG_HEAD.USE_LAYERNORM; no bias, no eps)
    # instead of the plain Linear. The official -rankseg configs turn it on.
    mf.cosine_classifier = False
    mf.size_divisibility = 32  # images are zero-padded bottom/right to a multiple of this
    # The official `-gt` oracle (RANKSEG.USE_GT): logits of classes absent from the image's
    # ground truth are set to -100 in the final prediction (training and inference). Uses
    # ground truth at test time: an upper bound, not a deployable model.
    mf.gt_oracle = False
    # Inference.
    mf.object_mask_threshold = 0.8  # panoptic: keep queries with score > threshold
    mf.overlap_threshold = 0.8  # panoptic: drop segments keeping < this share of their mask
    mf.semantic_on = True  # semantic inference (per-pixel class map)
    mf.panoptic_on = False  # panoptic inference (segments, PQ)

    # The RankSeg component: multi-label head, sort & select, rank-adaptive classifier.
    m.rankseg = r = mlc.ConfigDict()
    r.enabled = True  # False = the plain host (Segmenter baseline)
    r.topk = 50  # kappa
    r.ml_encoder = "tran_enc"  # multi-label encoder xi (paper Table 6)
    r.downsample = 8  # adaptive-average-pool size of the multi-label encoder's patch grid
    r.temperature = "rank_adaptive"  # RankNorm scale/bias per rank slot, or one shared
    r.oracle = "none"  # ground-truth class selection: in training+eval or eval only (Fig. 3)
    # Inference-time dynamic kappa: keep ranks whose sigmoid score >= threshold (at least one),
    # at most `topk`; 0 disables (static top-kappa).
    r.dynamic_k_threshold = 0.0
    # `tran_dec` encoder (DETR-style decoder without self-attention, official ablation).
    r.dec_num_heads = 8
    r.dec_d_ff = 2048  # tran_dec: MLP hidden width
    r.dec_layers = 2  # tran_dec: number of decoder layers
    # Mask2Former's multi-label head (`MultiLabelHead`): width (RANKSEG.HIDDEN_DIM; heads =
    # width // 64, FFN 4x width), the decoder layer whose raw query outputs it reads
    # (hard-coded 2 officially) and its dropout (hard-coded 0.1). Its class ranking feeds
    # `ml_norm` = RankNorm(topk + 1) over the rank slots plus the no-object slot.
    r.ml_hidden_dim = 512
    r.ml_read_layer = 2  # see ml_hidden_dim
    r.ml_dropout = 0.1  # see ml_hidden_dim

    # ------------------------------------------------------------------ loss
    c.loss = lo = mlc.ConfigDict()
    lo.seg_weight = 1.0  # weight of the pixel (segmentation) cross-entropy
    lo.seg_average = "all_pixels"  # mmseg-0.17: ignored pixels stay in the denominator
    lo.img_type = "asl"  # RankSeg's image-level (multi-label) loss
    lo.img_weight = 10.0  # weight of the image-level loss (paper Table 5)
    lo.asl_gamma_neg = 2.0  # asymmetric loss: focusing exponent of the negatives
    lo.asl_gamma_pos = 0.0  # asymmetric loss: focusing exponent of the positives
    lo.asl_clip = 0.05  # asymmetric loss: probability margin shifted off the negatives
    lo.asl_eps = 1e-5  # asymmetric loss: log clamp
    # Mask2Former's set criterion (model.arch = "mask2former"; `maskformer_model.py:126-155`).
    # The RankSeg multi-label loss reuses img_weight and asl_* above (official: 10 x ASL(2, 0,
    # clip 0.05)). The matcher uses the same class / mask / dice weights as the losses.
    lo.mask2former = lm = mlc.ConfigDict()
    lm.class_weight = 2.0  # CLASS_WEIGHT (cross-entropy; matcher cost -prob)
    lm.mask_weight = 5.0  # MASK_WEIGHT (point-sampled sigmoid BCE)
    lm.dice_weight = 5.0  # DICE_WEIGHT
    lm.no_object_weight = 0.1  # NO_OBJECT_WEIGHT (cross-entropy weight of the no-object class)
    lm.num_points = 12544  # TRAIN_NUM_POINTS (matcher points and importance-sampled loss points)
    lm.oversample_ratio = 3.0  # OVERSAMPLE_RATIO (candidates = num_points * ratio)
    lm.importance_ratio = 0.75  # IMPORTANCE_SAMPLE_RATIO (share of the most uncertain points)

    # ------------------------------------------------------------------ data
    c.data = d = mlc.ConfigDict()
    d.name = "synthetic"  # see rankseg_jax/data/registry.py for the registry
    d.root = ""  # dataset root on disk (folder layout or prepared ArrayRecord)
    d.format = "synthetic"  # "folder" | "array_record" | "synthetic"
    d.ignore_index = 255  # label value excluded from losses and metrics
    d.reduce_zero_label = False  # label 0 -> ignore and every other label - 1 (mmseg)
    d.mean = (127.5, 127.5, 127.5)  # RGB
    d.std = (127.5, 127.5, 127.5)  # RGB; images are (x - mean) / std
    d.crop_size = (512, 512)  # training crop
    d.train_scale = (2048, 512)  # random resize: this scale times a ratio from ratio_range
    d.ratio_range = (0.5, 2.0)  # random resize ratio range
    d.cat_max_ratio = 0.75  # crop retries while one class covers more than this share
    d.flip_prob = 0.5  # horizontal flip probability
    d.photometric = True  # photometric distortion (brightness, contrast, saturation, hue)
    d.test_scale = (2048, 512)  # Mask2Former: (MAX_SIZE_TEST, MIN_SIZE_TEST) of its test resize
    d.num_workers = 0  # grain worker processes (0 = in-process)
    d.prefetch = 2  # batches read ahead per process (and per worker)
    d.read_threads = 2  # threads per process (or worker) building batches ahead
    d.bad_example_policy = "fail"  # "fail" | "skip" (skip: replaced, counted, logged)
    d.class_names_file = ""  # optional names file (one per line), e.g. for ade20k_full
    # Mask2Former training mappers (model.arch = "mask2former"; detectron2 semantics, not the
    # mmseg `train_scale`/`ratio_range` above): ResizeShortestEdge with the short side drawn
    # from min_size_train and the long side capped at max_size_train, then a `crop_size` crop
    # (`cat_max_ratio` = SINGLE_CATEGORY_MAX_AREA; 1.0 = plain random crop), ColorAugSSD when
    # `photometric`, flip (`flip_prob`), and padding to exactly `crop_size` (image 128, label
    # ignore, panoptic VOID). At most max_targets (class, mask) targets per image (<= the
    # number of queries); an image with more is a bad example (`bad_example_policy`).
    d.min_size_train = tuple(range(320, 1281, 64))  # MIN_SIZE_TRAIN, "choice" sampling
    d.max_size_train = 2560  # MAX_SIZE_TRAIN
    d.max_targets = 100  # see min_size_train
    d.synthetic = s = mlc.ConfigDict()
    s.num_train = 2048  # training images
    s.num_val = 64  # validation images
    s.image_size = (512, 512)  # (H, W) of every image
    s.min_classes = 2  # fewest classes per image
    s.max_classes = 8  # most classes per image
    s.num_scenes = 8  # scene types (class co-occurrence groups)
    # Difficulty knobs of the synthetic dataset (rankseg_jax/data/synthetic.py; the defaults
    # give the original dataset; docs/synthetic_study.md chooses them for the study):
    s.confusable = 2  # classes sharing one local look (colour + texture), in different scenes
    s.in_scene = 0.85  # probability that a class of an image comes from its scene's pool
    s.scene_cue = 30.0  # amplitude (grey levels) of the scene's tinted ramp: the global cue
    s.tail = 0.8  # exponent of the long tail of class frequencies inside a scene
    s.noise = 6.0  # std of the per-pixel noise (texture difficulty)
    # `synthetic_panoptic` (things with several instances on stuff): the first num_things of
    # the model.num_classes classes are things, the rest stuff; at most max_instances thing
    # instances per image (plus up to 3 stuff segments and an optional crowd).
    s.num_things = 20
    s.max_instances = 8  # see num_things

    # ------------------------------------------------------------------ train
    c.train = t = mlc.ConfigDict()
    t.steps = 160_000  # training iterations
    t.batch_size = 8  # global batch
    t.grad_accum = 1  # micro-batches per step (the global batch is split, not multiplied)
    t.log_every = 50  # steps between log lines / metrics.jsonl records
    t.eval_every = 16_000  # steps between evaluations (0 = never; else the last step evaluates too)
    t.ckpt_every = 16_000  # steps between checkpoints (the last step always saves)
    t.keep_checkpoints = 3  # the newest N checkpoints are kept
    t.keep_best = True  # also keep the checkpoint with the best val mIoU
    t.async_checkpointing = True  # save in the background while training continues
    t.check_finite_every = 1  # host check of loss/grad finiteness every N steps (0 = never)
    # (start, stop): write a jax.profiler trace of steps start..stop-1 (0-based, this run's
    # step numbers) to <workdir>/profile; () = no profile. CLI: --profile=START:STOP.
    t.profile_steps = ()
    # PRNG of the step's dropout / drop-path / point-sampling key: "threefry" (JAX default)
    # or "rbg" (XLA's RngBitGenerator, the usual choice on TPU; another random stream,
    # equally deterministic and resume-exact; measured 9% SLOWER on XLA:CPU, see
    # BENCHMARKS.md; unmeasured on GPU/TPU). The run key itself stays threefry.
    t.dropout_prng = "threefry"

    # ------------------------------------------------------------------ optimizer
    c.optim = o = mlc.ConfigDict()
    o.name = "sgd"  # "sgd" | "adamw"
    o.lr = 1e-3  # base learning rate
    o.momentum = 0.9  # SGD momentum
    o.weight_decay = 0.0  # SGD: coupled L2 (torch); AdamW: decoupled
    # (substring of the official parameter name, decay multiplier); mmcv semantics: longest key
    # first, first match wins.
    o.decay_mult = (("pos_embed", 0.0), ("cls_token", 0.0), ("norm", 0.0))
    o.schedule = "poly"  # lr schedule after warmup
    o.power = 0.9  # poly exponent
    o.min_lr = 1e-5  # poly end value
    o.warmup_steps = 0  # mmcv linear warmup over the first N iterations (0 = none)
    # Warmup starts at warmup_ratio * lr. The official configs do not warm up; mmcv's hook
    # default is 0.1; mmseg's transformer configs that do (Swin, SegFormer: linear, 1500
    # iterations) use 1e-6.
    o.warmup_ratio = 1e-6
    # Global-norm clipping of the whole gradient, torch `clip_grad_norm_` (coefficient
    # min(1, max / (norm + 1e-6))); 0 disables.
    o.clip_grad_norm = 0.0
    o.b1 = 0.9  # AdamW beta1
    o.b2 = 0.999  # AdamW beta2
    o.eps = 1e-8  # AdamW epsilon
    # Parameter groups on OUR parameter paths ('.'-joined, e.g. "backbone.norm0.scale"),
    # used by Mask2Former (the Segmenter configs keep `decay_mult` on official mmseg names;
    # these apply on top of it and default to no-ops). Learning-rate multipliers: paths under
    # `backbone.` (BACKBONE_MULTIPLIER) and under `ml_head.` (RankSeg's multi-label head,
    # SOLVER.MLHEAD_MULTIPLIER; `ml_norm` is not part of it). no_decay_paths: regexes
    # (re.search) of parameters that get weight decay 0 (norms, embeddings).
    o.backbone_lr_mult = 1.0
    o.ml_head_lr_mult = 1.0  # see backbone_lr_mult
    o.no_decay_paths = ()  # see backbone_lr_mult

    # ------------------------------------------------------------------ evaluation
    c.test = e = mlc.ConfigDict()
    e.mode = "slide"  # whole image or sliding windows
    e.crop_size = (512, 512)  # slide window size
    e.stride = (512, 512)  # slide window stride
    e.scales = (1.0,)  # multi-scale ratios, e.g. (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    e.flip = False  # also average the horizontally flipped prediction
    # Mask2Former's multi-scale test-time augmentation (detectron2 TEST.AUG): each view
    # re-resizes the test image (already at its short side min(data.test_scale)) to one of
    # these short sides, long side at most `aug_max_size`, unflipped and (with test.flip)
    # flipped; the views' `sem_seg` maps are averaged. () = off (the single view).
    # Semantic only, as officially. Segmenter uses test.scales instead.
    e.aug_min_sizes = ()
    e.aug_max_size = 4480  # TEST.AUG.MAX_SIZE
    e.max_images = 0  # evaluate on the first N images only (0 = all)
    # Memory-light inference (docs/evaluation.md): logits only for the union of the classes the
    # windows chose, argmax over `class_chunk` classes at a time at full resolution. False =
    # the literal full-K path (B x K x H x W float32), for checks and benchmarks.
    e.memory_light = True
    e.class_chunk = 16  # 16 vs 64: 76 vs 182 MiB XLA temp at 512x683 (BENCHMARKS.md)
    # Original sizes are padded up to a multiple of this before the full-resolution combine, so
    # images of different sizes share compilations (the padding is cropped off; exact).
    # Mask2Former: the same for its mask resize / semantic / panoptic post-processing.
    e.size_bucket = 32
    # Mask2Former panoptic evaluation: also write the predictions in COCO panoptic format
    # (`<workdir>/eval_<split>[_step<N>]_panoptic/` PNGs + `..._panoptic.json`), as
    # detectron2's COCOPanopticEvaluator does before `pq_compute`.
    e.save_panoptic = False

    # ------------------------------------------------------------------ sharding
    c.mesh = ms = mlc.ConfigDict()
    ms.data = -1  # -1 fills the remaining devices
    ms.fsdp = 1  # devices that shard parameters and optimizer state (and the batch)
    ms.tensor = 1  # devices that split attention heads and MLP columns (Megatron)
    # FSDP shards a parameter (its largest dim divisible by mesh.fsdp) only above this many
    # elements; smaller ones are replicated (gathering them costs more than it saves).
    ms.fsdp_min_size = 1 << 18

    # ------------------------------------------------------------------ initialisation
    c.init = i = mlc.ConfigDict()
    i.resume = ""  # orbax checkpoint dir of ours to start from
    i.pretrained = ""  # backbone weights (.npz AugReg, timm .pth/.safetensors) or full .pth
    return c


def apply_vit_preset(config: mlc.ConfigDict, name: str) -> None:
    """Sets backbone and head widths from a ViT preset name (`ti16`, `s16`, `b16`, `l16`)."""
    if name not in VIT_PRESETS:
        raise ConfigError(f"unknown ViT preset {name!r}; choose one of {sorted(VIT_PRESETS)}")
    p = VIT_PRESETS[name]
    b, h = config.model.vit, config.model.head
    b.embed_dim, b.depth, b.num_heads = p["embed_dim"], p["depth"], p["num_heads"]
    h.d_model, h.num_heads, h.d_ff = p["embed_dim"], p["num_heads"], 4 * p["embed_dim"]


def apply_swin_preset(config: mlc.ConfigDict, name: str) -> None:
    """Sets `model.swin` width, depths and heads from a preset ('tiny' ... 'large')."""
    if name not in SWIN_PRESETS:
        raise ConfigError(f"unknown Swin preset {name!r}; choose one of {sorted(SWIN_PRESETS)}")
    sw = config.model.swin
    p = SWIN_PRESETS[name]
    sw.embed_dim, sw.depths, sw.num_heads = p["embed_dim"], p["depths"], p["num_heads"]
