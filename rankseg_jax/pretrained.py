"""The public checkpoints the paper's configs start from, and the warning for training without.

`docs/conversion.md` ("Pretrained weights") has the full table (official RankSeg releases,
Swin and Mask2Former checkpoints, and the command that converts each). This module holds the
part the trainer needs: which ImageNet-21k AugReg ViT `.npz` the official Segmenter configs
load (their `pretrained=` in `configs/_base_/models/segmenter_vit-{b,l}16.py`) and which
ImageNet-22k Swin `.pth` the Mask2Former configs load (`MODEL.WEIGHTS` of
`maskformer2_swin_{base,large}_IN21k_384_bs16_160k_res640.yaml`), so that training a paper config
from random initialisation can say what the paper used.
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
SWIN_URL = "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
# (embed_dim, depths) of a patch-4 Swin -> (name, the ImageNet-22k .pth the Mask2Former configs
# start from; detectron2 loads it after `tools/convert-pretrained-swin-model-to-d2.py`, which
# keeps the keys, so either file converts).
IMAGENET22K_SWIN = {
    (128, (2, 2, 18, 2)): ("Swin-B", "swin_base_patch4_window12_384_22k.pth"),
    (192, (2, 2, 18, 2)): ("Swin-L", "swin_large_patch4_window12_384_22k.pth"),
}
SYNTHETIC_DATASETS = ("synthetic", "synthetic_panoptic")


def random_init_warning(config) -> str | None:
    """The warning for training `config` from random initialisation, or None.

    A warning is due when the model trains on a real dataset (not a synthetic one) and neither
    `init.pretrained` nor `init.resume` is set: every official RankSeg/Segmenter config starts
    the ViT from an AugReg `.npz`, every Mask2Former config the Swin from an ImageNet-22k
    `.pth`, and from scratch the paper's numbers are out of reach. Returns the message naming
    the file the paper used.
    """
    m, i = config.model, config.init
    if config.data.name in SYNTHETIC_DATASETS or i.pretrained or i.resume:
        return None
    if m.backbone == "swin":
        return _swin_warning(config)
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


def _swin_warning(config) -> str:
    s = config.model.swin
    known = IMAGENET22K_SWIN.get((s.embed_dim, tuple(s.depths))) if s.patch_size == 4 else None
    name, pth = known or (f"a Swin (width {s.embed_dim}, depths {tuple(s.depths)})", None)
    where = (f"the ImageNet-22k checkpoint {pth} ({SWIN_URL}{pth})" if pth else
             "ImageNet-22k Swin-B/L weights (docs/conversion.md, 'Pretrained weights')")
    return (f"training {name} on {config.data.name} from random initialisation; the paper's "
            f"Mask2Former configs start it from {where}: pass --config.init.pretrained=PATH "
            "(the backbone is loaded, the head keeps its fresh init). From scratch, expect far "
            "lower mIoU / PQ than the paper's.")
