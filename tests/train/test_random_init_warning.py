"""Training a paper config from random initialisation says what the paper started from."""

import helpers  # noqa: F401  (puts the repo root on sys.path)
import pytest

from configs import ade20k, ade20k_mask2former, ade20k_panoptic, coco_lvis, demo, demo_mask2former
from rankseg_jax import pretrained
from rankseg_jax.train import loop


@pytest.mark.parametrize("variant,file", [
    ("", "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0"),
    ("vit_l", "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1"),
])
def test_paper_configs_warn_with_the_paper_checkpoint(variant, file):
    c = ade20k.get_config(variant)
    message = pretrained.random_init_warning(c)
    npz = f"{file}--imagenet2012-steps_20k-lr_0.01-res_384.npz"
    assert npz in message and f"{pretrained.AUGREG_URL}{npz}" in message
    assert "ade20k" in message and "--config.init.pretrained" in message


@pytest.mark.parametrize("variant,file", [
    ("", "swin_large_patch4_window12_384_22k.pth"),
    ("swin_b", "swin_base_patch4_window12_384_22k.pth"),
])
def test_mask2former_configs_warn_with_the_swin_checkpoint(variant, file):
    for module in (ade20k_mask2former, ade20k_panoptic):
        message = pretrained.random_init_warning(module.get_config(variant))
        assert f"{pretrained.SWIN_URL}{file}" in message, message
        assert "--config.init.pretrained" in message
    assert pretrained.random_init_warning(demo_mask2former.get_config()) is None


def test_no_warning_when_weights_are_given_or_data_are_synthetic():
    c = ade20k.get_config()
    with c.unlocked():
        c.init.pretrained = "/some/B_16.npz"
    assert pretrained.random_init_warning(c) is None
    with c.unlocked():
        c.init.pretrained, c.init.resume = "", "/runs/x"
    assert pretrained.random_init_warning(c) is None
    assert pretrained.random_init_warning(demo.get_config()) is None
    assert pretrained.random_init_warning(coco_lvis.get_config("smoke")) is None


def test_trainer_start_up_prints_it(capsys):
    class Logger:
        def info(self, message):
            print(message)

    c = coco_lvis.get_config()
    loop._warn_if_random_init(c, "random init", Logger())
    out = capsys.readouterr().out
    assert out.startswith("warning: training ViT-B/16 on coco_lvis from random init")
    loop._warn_if_random_init(c, "pretrained /x.npz", Logger())
    loop._warn_if_random_init(c, "workdir checkpoint 100", Logger())
    assert capsys.readouterr().out == ""
