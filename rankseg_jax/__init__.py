"""rankseg_jax: RankSeg (ECCV 2022) in JAX/Flax NNX.

Segmenter (ViT) + RankSeg: predict which of the K dataset classes are present, rank them,
keep the top-kappa and classify pixels over those kappa classes only, with one learned
temperature per rank position.
"""

__version__ = "0.1.0"
