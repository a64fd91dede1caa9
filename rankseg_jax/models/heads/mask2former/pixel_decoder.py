"""Mask2Former's `MSDeformAttnPixelDecoder` (`mask2former/modeling/pixel_decoder/msdeformattn.py`).

Input: the backbone maps {res2, res3, res4, res5} as [B, h, w, C] (strides 4, 8, 16, 32).
  1. input_proj (1x1 conv + GroupNorm(32)) of res5, res4, res3 (this order, `:195-230`).
  2. N post-norm deformable encoder layers over the 3 levels concatenated (`:61-131`), with
     the sine position + level_embed added to the queries only, reference points at the
     pixel centres, no padding mask (the official encoder masks nothing, `:62`).
  3. Split back into 3 maps; FPN step on res2: adapter_1 (1x1 conv, no bias, GN) +
     bilinear upsample of the finest encoder map, then layer_1 (3x3 conv, no bias, GN,
     ReLU); mask_features 1x1 conv (`:324-358`).
Output: (mask_features [B, H/4, W/4, mask_dim], [3 maps [B, h_l, w_l, D]] lowest resolution
first: 1/32, 1/16, 1/8).

Parameter paths (public contract; official key = `sem_seg_head.pixel_decoder.` + right):
    input_proj.{l}.conv.kernel [1,1,C_l,D] / .bias [D]  input_proj.{l}.0.weight (OIHW) / .bias
    input_proj.{l}.norm.{scale,bias} [D]                input_proj.{l}.1.{weight,bias}
        (l = 0 res5, 1 res4, 2 res3)
    level_embed [3, D]                                  transformer.level_embed
    encoder_layers.{j}.self_attn.<MSDeformAttn>         transformer.encoder.layers.{j}.self_attn.*
    encoder_layers.{j}.norm1.{scale,bias} [D]           ….norm1.{weight,bias}
    encoder_layers.{j}.linear1.{kernel [D,F],bias [F]}  ….linear1.*  (F = encoder_ffn, 1024)
    encoder_layers.{j}.linear2.{kernel [F,D],bias [D]}  ….linear2.*
    encoder_layers.{j}.norm2.{scale,bias} [D]           ….norm2.*
    mask_features.kernel [1,1,D,M] / .bias [M]          mask_features.weight / .bias
    adapter_1.conv.kernel [1,1,C_res2,D]                adapter_1.weight (no bias)
    adapter_1.norm.{scale,bias} [D]                     adapter_1.norm.{weight,bias}
    layer_1.conv.kernel [3,3,D,D]                       layer_1.weight (no bias)
    layer_1.norm.{scale,bias} [D]                       layer_1.norm.{weight,bias}
Convs are nnx.Conv (HWIO kernels; converter kind `conv`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rankseg_jax import resize
from rankseg_jax.models import transformer as tfm
from rankseg_jax.models.deformable_attention import MSDeformAttn
from rankseg_jax.models.position_encoding import sine_position_embedding

# Encoder levels, official order (`:195-230`: sorted by stride, then reversed).
ENCODER_FEATURES = ("res5", "res4", "res3")

_zeros = nnx.initializers.zeros_init()
# detectron2 c2_xavier_fill = kaiming_uniform(a=1): U(+-sqrt(3 / fan_in)), bias 0
# (fvcore nn/weight_init.py:6-21).
_c2_xavier = nnx.initializers.variance_scaling(1.0, "fan_in", "uniform")


def group_norm(dim: int, rngs: nnx.Rngs, num_groups: int = 32) -> nnx.GroupNorm:
    """torch nn.GroupNorm(32, dim): contiguous channel groups, eps 1e-5, two-pass variance."""
    return nnx.GroupNorm(dim, num_groups=num_groups, epsilon=1e-5, use_fast_variance=False,
                         dtype=jnp.float32, rngs=rngs)


class ConvNorm(nnx.Module):
    """Conv2d -> GroupNorm(32) [-> ReLU] (detectron2 `Conv2d` with norm/activation)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, use_bias: bool, relu: bool,
                 kernel_init, dtype, rngs: nnx.Rngs):
        pad = kernel // 2
        self.relu = relu
        self.conv = nnx.Conv(c_in, c_out, (kernel, kernel), padding=((pad, pad), (pad, pad)),
                             use_bias=use_bias, dtype=dtype, kernel_init=kernel_init,
                             bias_init=_zeros, rngs=rngs)
        self.norm = group_norm(c_out, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, h, w, c_in] -> [B, h, w, c_out] in x's dtype."""
        y = self.norm(self.conv(x)).astype(x.dtype)
        return jax.nn.relu(y) if self.relu else y


