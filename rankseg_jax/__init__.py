"""rankseg_jax: RankSeg (ECCV 2022) in JAX/Flax NNX.

RankSeg predicts which of the K dataset classes are present in an image, ranks them, keeps
the top-kappa and classifies pixels (Segmenter) or regions (Mask2Former) over those kappa
classes only, with one learned temperature per rank position.

    import rankseg_jax
    config, model = rankseg_jax.load_model("runs/ade20k")   # a run dir, params dir or .pth

Subpackages: `config` (schema, validation), `rankseg` (the RankSeg component), `models`
(backbones, heads, meta-architectures), `data`, `train`, `evaluation`, `convert`.
"""

from __future__ import annotations

__version__ = "0.2.0"


def load_model(source, config=None, *, mesh=None, step=None):
    """A model with weights, ready for inference: returns (config, model).

    source: a run directory (or its checkpoints/ dir; local or gs://...), a params-only
      directory, or a checkpoint file any converter reads (official `.pth`, timm, AugReg
      `.npz`, ...).
    config: the model's config; default: the `config.json` saved in the run directory.
    mesh: where to place the params (default: the config's mesh over all devices).
    step: for a run directory: None / 'latest' (newest intact step), 'best' (best val mIoU,
      from checkpoints/scores.json) or a step number.
    """
    import jax

    from rankseg_jax import checkpointing, models, sharding
    from rankseg_jax.config import serialization

    if config is None:
        config = serialization.load(source)
    mesh = mesh if mesh is not None else sharding.make_mesh(config)
    graphdef, abstract = models.abstract_model(config)
    abstract, _ = sharding.with_shardings(abstract, mesh, config)
    params, _ = checkpointing.resolve_params(
        source, config, abstract, step=step,
        fresh_params=lambda: jax.device_get(models.init_params(config)))
    from flax import nnx

    return config, nnx.merge(graphdef, params)
