"""Backbones other than the Segmenter ViT (`rankseg_jax.models.vit`)."""
