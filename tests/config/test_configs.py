"""Every config and variant parses, validates and keeps the paper's settings."""

import helpers  # noqa: F401  (puts the repo root on sys.path)
import pytest

from configs import ade20k, ade20k_full, coco_lvis, coco_stuff10k, demo, pascal_context
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
