"""ViT backbone of Segmenter (mmseg-0.17 `VisionTransformer` semantics, NHWC in JAX).

Parameter paths (public contract, see docs/parameters.md):
    patch_embed.{kernel [p,p,3,D], bias [D]}   cls_token [1,1,D]   pos_embed [1,1+Gh*Gw,D]
    cls_emb [1,N,D] (OCE only)   layers.{i}.<Block>   final_norm.{scale,bias}
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from flax import nnx

from rankseg_jax import resize
from rankseg_jax.models import transformer as tfm


def resize_pos_embed(pos_embed: jax.Array, stored_grid: tuple[int, int],
                     grid: tuple[int, int]) -> jax.Array:
    """Resizes a [1, 1+Gh*Gw, D] position table to a (h, w) patch grid, torch-bicubic exact.

    Entry 0 (the cls position) is kept; the grid part is resampled with PyTorch's bicubic
    (A=-0.75, align_corners=False, clamped taps, no antialias). Returns [1, 1+h*w, D].
    """
    if tuple(grid) == tuple(stored_grid):
        return pos_embed
    cls_pos, grid_pos = pos_embed[:, :1], pos_embed[:, 1:]
    d = pos_embed.shape[-1]
    grid_pos = grid_pos.reshape(1, stored_grid[0], stored_grid[1], d)
    grid_pos = resize.resize_bicubic(grid_pos, grid, axes=(1, 2))
    return jnp.concatenate([cls_pos, grid_pos.reshape(1, grid[0] * grid[1], d)], axis=1)


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """ViT structure (`config.model.vit`). oce_classes: K class tokens appended before layer
    `oce_start_layer` (OCE variant), 0 = none."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    img_size: tuple[int, int] = (512, 512)
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    final_norm: bool = True
    ln_eps: float = 1e-6
    oce_classes: int = 0
    oce_start_layer: int = -1
    scan_layers: bool = False

    @classmethod
    def from_config(cls, model: mlc.ConfigDict) -> ViTConfig:
        """From `config.model` (the `vit` section and, for OCE, K)."""
        v = model.vit
        names = [f.name for f in dataclasses.fields(cls) if f.name != "oce_classes"]
        values = {n: v[n] for n in names}
        values["img_size"] = tuple(v.img_size)
        return cls(oce_classes=model.num_classes if v.oce else 0, **values)


class ViT(nnx.Module):
    """Pre-norm ViT: patch conv, cls token, learned position embedding, blocks, final LN."""

    def __init__(self, cfg: ViTConfig, *, dtype=jnp.float32, remat: bool | str = False,
                 attention: str = "xla", rngs: nnx.Rngs):
        embed_dim, depth, patch_size = cfg.embed_dim, cfg.depth, cfg.patch_size
        oce_classes, img_size = cfg.oce_classes, cfg.img_size
        self.cfg = cfg
        self.patch_size = patch_size
        self.grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.drop_rate = cfg.drop_rate
        self.dtype = dtype
        self.remat = remat
        init = tfm.torch_default_init()
        self.patch_embed = nnx.Conv(
            3, embed_dim, (patch_size, patch_size), strides=(patch_size, patch_size),
            padding="VALID", dtype=dtype, kernel_init=init.kernel,
            bias_init=lambda k, s, dt=jnp.float32: init.bias(
                k, s, dt, fan_in=3 * patch_size * patch_size),
            rngs=rngs)
        # mmcv 1.3.12 leaves cls_token/pos_embed/cls_emb at zeros (its init calls are no-ops,
        # official `VisionTransformer.init_weights`); pretrained weights overwrite them.
        self.cls_token = nnx.Param(jnp.zeros((1, 1, embed_dim)))
        self.pos_embed = nnx.Param(jnp.zeros((1, 1 + self.grid[0] * self.grid[1], embed_dim)))
        self.oce_classes = oce_classes
        self.oce_start = (cfg.oce_start_layer % depth) if oce_classes else -1
        if oce_classes:
            self.cls_emb = nnx.Param(jnp.zeros((1, oce_classes, embed_dim)))
        rates = np.linspace(0.0, cfg.drop_path_rate, depth)
        self.layers = nnx.List([
            tfm.Block(embed_dim, cfg.num_heads, int(embed_dim * cfg.mlp_ratio), eps=cfg.ln_eps,
                      qkv_bias=cfg.qkv_bias, drop=cfg.drop_rate, attn_drop=cfg.attn_drop_rate,
                      drop_path=float(rates[i]), init=init, dtype=dtype, attention=attention,
                      rngs=rngs)
            for i in range(depth)])
        self.final_norm = (tfm.layer_norm(embed_dim, cfg.ln_eps, rngs) if cfg.final_norm
                           else None)

    def _run_layers(self, start: int, stop: int, x: jax.Array,
                    keys: list[jax.Array | None]) -> jax.Array:
        """Blocks start..stop-1, each with its key (as `run_blocks` gives one block: the key
        split once); one scan over them when cfg.scan_layers and there are several."""
        if not (self.cfg.scan_layers and stop - start > 1):
            for i, key in zip(range(start, stop), keys, strict=True):
                x = tfm.run_blocks([self.layers[i]], x, key, self.remat)
            return x
        block_keys = [tfm.split_rng(k, 1)[0] for k in keys]
        layers = [self.layers[i] for i in range(start, stop)]
        return tfm.scan_blocks(layers, x, block_keys, self.remat)

    def __call__(self, images: jax.Array, rng: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array | None]:
        """Encodes images.

        images: [B, H, W, 3] normalised; H, W need not be multiples of the patch size (zero
        padding at the bottom/right, as mmseg). rng: key for dropout/drop path (None = eval).
        Returns (patch_grid [B, h, w, D] after the final norm, cls token dropped;
        class_tokens [B, N, D] for OCE, else None).
        """
        p = self.patch_size
        b, hgt, wid, _ = images.shape
        pad_h, pad_w = -hgt % p, -wid % p
        if pad_h or pad_w:
            images = jnp.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        x = self.patch_embed(images.astype(self.dtype))  # [B, h, w, D]
        _, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (b, 1, d))
        pos = resize_pos_embed(self.pos_embed[...], self.grid, (h, w)).astype(x.dtype)
        x = jnp.concatenate([cls, x], axis=1) + pos
        rng_pos, rng_layers = tfm.split_rng(rng, 2)
        x = tfm.dropout(x, self.drop_rate, rng_pos)
        keys = tfm.split_rng(rng_layers, len(self.layers))
        # OCE: class tokens appended at the end, without position embedding, before layer
        # oce_start; the blocks run in segments around that point.
        cuts = [0] + ([self.oce_start] if self.oce_start > 0 else []) + [len(self.layers)]
        for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
            if start == self.oce_start:
                emb = jnp.broadcast_to(self.cls_emb[...].astype(x.dtype),
                                       (b, self.oce_classes, d))
                x = jnp.concatenate([x, emb], axis=1)
            x = self._run_layers(start, stop, x, keys[start:stop])
        if self.final_norm is not None:
            x = self.final_norm(x).astype(x.dtype)
        patch_grid = x[:, 1:1 + h * w].reshape(b, h, w, d)
        class_tokens = x[:, 1 + h * w:] if self.oce_classes else None
        return patch_grid, class_tokens