class DeformableEncoderLayer(nnx.Module):
    """Post-norm encoder layer (`msdeformattn.py:92-131`), ReLU FFN.

    x = norm1(x + MSDA(x + pos, ref, x));  x = norm2(x + linear2(relu(linear1(x)))).
    Init as official: linear1/linear2 xavier weights with torch-default biases (`:43-50`).
    """

    def __init__(self, dim: int, ffn_dim: int, *, n_levels: int, n_heads: int, n_points: int,
                 dropout: float = 0.0, dtype=jnp.float32, rngs: nnx.Rngs):
        self.dropout = dropout
        self.self_attn = MSDeformAttn(dim, n_levels, n_heads, n_points, dtype=dtype, rngs=rngs)
        self.norm1 = tfm.layer_norm(dim, 1e-5, rngs)
        init = tfm.InitScheme(nnx.initializers.xavier_uniform(), tfm.torch_default_init().bias)
        self.linear1 = tfm.dense(dim, ffn_dim, init, dtype, rngs)
        self.linear2 = tfm.dense(ffn_dim, dim, init, dtype, rngs)
        self.norm2 = tfm.layer_norm(dim, 1e-5, rngs)

    def __call__(self, x: jax.Array, pos: jax.Array, reference_points: jax.Array,
                 spatial_shapes, rng: jax.Array | None = None) -> jax.Array:
        """x, pos: [B, S, D]; reference_points [B or 1, S, L, 2]. Returns [B, S, D]."""
        r = tfm.split_rng(rng, 3)
        dtype = x.dtype
        att = self.self_attn(x + pos, reference_points, x, spatial_shapes)
        x = self.norm1(x + tfm.dropout(att, self.dropout, r[0])).astype(dtype)
        ff = tfm.dropout(jax.nn.relu(self.linear1(x)), self.dropout, r[1])
        ff = tfm.dropout(self.linear2(ff), self.dropout, r[2])
        return self.norm2(x + ff).astype(dtype)


def encoder_reference_points(spatial_shapes: Sequence[tuple[int, int]]) -> np.ndarray:
    """Pixel centres ((j + 0.5) / w, (i + 0.5) / h) of every level, [S, 2] (x, y) float32.

    `msdeformattn.py:141-153` with valid ratios 1 (no padding masks); the caller repeats them
    over the L levels.
    """
    pts = []
    for h, w in spatial_shapes:
        ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
        pts.append(np.stack([xs.reshape(-1), ys.reshape(-1)], -1))
    return np.concatenate(pts, 0).astype(np.float32)


