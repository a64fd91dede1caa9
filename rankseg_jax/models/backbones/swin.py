"""Swin Transformer backbone of Mask2Former (`D2SwinTransformer`), NHWC, in flax.nnx.

Reproduces `mask2former/modeling/backbone/swin.py` (file:line below refer to it) exactly in
float32, including its padding behaviour: PatchEmbed pads right/bottom to the patch size,
every block zero-pads the normalised token grid to window multiples and the padded zeros take
part in window attention unmasked (`:251-255`), the shift mask uses -100 and is computed on
the padded size (`:414-440`), PatchMerging pads odd sizes (`:323-325`). Outputs therefore
depend on how much padding an image gets, as officially.

Parameter paths (public contract; d_i = embed_dim * 2**i, h_i = num_heads[i], ws = window,
official detectron2 key = `backbone.` + the key shown, see `rankseg_jax/convert/tables/swin.py`):

    path                                        shape                official key
    patch_embed.proj.kernel / .bias             [p,p,3,d_0] / [d_0]  patch_embed.proj.weight
                                                                     (OIHW) / .bias
    patch_embed.norm.{scale,bias}               [d_0]                patch_embed.norm.*
    layers.{i}.blocks.{j}.norm1.{scale,bias}    [d_i]                same path, .weight/.bias
    ….attn.{query,key,value}.kernel             [d_i, d_i]           row thirds q|k|v of
                                                                     ….attn.qkv.weight, .T
    ….attn.{query,key,value}.bias               [d_i]                thirds of ….attn.qkv.bias
    ….attn.out.{kernel,bias}                    [d_i,d_i] / [d_i]    ….attn.proj.*
    ….attn.relative_position_bias_table         [(2ws-1)^2, h_i]     same name
    ….norm2.{scale,bias}                        [d_i]                ….norm2.*
    ….mlp.fc1.{kernel,bias}                     [d_i,4d_i] / [4d_i]  ….mlp.fc1.*
    ….mlp.fc2.{kernel,bias}                     [4d_i,d_i] / [d_i]   ….mlp.fc2.*
    layers.{i}.downsample.norm.{scale,bias}     [4d_i]               same path (i < last)
    layers.{i}.downsample.reduction.kernel      [4d_i, 2d_i]         ….reduction.weight
                                                                     (no bias)
    norm{i}.{scale,bias} (i in out_indices)     [d_i]                norm{i}.*

q/k/v are split (not one fused [d, 3d] kernel): the same layout as the ViT and the heads
(`rankseg_jax/models/transformer.py`), so the tensor-parallel rules of
`rankseg_jax/sharding.py` (`query|key|value|fc1` split output columns, `out|fc2` input rows)
apply unchanged and split whole heads; a fused kernel split by columns would cut across the
q|k|v thirds. The cost is three matmuls on the same input instead of one (XLA schedules them
back to back; the attention itself dominates). `attn.out` is the official `attn.proj`,
named as in the rest of the project. `relative_position_index` and the shift masks are
constants recomputed with numpy at trace time (not parameters).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rankseg_jax.config import schema
from rankseg_jax.models import transformer as tfm

LN_EPS = 1e-5  # nn.LayerNorm default (`swin.py:703`)
SHIFT_MASK_VALUE = -100.0  # finite, as official (`swin.py:437-439`), not -inf

# Official presets (window passed separately), shared with the config schema.
SWIN_PRESETS = schema.SWIN_PRESETS


@functools.lru_cache(maxsize=64)
def relative_position_index(window_size: int) -> np.ndarray:
    """The official `relative_position_index` buffer (`swin.py:106-121`): [ws^2, ws^2] int64.

    For tokens i = (yi, xi), j = (yj, xj) of a window (row-major):
    index[i, j] = (yi - yj + ws - 1) * (2ws - 1) + (xi - xj + ws - 1).
    """
    ws = window_size
    ys, xs = np.meshgrid(np.arange(ws), np.arange(ws), indexing="ij")
    coords = np.stack([ys.reshape(-1), xs.reshape(-1)])  # [2, N]
    rel = coords[:, :, None] - coords[:, None, :] + (ws - 1)  # [2, N, N]
    out = (rel[0] * (2 * ws - 1) + rel[1]).astype(np.int64)
    out.setflags(write=False)
    return out


def window_partition(x: jax.Array, window_size: int) -> jax.Array:
    """[B, Hp, Wp, C] -> [B, nW, ws*ws, C]; windows row-major, tokens row-major inside.

    Same order as the official `window_partition` (`swin.py:44-55`) with the batch kept apart.
    Hp and Wp must be multiples of ws.
    """
    b, hp, wp, c = x.shape
    ws = window_size
    x = x.reshape(b, hp // ws, ws, wp // ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (hp // ws) * (wp // ws), ws * ws, c)


def window_reverse(windows: jax.Array, height: int, width: int) -> jax.Array:
    """Inverse of `window_partition`: [B, nW, ws*ws, C] -> [B, height, width, C]."""
    b, _, n, c = windows.shape
    ws = int(round(n ** 0.5))
    x = windows.reshape(b, height // ws, width // ws, ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, height, width, c)


@functools.lru_cache(maxsize=64)
def shift_window_labels(padded_h: int, padded_w: int, window_size: int,
                        shift: int) -> np.ndarray:
    """Region label of every token of every shifted window: [nW, ws^2] int32.

    As official (`swin.py:414-433`): regions of the padded (Hp, Wp) grid are rows
    [0, Hp-ws), [Hp-ws, Hp-shift), [Hp-shift, Hp), columns likewise, label = 3*row_region +
    col_region, cut into windows like `window_partition`. Padded rows/cols are not special.
    """
    ws, s = window_size, shift
    img = np.zeros((padded_h, padded_w), np.int32)
    slices = (slice(0, -ws), slice(-ws, -s), slice(-s, None))
    cnt = 0
    for hs in slices:
        for wsl in slices:
            img[hs, wsl] = cnt
            cnt += 1
    labels = img.reshape(padded_h // ws, ws, padded_w // ws, ws).transpose(0, 2, 1, 3)
    labels = np.ascontiguousarray(labels.reshape(-1, ws * ws))
    labels.setflags(write=False)
    return labels


def mask_from_labels(labels):
    """[nW, N] region labels -> additive mask [nW, N, N]: 0 where the labels of query i and
    key j agree, else -100 (`swin.py:434-440`). numpy in, numpy out; jax in, jax out."""
    xp = np if isinstance(labels, np.ndarray) else jnp
    return xp.where(labels[:, None, :] != labels[:, :, None], xp.float32(SHIFT_MASK_VALUE),
                    xp.float32(0.0))


def shift_window_mask(padded_h: int, padded_w: int, window_size: int,
                      shift: int) -> np.ndarray:
    """The official SW-MSA `attn_mask` buffer: [nW, ws^2, ws^2] float32, 0 or -100."""
    return mask_from_labels(shift_window_labels(padded_h, padded_w, window_size, shift))


def _pad_to(x: jax.Array, height: int, width: int) -> jax.Array:
    """Zero-pads [B, H, W, C] at the bottom/right to [B, height, width, C]."""
    _, h, w, _ = x.shape
    if (h, w) == (height, width):
        return x
    return jnp.pad(x, ((0, 0), (0, height - h), (0, width - w), (0, 0)))


class WindowAttention(nnx.Module):
    """W-MSA with relative position bias (`swin.py:74-171`), all windows in one batched op."""

    def __init__(self, dim: int, num_heads: int, window_size: int, *, qkv_bias: bool = True,
                 init: tfm.InitScheme, dtype=jnp.float32, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.window_size = window_size
        self.query = tfm.dense(dim, dim, init, dtype, rngs, use_bias=qkv_bias)
        self.key = tfm.dense(dim, dim, init, dtype, rngs, use_bias=qkv_bias)
        self.value = tfm.dense(dim, dim, init, dtype, rngs, use_bias=qkv_bias)
        self.out = tfm.dense(dim, dim, init, dtype, rngs)
        # timm trunc_normal_(std=0.02) with absolute bounds +-2, i.e. +-100 sigma (`:128`).
        self.relative_position_bias_table = nnx.Param(tfm.trunc_normal_init().kernel(
            rngs.params(), ((2 * window_size - 1) ** 2, num_heads)))

    def relative_bias(self) -> jax.Array:
        """The per-head bias B_rel[h, i, j] = table[index[i, j], h]: [heads, N, N] float32."""
        n = self.window_size ** 2
        idx = relative_position_index(self.window_size).reshape(-1)
        table = self.relative_position_bias_table[...].astype(jnp.float32)
        return table[idx].reshape(n, n, self.num_heads).transpose(2, 0, 1)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x: [B, nW, N, C] windows; mask: [nW, N, N] additive (0 / -100) or None.

        Returns [B, nW, N, C]. Softmax in float32 whatever the compute dtype.
        """
        b, nw, n, c = x.shape
        h = self.num_heads
        dh = c // h
        # q is scaled before q k^T, as official (`:145-146`).
        q = self.query(x).reshape(b, nw, n, h, dh) * (dh ** -0.5)
        k = self.key(x).reshape(b, nw, n, h, dh)
        v = self.value(x).reshape(b, nw, n, h, dh)
        logits = jnp.einsum("bwqhd,bwkhd->bwhqk", q, k).astype(jnp.float32)
        logits = logits + self.relative_bias()
        if mask is not None:
            logits = logits + mask[None, :, None]
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        y = jnp.einsum("bwhqk,bwkhd->bwqhd", probs, v).reshape(b, nw, n, c)
        return self.out(y)


