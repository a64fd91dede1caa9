"""Shared test helpers: the tiny configs of the official fixtures."""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from rankseg_jax import config as config_lib  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "official"


def tiny_config(kind: str = "rankseg", *, num_classes: int = 20, topk: int = 8,
                downsample: int = 2, img_size=(64, 64), embed_dim: int = 64, depth: int = 2,
                heads: int = 2):
    """The fixtures' tiny model (embed 64, 2 layers, 2 heads, K=20, top-k 8, pool 2).

    kind: 'baseline' (Segmenter head, 2 blocks) or 'rankseg' (3 blocks).
    """
    c = config_lib.base_config()
    c.model.num_classes = num_classes
    b = c.model.vit
    b.embed_dim, b.depth, b.num_heads, b.img_size = embed_dim, depth, heads, tuple(img_size)
    b.drop_path_rate = 0.0
    h = c.model.head
    h.d_model, h.num_heads, h.d_ff, h.dropout = embed_dim, heads, 4 * embed_dim, 0.0
    if kind == "baseline":
        c.model.rankseg.enabled, h.n_layers = False, 2
    else:
        r = c.model.rankseg
        r.enabled, h.n_layers, r.topk, r.downsample = True, 3, topk, downsample
    c.data.crop_size = tuple(img_size)
    c.test.crop_size = c.test.stride = (48, 48)
    validate(c)
    return c


def validate(c):
    """The config's validation on the devices its mesh asks for (tests build meshes over a
    subset of the 8 fake CPU devices)."""
    sizes = [c.mesh.data, c.mesh.fsdp, c.mesh.tensor]
    n = jax.device_count() if -1 in sizes else sizes[0] * sizes[1] * sizes[2]
    config_lib.validate(c, num_devices=n, process_count=1)


def small_train_config(**overrides):
    """A tiny RankSeg config on the synthetic dataset for training tests (64x64 crops).

    overrides: {'train.steps': 4, ...} dotted keys.
    """
    c = tiny_config("rankseg", embed_dim=32, heads=2, depth=1)
    c.data.synthetic.image_size = (64, 64)
    c.data.synthetic.num_train = 64
    c.data.train_scale = (128, 64)
    c.data.read_threads = 1
    c.train.batch_size = 4
    c.train.steps = 4
    c.train.log_every = 2
    c.train.eval_every = 0
    c.train.ckpt_every = 2
    c.train.async_checkpointing = False
    c.optim.weight_decay = 1e-6
    c.optim.decay_mult = (("pos_embed", 0.0), ("cls_token", 0.0), ("norm", 0.0),
                          ("decode_head.blocks.0.", 100.0), ("decode_head.ml_fc", 100.0))
    return _apply_overrides(c, overrides)


M2F_FIXTURES = ROOT / "tests" / "fixtures" / "official_mask2former"


def mask2former_fixture_config(run: str):
    """Our config of an official tiny Mask2Former fixture run (`sem_plain`, `pan_rankseg`,
    ...), read from its detectron2 `cfg.dump()` (`configs/{run}.yaml`), on synthetic data."""
    import yaml

    from configs import ade20k_mask2former

    y = yaml.safe_load((M2F_FIXTURES / "configs" / f"{run}.yaml").read_text())["MODEL"]
    sw, head, mf, rs = y["SWIN"], y["SEM_SEG_HEAD"], y["MASK_FORMER"], y["RANKSEG"]
    # Structure the port does not configure: must hold for every fixture.
    assert not sw["APE"] and not mf["PRE_NORM"] and head["NORM"] == "GN"
    assert head["COMMON_STRIDE"] == 4 and y["META_ARCHITECTURE"] == "MaskFormer"
    c = ade20k_mask2former.get_config("smoke")
    c.model.num_classes = head["NUM_CLASSES"]
    s = c.model.swin
    s.embed_dim, s.depths, s.num_heads = sw["EMBED_DIM"], tuple(sw["DEPTHS"]), tuple(
        sw["NUM_HEADS"])
    s.window_size, s.mlp_ratio, s.patch_size = sw["WINDOW_SIZE"], sw["MLP_RATIO"], sw[
        "PATCH_SIZE"]
    s.drop_path_rate, s.qkv_bias, s.patch_norm = sw["DROP_PATH_RATE"], sw["QKV_BIAS"], sw[
        "PATCH_NORM"]
    m = c.model.mask2former
    m.hidden_dim, m.num_queries, m.nheads = mf["HIDDEN_DIM"], mf["NUM_OBJECT_QUERIES"], mf[
        "NHEADS"]
    m.dim_feedforward, m.dec_layers, m.dropout = mf["DIM_FEEDFORWARD"], mf["DEC_LAYERS"], mf[
        "DROPOUT"]
    m.enforce_input_proj, m.size_divisibility = mf["ENFORCE_INPUT_PROJ"], mf["SIZE_DIVISIBILITY"]
    m.enc_layers, m.conv_dim, m.mask_dim = head["TRANSFORMER_ENC_LAYERS"], head["CONVS_DIM"], head[
        "MASK_DIM"]
    m.cosine_classifier, m.gt_oracle = head["USE_LAYERNORM"], rs["USE_GT"]
    t = mf["TEST"]
    m.object_mask_threshold, m.overlap_threshold = t["OBJECT_MASK_THRESHOLD"], t[
        "OVERLAP_THRESHOLD"]
    m.semantic_on, m.panoptic_on = t["SEMANTIC_ON"], t["PANOPTIC_ON"]
    r = c.model.rankseg
    r.enabled = rs["FLAG"]
    if r.enabled:
        r.topk, r.ml_hidden_dim, c.loss.img_weight = rs["TOPK"], rs["HIDDEN_DIM"], float(
            rs["LOSS_WEIGHT"])
    c.data.mean, c.data.std = tuple(y["PIXEL_MEAN"]), tuple(y["PIXEL_STD"])
    validate(c)
    return c


def mask2former_train_config(variant: str = "rankseg,smoke", **overrides):
    """A Mask2Former(+RankSeg) panoptic `:smoke` config cut further for training tests (Swin
    depths 1, 1 encoder and 2 decoder layers: compiles about twice as fast), synthetic
    panoptic data of 64 images, batch 4, 4 steps, no evaluation.

    overrides: {'train.steps': 4, ...} dotted keys, as `small_train_config`.
    """
    from configs import ade20k_panoptic

    c = ade20k_panoptic.get_config(variant)
    m = c.model
    m.swin.depths = (1, 1, 1, 1)
    m.mask2former.enc_layers, m.mask2former.dec_layers = 1, 3
    m.rankseg.ml_read_layer = 1
    c.data.synthetic.num_train, c.data.read_threads = 64, 1
    t = c.train
    t.batch_size, t.steps, t.log_every, t.eval_every, t.ckpt_every = 4, 4, 2, 0, 2
    t.async_checkpointing = False
    return _apply_overrides(c, overrides)


def _apply_overrides(c, overrides: dict):
    """Sets each dotted key of `overrides` ({'train.steps': 4}; lists become tuples), then
    validates; returns `c`."""
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = tuple(value) if isinstance(value, list) else value
    validate(c)
    return c