class MSDeformAttnPixelDecoder(nnx.Module):
    """Pixel decoder of Mask2Former (see the module docstring for the data flow and params).

    in_channels: channels of (res2, res3, res4, res5). conv_dim: D (256 official); mask_dim:
    channels of mask_features (256); encoder_layers: 6 official; encoder_ffn: FFN width of the
    encoder layers (hard-coded 1024 officially, `msdeformattn.py:306`); num_heads 8 and
    num_points 4 as official; dropout: encoder dropout (MASK_FORMER.DROPOUT, 0.0).
    """

    def __init__(self, in_channels: Sequence[int], *, conv_dim: int = 256, mask_dim: int = 256,
                 encoder_layers: int = 6, encoder_ffn: int = 1024, num_heads: int = 8,
                 num_points: int = 4, dropout: float = 0.0, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        if len(in_channels) != 4:
            raise ValueError(f"in_channels must give (res2, res3, res4, res5), got {in_channels}")
        c2, c3, c4, c5 = in_channels
        self.conv_dim = conv_dim
        self.dtype = dtype
        n_levels = len(ENCODER_FEATURES)
        xavier = nnx.initializers.xavier_uniform()  # input_proj init (`:228-230`)
        self.input_proj = nnx.List([
            ConvNorm(c, conv_dim, 1, use_bias=True, relu=False, kernel_init=xavier,
                     dtype=dtype, rngs=rngs) for c in (c5, c4, c3)])
        self.level_embed = nnx.Param(jax.random.normal(rngs.params(), (n_levels, conv_dim)))
        self.encoder_layers = nnx.List([
            DeformableEncoderLayer(conv_dim, encoder_ffn, n_levels=n_levels, n_heads=num_heads,
                                   n_points=num_points, dropout=dropout, dtype=dtype, rngs=rngs)
            for _ in range(encoder_layers)])
        self.mask_features = nnx.Conv(conv_dim, mask_dim, (1, 1), dtype=dtype,
                                      kernel_init=_c2_xavier, bias_init=_zeros, rngs=rngs)
        # One FPN level: log2(8) - log2(COMMON_STRIDE 4) (`:258-285`), on res2.
        self.adapter_1 = ConvNorm(c2, conv_dim, 1, use_bias=False, relu=False,
                                  kernel_init=_c2_xavier, dtype=dtype, rngs=rngs)
        self.layer_1 = ConvNorm(conv_dim, conv_dim, 3, use_bias=False, relu=True,
                                kernel_init=_c2_xavier, dtype=dtype, rngs=rngs)

    def encoder_inputs(self, features: Mapping[str, jax.Array]):
        """Flattened encoder inputs of res5, res4, res3.

        Returns (src [B, S, D], pos [1, S, D] = sine + level_embed, reference_points
        [1, S, L, 2], spatial_shapes ((h, w), ...)).
        """
        srcs, poss, shapes = [], [], []
        for lvl, (name, proj) in enumerate(zip(ENCODER_FEATURES, self.input_proj, strict=True)):
            x = features[name].astype(self.dtype)
            b, h, w, _ = x.shape
            srcs.append(proj(x).reshape(b, h * w, self.conv_dim))
            pos = sine_position_embedding(h, w, self.conv_dim).reshape(h * w, self.conv_dim)
            poss.append(jnp.asarray(pos) + self.level_embed[lvl])
            shapes.append((h, w))
        shapes = tuple(shapes)
        ref = encoder_reference_points(shapes)
        ref = np.broadcast_to(ref[None, :, None, :], (1, ref.shape[0], len(shapes), 2))
        pos = jnp.concatenate(poss, 0)[None].astype(self.dtype)
        return jnp.concatenate(srcs, 1), pos, jnp.asarray(ref), shapes

    def __call__(self, features: Mapping[str, jax.Array], rng: jax.Array | None = None, *,
                 return_intermediates: bool = False):
        """Runs the pixel decoder.

        features: {'res2', 'res3', 'res4', 'res5'} -> [B, h, w, C] (NHWC); rng: dropout key
        or None (eval). Returns (mask_features [B, H/4, W/4, M], [3 x [B, h_l, w_l, D]]
        ordered 1/32, 1/16, 1/8); with return_intermediates a third element
        {'src_flatten', 'pos_flatten', 'reference_points', 'memory'} (encoder in/out).
        """
        src, pos, ref, shapes = self.encoder_inputs(features)
        memory = src
        for layer, key in zip(self.encoder_layers,
                              tfm.split_rng(rng, len(self.encoder_layers)), strict=True):
            memory = layer(memory, pos, ref, shapes, key)
        b = memory.shape[0]
        maps, start = [], 0
        for h, w in shapes:
            maps.append(memory[:, start:start + h * w].reshape(b, h, w, self.conv_dim))
            start += h * w
        res2 = features["res2"].astype(self.dtype)
        lateral = self.adapter_1(res2)
        # The official comment says "nearest" but the code is bilinear (`:343-351`).
        up = resize.resize_bilinear(maps[-1], lateral.shape[1:3], axes=(1, 2))
        y = self.layer_1(lateral + up.astype(lateral.dtype))
        mask_features = self.mask_features(y)
        if not return_intermediates:
            return mask_features, maps
        extras = {"src_flatten": src, "pos_flatten": pos, "reference_points": ref,
                  "memory": memory}
        return mask_features, maps, extras