class SwinBlock(nnx.Module):
    """`SwinTransformerBlock` (`swin.py:174-295`) on NHWC token grids."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int, *,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path: float = 0.0,
                 init: tfm.InitScheme, dtype=jnp.float32, rngs: nnx.Rngs):
        if not 0 <= shift < window_size:
            raise ValueError(f"shift {shift} must be in [0, window_size={window_size})")
        self.window_size = window_size
        self.shift = shift
        self.drop_path = drop_path
        self.norm1 = tfm.layer_norm(dim, LN_EPS, rngs)
        self.attn = WindowAttention(dim, num_heads, window_size, qkv_bias=qkv_bias, init=init,
                                    dtype=dtype, rngs=rngs)
        self.norm2 = tfm.layer_norm(dim, LN_EPS, rngs)
        self.mlp = tfm.Mlp(dim, int(dim * mlp_ratio), init=init, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """x: [B, H, W, C] -> [B, H, W, C]; rng: drop-path key (None = eval)."""
        _, h, w, _ = x.shape
        ws, s = self.window_size, self.shift
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        r_attn, r_mlp = tfm.split_rng(rng, 2)
        # Zero padding after norm1: padded tokens are exact zeros and are not masked (`:251`).
        y = _pad_to(self.norm1(x).astype(x.dtype), hp, wp)
        mask = None
        if s:
            y = jnp.roll(y, (-s, -s), axis=(1, 2))
            # Built in the graph from the small label constant (not a [nW, N, N] constant).
            mask = mask_from_labels(jnp.asarray(shift_window_labels(hp, wp, ws, s)))
        y = window_reverse(self.attn(window_partition(y, ws), mask), hp, wp)
        if s:
            y = jnp.roll(y, (s, s), axis=(1, 2))
        y = y[:, :h, :w]
        # The two branches share the rate but draw independently (`:292-293`).
        x = x + tfm.drop_path(y, self.drop_path, r_attn)
        y = self.mlp(self.norm2(x).astype(x.dtype))
        return x + tfm.drop_path(y, self.drop_path, r_mlp)


class PatchMerging(nnx.Module):
    """`PatchMerging` (`swin.py:298-337`): 2x2 neighbourhood concat, LN(4C), Linear 4C->2C."""

    def __init__(self, dim: int, *, init: tfm.InitScheme, dtype=jnp.float32, rngs: nnx.Rngs):
        self.norm = tfm.layer_norm(4 * dim, LN_EPS, rngs)
        self.reduction = tfm.dense(4 * dim, 2 * dim, init, dtype, rngs, use_bias=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C] (odd sizes zero-padded)."""
        b, h, w, c = x.shape
        h2, w2 = -(-h // 2), -(-w // 2)
        x = _pad_to(x, 2 * h2, 2 * w2)
        # Channel blocks x0 = (even row, even col), x1 = (odd, even), x2 = (even, odd),
        # x3 = (odd, odd) (`:327-331`): block index = 2 * col_parity + row_parity.
        x = x.reshape(b, h2, 2, w2, 2, c).transpose(0, 1, 3, 4, 2, 5).reshape(b, h2, w2, 4 * c)
        return self.reduction(self.norm(x).astype(x.dtype))


class SwinStage(nnx.Module):
    """`BasicLayer` (`swin.py:340-453`): blocks alternating shift 0 / ws//2, then merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, *,
                 mlp_ratio: float, qkv_bias: bool, drop_paths: list[float], downsample: bool,
                 init: tfm.InitScheme, dtype=jnp.float32, rngs: nnx.Rngs):
        self.blocks = nnx.List([
            SwinBlock(dim, num_heads, window_size, 0 if j % 2 == 0 else window_size // 2,
                      mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=drop_paths[j],
                      init=init, dtype=dtype, rngs=rngs)
            for j in range(depth)])
        self.downsample = (PatchMerging(dim, init=init, dtype=dtype, rngs=rngs)
                           if downsample else None)


class PatchEmbed(nnx.Module):
    """`PatchEmbed` (`swin.py:456-495`): pad right/bottom, conv p x p stride p, optional LN."""

    def __init__(self, patch_size: int, embed_dim: int, *, patch_norm: bool,
                 init: tfm.InitScheme, dtype=jnp.float32, rngs: nnx.Rngs):
        self.patch_size = patch_size
        fan_in = 3 * patch_size * patch_size
        self.proj = nnx.Conv(
            3, embed_dim, (patch_size, patch_size), strides=(patch_size, patch_size),
            padding="VALID", dtype=dtype, kernel_init=init.kernel,
            bias_init=lambda k, s, dt=jnp.float32: init.bias(k, s, dt, fan_in=fan_in),
            rngs=rngs)
        self.norm = tfm.layer_norm(embed_dim, LN_EPS, rngs) if patch_norm else None

    def __call__(self, images: jax.Array) -> jax.Array:
        """images: [B, H, W, 3] -> [B, ceil(H/p), ceil(W/p), D]."""
        _, h, w, _ = images.shape
        p = self.patch_size
        x = self.proj(_pad_to(images, -(-h // p) * p, -(-w // p) * p))
        if self.norm is not None:
            x = self.norm(x).astype(x.dtype)
        return x


class SwinTransformer(nnx.Module):
    """The Mask2Former Swin backbone: images -> {"res2".."res5"} feature maps (NHWC).

    Args: embed_dim (stage-0 width d_0; stage i has d_0 * 2**i channels), depths and num_heads
    (per stage), window_size (7 for the 224 ImageNet models, 12 for the 384 ones),
    mlp_ratio, qkv_bias, patch_size, patch_norm, drop_path_rate (stochastic depth, linear
    from 0 over all blocks, `swin.py:583-585`), out_indices (stages with an output and an
    output norm `norm{i}`; None = all, i.e. (0, 1, 2, 3) officially), dtype (compute dtype;
    params and norms stay float32), remat (rematerialise each block in the backward pass),
    rngs. ape=True (absolute position embedding) is not supported; the official configs
    have it off. Dropout and attention dropout are 0 in every official config and are not
    implemented.
    """

    def __init__(self, *, embed_dim: int, depths, num_heads, window_size: int,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, patch_size: int = 4,
                 patch_norm: bool = True, ape: bool = False, drop_path_rate: float = 0.0,
                 out_indices=None, dtype=jnp.float32, remat: bool | str = False,
                 rngs: nnx.Rngs):
        if ape:
            raise ValueError("SwinTransformer: ape=True (absolute position embedding) is not "
                             "supported; the official Mask2Former Swin configs use APE False")
        depths, num_heads = tuple(depths), tuple(num_heads)
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} differ in length")
        n = len(depths)
        self.out_indices = tuple(sorted(range(n) if out_indices is None else out_indices))
        if any(not 0 <= i < n for i in self.out_indices):
            raise ValueError(f"out_indices {out_indices} must lie in [0, {n})")
        self.dims = tuple(embed_dim * 2 ** i for i in range(n))
        for d, h in zip(self.dims, num_heads, strict=True):
            if d % h:
                raise ValueError(f"stage width {d} is not divisible by {h} heads")
        self.dtype = dtype
        self.remat = remat
        init = tfm.torch_default_init()  # torch Linear/Conv2d defaults (`:635-649` is dead)
        self.patch_embed = PatchEmbed(patch_size, embed_dim, patch_norm=patch_norm, init=init,
                                      dtype=dtype, rngs=rngs)
        rates = [float(r) for r in np.linspace(0.0, drop_path_rate, sum(depths))]
        starts = np.cumsum((0,) + depths)
        self.layers = nnx.List([
            SwinStage(self.dims[i], depths[i], num_heads[i], window_size,
                      mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                      drop_paths=rates[starts[i]:starts[i + 1]], downsample=i < n - 1,
                      init=init, dtype=dtype, rngs=rngs)
            for i in range(n)])
        for i in self.out_indices:
            setattr(self, f"norm{i}", tfm.layer_norm(self.dims[i], LN_EPS, rngs))

    def __call__(self, images: jax.Array, rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """Encodes images.

        images: [B, H, W, 3] normalised (any H, W; padded as officially). rng: drop-path key
        (None = deterministic eval). Returns {"res{i+2}": [B, h_i, w_i, d_i]} for i in
        out_indices, after the output norms; h_0 = ceil(H/p), h_{i+1} = ceil(h_i/2).
        """
        x = self.patch_embed(images.astype(self.dtype))
        outs = {}
        for i, (stage, key) in enumerate(zip(self.layers, tfm.split_rng(rng, len(self.layers)),
                                             strict=True)):
            x = tfm.run_blocks(stage.blocks, x, key, self.remat)
            if i in self.out_indices:
                outs[f"res{i + 2}"] = getattr(self, f"norm{i}")(x).astype(x.dtype)
            if stage.downsample is not None:
                x = stage.downsample(x)
        return outs


def swin_from_preset(name: str, *, window_size: int, **kwargs) -> SwinTransformer:
    """Builds `SWIN_PRESETS[name]` ('tiny'|'small'|'base'|'large') with the given window.

    kwargs: the other `SwinTransformer` arguments (rngs required).
    """
    if name not in SWIN_PRESETS:
        raise ValueError(f"unknown Swin preset {name!r}; expected one of {list(SWIN_PRESETS)}")
    return SwinTransformer(**SWIN_PRESETS[name], window_size=window_size, **kwargs)
