"""Models: backbones, decode heads, meta-architectures, built from the config by type name."""

from rankseg_jax.models.build import abstract_model, build_model, init_params

__all__ = ["abstract_model", "build_model", "init_params"]
