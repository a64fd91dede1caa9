"""Every config and variant parses, validates and keeps the paper's settings."""

import helpers  # noqa: F401  (puts the repo root on sys.path)
import pytest

from configs import (
    ade20k,
    ade20k_full,
    ade20k_mask2former,
    ade20k_panoptic,
    coco_lvis,
    coco_stuff10k,
    demo,
    pascal_context,
)
from rankseg_jax import config as config_lib

MODULES = {"ade20k": ade20k, "coco_stuff10k": coco_stuff10k, "pascal_context": pascal_context,
           "ade20k_full": ade20k_full, "coco_lvis": coco_lvis, "demo": demo}
VARIANTS = ["", "baseline", "smoke", "vit_l", "ablation=mt", "ablation=mt_ls",
            "ablation=sort_only", "ml_encoder=tran_dec", "ml_encoder=gap_linear", "topk=25",
            "img_weight=5", "oracle=eval", "oracle=train_eval", "oce", "baseline,smoke",
            "vit_l,smoke", "temperature=shared"]


@pytest.mark.parametrize("name", sorted(MODULES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_configs_validate(name, variant):
    if name == "demo" and "vit_l" in variant:
        with pytest.raises(config_lib.ConfigError, match="vit_l"):
            MODULES[name].get_config(variant)
        return
    config = MODULES[name].get_config(variant)
    config_lib.validate(config, check_files=False)
    assert config.model.rankseg.topk <= config.model.num_classes


def test_paper_settings():
    c = ade20k.get_config()
    assert (c.model.num_classes, c.model.rankseg.topk, c.model.rankseg.downsample) == (150, 50, 8)
    assert (c.loss.img_type, c.loss.img_weight, c.optim.weight_decay) == ("asl", 10.0, 1e-6)
    assert ("decode_head.ml_fc", 100.0) in c.optim.decay_mult
    assert c.data.mean == (127.5,) * 3 and c.train.steps == 160_000
    coco = coco_stuff10k.get_config()
    assert (coco.loss.img_type, coco.optim.weight_decay, coco.model.num_classes) == ("bce", 0.0,
                                                                                     171)
    assert coco_stuff10k.get_config("iters80k").loss.img_weight == 5.0
    assert coco_stuff10k.get_config("vit_l").loss.img_type == "asl"
    pc = pascal_context.get_config()
    assert (pc.model.rankseg.topk, pc.loss.img_weight, len(pc.test.scales)) == (25, 5.0, 6)
    assert pascal_context.get_config("ss").test.scales == (1.0,)
    vl = ade20k.get_config("vit_l")
    assert (vl.model.vit.embed_dim, vl.model.vit.depth) == (1024, 24)
    assert vl.data.crop_size == (640, 640) and vl.model.vit.img_size == (640, 640)
    base = ade20k.get_config("baseline")
    assert not base.model.rankseg.enabled and base.optim.weight_decay == 0.0
    mt = ade20k.get_config("ablation=mt")
    assert mt.model.rankseg.topk == 150 and mt.model.rankseg.temperature == "shared"
    smoke = coco_lvis.get_config("smoke")
    assert smoke.model.num_classes == 1284 and smoke.data.name == "synthetic"


def test_unknown_variant_is_an_error():
    with pytest.raises(config_lib.ConfigError, match="unknown config variant 'vitl'"):
        ade20k.get_config("vitl")
    with pytest.raises(config_lib.ConfigError, match="ablation"):
        ade20k.get_config("ablation=xyz")


# ------------------------------------------------------------------ Mask2Former

M2F_MODULES = {"ade20k_mask2former": ade20k_mask2former, "ade20k_panoptic": ade20k_panoptic}
M2F_VARIANTS = ["", "rankseg", "gt", "swin_b", "smoke", "rankseg,smoke", "gt,smoke",
                "rankseg,swin_b", "rankseg,topk=50", "rankseg,temperature=shared",
                "rankseg,img_weight=5"]


@pytest.mark.parametrize("name", sorted(M2F_MODULES))
@pytest.mark.parametrize("variant", M2F_VARIANTS)
def test_mask2former_configs_validate(name, variant):
    config = M2F_MODULES[name].get_config(variant)
    config_lib.validate(config, check_files=False, num_devices=1, process_count=1)
    assert config.model.arch == "mask2former" and config.model.backbone == "swin"


def test_mask2former_official_settings():
    c = ade20k_mask2former.get_config()
    sw, mf, r = c.model.swin, c.model.mask2former, c.model.rankseg
    assert (sw.embed_dim, sw.depths, sw.num_heads, sw.window_size, sw.drop_path_rate) == (
        192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 0.3)
    assert (mf.num_queries, mf.dec_layers, mf.enc_layers, mf.hidden_dim, mf.conv_dim) == (
        100, 10, 6, 256, 256)
    assert (mf.semantic_on, mf.panoptic_on, mf.cosine_classifier, mf.gt_oracle) == (
        True, False, False, False)
    assert not r.enabled and c.data.mean == (123.675, 116.28, 103.53)
    assert (c.optim.name, c.optim.lr, c.optim.weight_decay, c.optim.clip_grad_norm) == (
        "adamw", 1e-4, 0.05, 0.01)
    rs = ade20k_mask2former.get_config("rankseg")
    assert (rs.model.rankseg.enabled, rs.model.rankseg.topk, rs.model.rankseg.ml_hidden_dim,
            rs.model.rankseg.ml_read_layer, rs.model.mask2former.cosine_classifier) == (
        True, 150, 512, 2, True)
    assert ade20k_mask2former.get_config("gt").model.mask2former.gt_oracle
    assert ade20k_mask2former.get_config("swin_b").model.swin.embed_dim == 128
    pan = ade20k_panoptic.get_config()
    assert (pan.model.mask2former.num_queries, pan.model.mask2former.panoptic_on) == (200, True)
    smoke = ade20k_panoptic.get_config("rankseg,smoke")
    assert smoke.data.name == "synthetic_panoptic" and smoke.model.num_classes == 150
    assert smoke.data.synthetic.num_things == 100  # ADE20K panoptic: 100 things + 50 stuff
    config_lib.validate(smoke, num_devices=1, process_count=1)  # files checked: none needed
    assert ade20k_mask2former.get_config("smoke").data.name == "synthetic"
    # Training (train_net.py, the mappers): groups, schedule, clip, data.
    o, d = c.optim, c.data
    assert (o.backbone_lr_mult, o.ml_head_lr_mult, rs.optim.ml_head_lr_mult) == (0.1, 1.0, 0.1)
    assert (o.power, o.min_lr, o.warmup_steps, o.b1, o.b2, o.eps) == (
        0.9, 0.0, 0, 0.9, 0.999, 1e-8)
    assert o.decay_mult == () and r"^ml_head\.cls_emb$" in o.no_decay_paths
    assert d.min_size_train == tuple(range(320, 1281, 64)) and d.max_size_train == 2560
    assert (d.crop_size, d.cat_max_ratio, d.max_targets, pan.data.max_targets) == (
        (640, 640), 1.0, 100, 200)
    assert (pan.data.name, c.data.name) == ("ade20k_panoptic", "ade20k")
    lm = c.loss.mask2former
    assert (lm.class_weight, lm.mask_weight, lm.dice_weight, lm.no_object_weight,
            lm.num_points, lm.oversample_ratio, lm.importance_ratio) == (
        2.0, 5.0, 5.0, 0.1, 12544, 3.0, 0.75)


def test_mask2former_training_config_errors():
    def fails(match, variant="smoke", config=ade20k_mask2former, **changes):
        c = config.get_config(variant)
        for key, value in changes.items():
            node = c
            *parents, leaf = key.split("__")
            for part in parents:
                node = node[part]
            node[leaf] = value
        with pytest.raises(config_lib.ConfigError, match=match):
            config_lib.validate(c, check_files=False, num_devices=1, process_count=1)

    fails(r"data\.max_targets=11 must be in \[1, model\.mask2former\.num_queries=10\]",
          data__max_targets=11)
    fails(r"data\.min_size_train", data__min_size_train=())
    fails(r"loss\.mask2former\.num_points", loss__mask2former__num_points=0)
    fails(r"loss\.mask2former\.importance_ratio", loss__mask2former__importance_ratio=1.5)
    fails(r"loss\.img_type='bce'", variant="rankseg,smoke", loss__img_type="bce")
    fails(r"data\.synthetic\.num_things=150", config=ade20k_panoptic,
          data__synthetic__num_things=150)
    fails(r"optim\.clip_grad_norm", optim__clip_grad_norm=-1.0)


def test_mask2former_config_errors():
    def fails(match, variant="rankseg", **changes):
        """changes: model options, `__` for a section dot (mask2former__conv_dim=...)."""
        c = ade20k_mask2former.get_config(variant)
        for key, value in changes.items():
            *sections, leaf = key.split("__")
            target = c.model
            for section in sections:
                target = target[section]
            target[leaf] = value
        with pytest.raises(config_lib.ConfigError, match=match):
            config_lib.validate(c, check_files=False, num_devices=1, process_count=1)

    fails(r"model\.mask2former\.conv_dim=128 != hidden_dim=256",
          mask2former__conv_dim=128)
    fails(r"model\.rankseg\.ml_read_layer=9 must index one of the 9 decoder layers",
          rankseg__ml_read_layer=9)
    fails(r"model\.mask2former\.conv_dim=48 must be a multiple of 32",
          variant="", mask2former__conv_dim=48, mask2former__hidden_dim=48)
    fails(r"model\.rankseg\.topk=151", rankseg__topk=151)
    fails(r"model\.rankseg\.ml_hidden_dim=100", rankseg__ml_hidden_dim=100)
    fails(r"model\.mask2former\.hidden_dim=250 is not divisible by model\.mask2former\.nheads",
          variant="", mask2former__hidden_dim=250)
    fails(r"model\.backbone='vit' cannot feed model\.arch='mask2former'", backbone="vit")
    fails(r"model\.swin: stage 0 width 100", swin__embed_dim=100)
    fails(r"model\.rankseg\.oracle='eval' is not implemented", rankseg__oracle="eval")
    fails(r"model\.mask2former\.semantic_on", variant="", mask2former__semantic_on=False)
    with pytest.raises(config_lib.ConfigError, match="choose one"):
        ade20k_mask2former.get_config("rankseg,gt")
    with pytest.raises(config_lib.ConfigError, match="unknown config variant 'vit_l'"):
        ade20k_mask2former.get_config("vit_l")
    with pytest.raises(config_lib.ConfigError, match=r"data.root=.* does not exist"):
        config_lib.validate(ade20k_panoptic.get_config(), num_devices=1, process_count=1)


def test_options_of_the_other_host_are_ignored():
    m2f = ade20k_mask2former.get_config("rankseg")
    m2f.model.head.d_model, m2f.model.vit.num_heads = 100, 7  # Segmenter/ViT-only options
    m2f.model.rankseg.downsample = 3
    config_lib.validate(m2f, check_files=False, num_devices=1, process_count=1)
    seg = ade20k.get_config()
    seg.model.mask2former.conv_dim, seg.model.swin.depths = 33, (1,)  # Mask2Former-only
    seg.model.rankseg.ml_read_layer = 99
    config_lib.validate(seg, check_files=False, num_devices=1, process_count=1)
