"""Meta-architectures (the RankSeg hosts): encoder + decode head.

`EncoderDecoder` is mmseg's encoder-decoder segmentor (Segmenter, with or without RankSeg):
a ViT backbone and the mask-transformer head classify pixels at 1/patch resolution. Test-time
inference (whole / slide / TTA at the original size) lives in `rankseg_jax.evaluation`.
"""

from __future__ import annotations

import jax
from flax import nnx

from rankseg_jax.rankseg.config import RankSegConfig


class EncoderDecoder(nnx.Module):
    """Backbone + decode head. Params live under `backbone.*` and `head.*`."""

    def __init__(self, backbone: nnx.Module, head: nnx.Module, *, num_classes: int,
                 rankseg: RankSegConfig | None = None):
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes
        self.rankseg = rankseg

    @property
    def is_rankseg(self) -> bool:
        return self.rankseg is not None

    @property
    def use_oracle_train(self) -> bool:
        return self.is_rankseg and self.rankseg.oracle_train

    @property
    def use_oracle_eval(self) -> bool:
        return self.is_rankseg and self.rankseg.oracle_eval

    def __call__(self, images: jax.Array, *, train: bool = False,
                 rng: jax.Array | None = None, gt_present: jax.Array | None = None,
                 full_logits: bool = False) -> dict:
        """Runs backbone and head.

        images: [B, H, W, 3] normalised. train: training semantics (oracle selection when
        configured for training); rng: dropout/drop-path key, None = deterministic.
        gt_present: [B, K] ground-truth class presence, used only by oracle modes.
        full_logits: also return the K-way [B, K, h, w] map (-100 outside the top-kappa).
        Returns the head dict (see models/heads/segmenter.py) plus 'patch_grid' [B, h, w, C].
        """
        r_bb, r_head = (None, None) if rng is None else tuple(jax.random.split(rng))
        grid, class_tokens = self.backbone(images, r_bb)
        oracle = self.use_oracle_train if train else self.use_oracle_eval
        if oracle and gt_present is None:
            raise ValueError("the head is configured for oracle (ground-truth) class selection "
                             "(model.rankseg.oracle), so gt_present [B, K] must be given")
        out = self.head(grid, class_tokens, train=train, rng=r_head,
                        gt_present=gt_present if oracle else None, full_logits=full_logits)
        out["patch_grid"] = grid
        return out
