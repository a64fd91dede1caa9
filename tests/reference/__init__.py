"""Independent NumPy float64 reference of the official RankSeg/Segmenter model.

Derived from the written spec only. Nothing here imports ``rankseg_jax``: it exists to test that
package against an independent derivation. See ``numpy_ref`` (model, inference, losses) and
``random_official_sd`` (random official-format state dicts).
"""
