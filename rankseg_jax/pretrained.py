"""The public checkpoints the paper's configs start from, and the warning for training without.

`docs/conversion.md` ("Pretrained weights") has the full table (official RankSeg releases,
Swin and Mask2Former checkpoints, and the command that converts each). This module holds the
part the trainer needs: which ImageNet-21k AugReg ViT `.npz` the official Segmenter configs
load (their `pretrained=` in `configs/_base_/models/segmenter_vit-{b,l}16.py`), so that
training a paper config from random initialisation can say what the paper used.
"""

from __future__ import annotations

AUGREG_URL = "https://storage.googleapis.com/vit_models/augreg/"

# (embed_dim, depth) of a patch-16 ViT -> (name, the .npz file the official configs load).
AUGREG_VIT = {
    (768, 12): ("ViT-B/16", "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0"
                            "--imagenet2012-steps_20k-lr_0.01-res_384.npz"),
    (1024, 24): ("ViT-L/16", "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1"
                             "--imagenet2012-steps_20k-lr_0.01-res_384.npz"),
}


def random_init_warning(config) -> str | None:
    """The warning for training `config` from random initialisation, or None.

    A warning is due when the model trains on a real dataset (not the synthetic one) with a
    ViT backbone and neither `init.pretrained` nor `init.resume` is set: every official
    RankSeg/Segmenter config starts the backbone from an AugReg `.npz`, and from scratch the
    paper's numbers are out of reach. Returns the message naming the file the paper used.
    """
    m, i = config.model, config.init
    if config.data.name == "synthetic" or i.pretrained or i.resume or m.backbone != "vit":
        return None
    v = m.vit
    known = AUGREG_VIT.get((v.embed_dim, v.depth)) if v.patch_size == 16 else None
    if known is None:
        return (f"training a ViT (width {v.embed_dim}, depth {v.depth}, patch {v.patch_size}) "
                f"on {config.data.name} from random initialisation; the paper starts "
                "ViT-B/16 and ViT-L/16 from ImageNet-21k AugReg weights (docs/conversion.md, "
                "'Pretrained weights'); set --config.init.pretrained=PATH")
    name, npz = known
    return (f"training {name} on {config.data.name} from random initialisation; the paper "
            f"starts it from the ImageNet-21k AugReg checkpoint {npz} ({AUGREG_URL}{npz}): "
            "pass --config.init.pretrained=PATH/TO/that.npz (docs/conversion.md, 'Pretrained "
            "weights'). From scratch, expect far lower mIoU than the paper's.")
