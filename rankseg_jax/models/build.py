"""`build_model(config)`: the model described by `config.model`, dispatched by type name.

`model.arch` names the meta-architecture (the RankSeg host), `model.backbone` the backbone;
each builder reads its frozen config dataclass once from the ConfigDict. Parameter paths are
a public contract (docs/parameters.md).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections as mlc
from flax import nnx

from rankseg_jax.models import mask_former, segmentors
from rankseg_jax.models.backbones import swin, vit
from rankseg_jax.models.heads import segmenter
from rankseg_jax.rankseg.config import RankSegConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _remat(m: mlc.ConfigDict) -> bool | str:
    """The modules' `remat` argument: False, or the policy name when model.remat is on."""
    return m.remat_policy if m.remat else False


def _vit(config: mlc.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    m = config.model
    return vit.ViT(vit.ViTConfig.from_config(m), dtype=DTYPES[m.dtype], remat=_remat(m),
                   attention=m.attention, rngs=rngs)


def _swin(config: mlc.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    m, sw = config.model, config.model.swin
    return swin.SwinTransformer(
        embed_dim=sw.embed_dim, depths=tuple(sw.depths), num_heads=tuple(sw.num_heads),
        window_size=sw.window_size, mlp_ratio=sw.mlp_ratio, qkv_bias=sw.qkv_bias,
        patch_size=sw.patch_size, patch_norm=sw.patch_norm, drop_path_rate=sw.drop_path_rate,
        dtype=DTYPES[m.dtype], remat=_remat(m), rngs=rngs)


BACKBONES: dict[str, Callable[[mlc.ConfigDict, nnx.Rngs], nnx.Module]] = {
    "vit": _vit, "swin": _swin}


def _segmenter(config: mlc.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    m = config.model
    rankseg = RankSegConfig.from_config(m.rankseg)
    backbone = BACKBONES[m.backbone](config, rngs)
    head = segmenter.MaskTransformerHead(segmenter.MaskTransformerConfig.from_config(m),
                                         rankseg, dtype=DTYPES[m.dtype], remat=_remat(m),
                                         attention=m.attention, rngs=rngs)
    return segmentors.EncoderDecoder(backbone, head, num_classes=m.num_classes,
                                     rankseg=rankseg)


def _mask2former(config: mlc.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    m = config.model
    backbone = BACKBONES[m.backbone](config, rngs)
    cfg = mask_former.MaskFormerConfig.from_config(m, backbone.dims)
    return mask_former.MaskFormer(backbone, cfg, RankSegConfig.from_config(m.rankseg),
                                  dtype=DTYPES[m.dtype], rngs=rngs)


ARCHS: dict[str, Callable[[mlc.ConfigDict, nnx.Rngs], nnx.Module]] = {
    "segmenter": _segmenter, "mask2former": _mask2former}


def build_model(config: mlc.ConfigDict, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Builds the model of `config.model` with the official random init (validated config).

    rngs: parameter initialisation keys (default: nnx.Rngs(config.seed)).
    """
    rngs = rngs if rngs is not None else nnx.Rngs(config.seed)
    return ARCHS[config.model.arch](config, rngs)


def abstract_model(config: mlc.ConfigDict) -> tuple[nnx.GraphDef, dict]:
    """(graphdef, abstract params) of the model, without allocating anything.

    The abstract params are a nested dict of jax.ShapeDtypeStruct (`nnx.Param` state as a
    pure dict); `nnx.merge(graphdef, params)` rebuilds the model around real params.
    """
    model = nnx.eval_shape(lambda: build_model(config))
    graphdef, state = nnx.split(model, nnx.Param)
    rest = nnx.state(model, nnx.Not(nnx.Param))
    if jax.tree.leaves(rest):
        raise ValueError("the model has non-Param state, which params-only code does not "
                         f"carry: {jax.tree.map(jnp.shape, rest)}")
    return graphdef, nnx.to_pure_dict(state)


def init_params(config: mlc.ConfigDict) -> dict:
    """Params of a freshly initialised model (nested dict of jax arrays)."""
    return nnx.to_pure_dict(nnx.state(build_model(config), nnx.Param))
