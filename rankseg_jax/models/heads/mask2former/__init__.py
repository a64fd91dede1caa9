"""Mask2Former head: the MSDeformAttn pixel decoder and the masked-attention transformer
decoder (official `mask2former/modeling/{pixel_decoder,transformer_decoder}`)."""

from rankseg_jax.models.heads.mask2former.pixel_decoder import MSDeformAttnPixelDecoder
from rankseg_jax.models.heads.mask2former.transformer_decoder import (
    MultiScaleMaskedTransformerDecoder,
)

__all__ = ["MSDeformAttnPixelDecoder", "MultiScaleMaskedTransformerDecoder"]
