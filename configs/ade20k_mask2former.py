"""ADE20K semantic segmentation: Mask2Former Swin-L (IN-22k, 384), 100 queries, 640 crops.

Official configs (RankSeg repo, `mask2former/configs/ade20k/semantic-segmentation/swin/`):
`maskformer2_swin_large_IN21k_384_bs16_160k_res640{,-rankseg,-gt}.yaml`.

    python main.py --config=configs/ade20k_mask2former.py --mode=eval \\
        --checkpoint=model_final.pkl              # official detectron2 weights, converted
    configs/ade20k_mask2former.py:rankseg      the -rankseg config (kappa = K = 150, cosine
                                               classifier, ML head on decoder layer 2)
    configs/ade20k_mask2former.py:gt           the -gt oracle (GT classes at inference)
    configs/ade20k_mask2former.py:swin_b       Swin-B backbone (IN-22k 384, window 12)
    configs/ade20k_mask2former.py:rankseg,tta  evaluated with the official multi-scale + flip
                                               test (the model zoo's "ms+flip" mIoU)
    configs/ade20k_mask2former.py:rankseg,smoke  the same code, tiny, on synthetic data

Training (`python main.py --config=configs/ade20k_mask2former.py:rankseg --workdir=...`) follows
the official recipe (docs/training.md, "Mask2Former"): the detectron2 semantic mapper, Hungarian
matching and point-sampled losses, AdamW with the official parameter groups. Backbone
initialisation from the ImageNet-22k Swin release: `--config.init.pretrained=
swin_large_patch4_window12_384_22k.pth` (or the `.pkl` of Mask2Former's
`tools/convert-pretrained-swin-model-to-d2.py`).
"""

from rankseg_jax.config import base_config, variants


def get_config(arg=None):
    args = variants.parse_mask2former(arg)
    c = base_config()
    variants.set_mask2former(c, num_queries=100, panoptic=False)
    return variants.finish_mask2former(c, args)
