"""ADE20K panoptic segmentation: Mask2Former Swin-L (IN-22k, 384), 200 queries, 640 crops.

Official configs (RankSeg repo, `mask2former/configs/ade20k/panoptic-segmentation/swin/`):
`maskformer2_swin_large_IN21k_384_bs16_160k{,-rankseg,-gt}.yaml`. Panoptic and semantic
inference (PQ and mIoU of the same model); no instance inference (`INSTANCE_ON: False` in
the fork). Variants as `configs/ade20k_mask2former.py` (`rankseg`, `gt`, `swin_b`, `smoke`).

Data: `data/ade20k_panoptic`, the COCO-panoptic files of Mask2Former's
`datasets/prepare_ade20k_pan_seg.py` prepared with `python -m data.prepare
--dataset=ade20k_panoptic`; training uses the official panoptic mapper (one target per non-crowd
segment). `:smoke` trains on `synthetic_panoptic` (100 things + 50 stuff, no download).
"""

from rankseg_jax.config import base_config, variants


def get_config(arg=None):
    args = variants.parse_mask2former(arg)
    c = base_config()
    variants.set_mask2former(c, num_queries=200, panoptic=True)
    return variants.finish_mask2former(c, args)
