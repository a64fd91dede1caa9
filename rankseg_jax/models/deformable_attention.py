"""Multi-scale deformable attention (Deformable DETR / Mask2Former) in pure JAX.

`ms_deform_attn_core` is the sampling kernel: the semantics of the official
`ms_deform_attn_core_pytorch` (`mask2former/modeling/pixel_decoder/ops/functions/
ms_deform_attn_func.py:52-72`), i.e. `F.grid_sample(2 * loc - 1, mode="bilinear",
padding_mode="zeros", align_corners=False)` per level and head, weighted by the attention
weights and summed over levels and points. It is written as a scan over the (level, point)
pairs, each step gathering the 4 bilinear corners of every query and head from the
level-concatenated value, so it needs no custom kernel (CPU, GPU and TPU), its memory is
O(B * Lq * H * 4 * Dh) per step (never a dense [Lq, S] matrix), the backward pass recomputes
the corner values as the official CUDA kernel does, and the gradient of the value is the
scatter-add XLA derives for the gathers.

`MSDeformAttn` is the module around it (`…/ops/modules/ms_deform_attn.py:34-121`).

Parameter paths of `MSDeformAttn` (public contract; official key `<p>.` + the name):
    sampling_offsets.kernel   [D, H*L*P*2]  sampling_offsets.weight (transposed)
    sampling_offsets.bias     [H*L*P*2]     sampling_offsets.bias
    attention_weights.kernel  [D, H*L*P]    attention_weights.weight (transposed)
    attention_weights.bias    [H*L*P]       attention_weights.bias
    value_proj.kernel/bias    [D, D], [D]   value_proj.weight (transposed) / .bias
    output_proj.kernel/bias   [D, D], [D]   output_proj.weight (transposed) / .bias
Output columns of sampling_offsets are ordered ((h*L + l)*P + p)*2 + c with c = 0 -> x,
c = 1 -> y; those of attention_weights (h*L + l)*P + p; value channels are head-major.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

SpatialShapes = Sequence[tuple[int, int]]


def _level_constants(spatial_shapes: SpatialShapes) -> tuple[np.ndarray, ...]:
    """Per-level (H, W, start offset) as float/int numpy columns of shape [L, 1]."""
    hs = np.array([h for h, _ in spatial_shapes], np.int32)
    ws = np.array([w for _, w in spatial_shapes], np.int32)
    starts = np.concatenate([[0], np.cumsum(hs * ws)[:-1]]).astype(np.int32)
    return hs[:, None], ws[:, None], starts[:, None]


def bilinear_corners(x: jax.Array, y: jax.Array, hs, ws, starts=0
                     ) -> list[tuple[jax.Array, jax.Array]]:
    """The 4 bilinear taps of grid_sample (zeros padding, align_corners=False) at (x, y).

    x, y: normalised coordinates (same shape, or broadcasting with hs / ws / starts), (0, 0)
    the top-left corner of a map and (1, 1) its bottom-right one; hs, ws: map heights and
    widths (ints, or integer arrays broadcasting with x, e.g. [L, 1] per level); starts:
    where each map begins in the flattened (row-major, concatenated) values.
    Returns [(flat index int32, weight float32)] for the corners nw, ne, sw, se, each of the
    broadcast shape: index clipped into the map, weight 0 for a tap outside it (so a
    weighted sum of the 4 gathered values is grid_sample's value).

    Pixel coordinate (x*w - 0.5, y*h - 0.5), computed in the official float32 operation
    order: grid = 2*loc - 1 (`ms_deform_attn_func.py:61`), then grid_sample's
    unnormalisation ((g + 1) * size - 1) / 2; weights as torch's (ix_se - ix) etc.
    """
    f32 = jnp.float32
    hs_f = np.asarray(hs).astype(np.float32)
    ws_f = np.asarray(ws).astype(np.float32)
    gx = 2 * x.astype(f32) - 1
    gy = 2 * y.astype(f32) - 1
    x = ((gx + 1) * ws_f - 1) / 2
    y = ((gy + 1) * hs_f - 1) / 2
    x0 = jnp.floor(x)
    y0 = jnp.floor(y)
    x1, y1 = x0 + 1, y0 + 1
    out = []
    for cy, wy in ((y0, y1 - y), (y1, y - y0)):
        for cx, wx in ((x0, x1 - x), (x1, x - x0)):
            inside = (cx >= 0) & (cx <= ws - 1) & (cy >= 0) & (cy <= hs - 1)
            cxi = jnp.clip(cx, 0, ws - 1).astype(jnp.int32)
            cyi = jnp.clip(cy, 0, hs - 1).astype(jnp.int32)
            out.append((starts + cyi * ws + cxi, jnp.where(inside, wx * wy, 0.0)))
    return out


def ms_deform_attn_core(value: jax.Array, spatial_shapes: SpatialShapes,
                        sampling_locations: jax.Array,
                        attention_weights: jax.Array) -> jax.Array:
    """Bilinear multi-scale deformable sampling, weighted and summed over levels and points.

    value: [B, S, H, Dh], the L levels flattened row-major and concatenated (S = sum h*w).
    spatial_shapes: static ((h_0, w_0), ..., (h_{L-1}, w_{L-1})) of the levels, in order.
    sampling_locations: [B, Lq, H, L, P, 2] normalised (x, y); (0, 0) is the top-left corner
      of the map and (1, 1) the bottom-right one (pixel centres at (j + 0.5) / w).
    attention_weights: [B, Lq, H, L, P] (already softmaxed by the caller).
    Returns [B, Lq, H*Dh] (head-major channels) in value's dtype.

    Sampling: pixel coordinate (x*w - 0.5, y*h - 0.5); the 4 taps floor/floor+1 get the usual
    bilinear weights; a tap outside the map contributes 0 (grid_sample zeros padding, and the
    CUDA kernel `ms_deform_im2col_cuda.cuh:39-89`). Coordinates and weights are float32.
    """
    b, s, nh, dh = value.shape
    _, lq, _, nl, npt, _ = sampling_locations.shape
    if len(spatial_shapes) != nl:
        raise ValueError(f"{len(spatial_shapes)} spatial shapes for {nl} levels")
    if sum(h * w for h, w in spatial_shapes) != s:
        raise ValueError(f"spatial shapes {tuple(spatial_shapes)} do not sum to S={s}")
    hs, ws, starts = _level_constants(spatial_shapes)  # [L, 1] each (broadcast over P)
    f32 = jnp.float32
    corners = bilinear_corners(sampling_locations[..., 0], sampling_locations[..., 1], hs, ws,
                               starts)  # float32 whatever the locations' dtype

    def by_step(t):  # [B, Lq, H, L, P] -> [L*P, B, H, Lq]: one scan step per (level, point)
        return t.transpose(3, 4, 0, 2, 1).reshape(nl * npt, b, nh, lq)

    idx = jnp.stack([by_step(i) for i, _ in corners], 1)  # [L*P, 4, B, H, Lq]
    attn = by_step(attention_weights.astype(f32))
    wts = jnp.stack([by_step(w) * attn for _, w in corners], 1)  # [L*P, 4, B, H, Lq]
    v = value.transpose(0, 2, 1, 3)  # [B, H, S, Dh]
    take_rows = jax.vmap(jax.vmap(lambda vh, ih: jnp.take(vh, ih, axis=0, mode="clip")))

    # One (level, point) per step, as the official CUDA kernel loops
    # (`ms_deform_im2col_cuda.cuh`): the 4 corner values [4, B, H, Lq, Dh] of the step, weighted
    # by bilinear weight x attention weight and summed over the corners. Checkpointed, so the
    # backward pass recomputes a step's corner values instead of keeping them, as that kernel
    # does. Gathering all taps at once ([B, H, Lq, L*P*4, Dh], an earlier version) kept 0.4 GB
    # per image and layer (float32) for the backward pass at Mask2Former's 640² crops, and a
    # TPU, whose (8, 128) tiles pad the minor Dh = 32 four times, added padded copies of 2-3 GB
    # per 2 images (BENCHMARKS.md, "TPU compile without a TPU"). The corner axis leads (never
    # minor: a TPU would pad it 32x, and its layout assignment carries the product's preferred
    # layout back into the scan's inputs: 8.6 G instead of 1.1 G for 6 layers at 640², 2
    # images). The corners are summed by a batched product at HIGHEST precision (exact float32
    # on every backend); as multiply + sum, XLA:CPU runs the backward pass's reductions over Dh
    # through a slow library path (1.6x this function's time).
    @jax.checkpoint
    def step(acc, xs):
        idx_s, wts_s = xs  # [4, B, H, Lq] each
        taps = jnp.stack([take_rows(v, idx_s[c]) for c in range(4)]).astype(f32)
        return acc + jnp.einsum("cbhq,cbhqd->bhqd", wts_s, taps,
                                precision=jax.lax.Precision.HIGHEST), None

    out, _ = jax.lax.scan(step, jnp.zeros((b, nh, lq, dh), f32), (idx, wts))
    return out.transpose(0, 2, 1, 3).reshape(b, lq, nh * dh).astype(value.dtype)


def ring_offset_bias(n_heads: int, n_levels: int, n_points: int) -> np.ndarray:
    """Official init of `sampling_offsets.bias` (`ms_deform_attn.py:66-74`), [H*L*P*2].

    Head h points along theta_h = 2*pi*h/H; the unit vector (cos, sin) is scaled so its larger
    component is 1, then multiplied by (p + 1) for point p; identical for every level.
    """
    thetas = np.arange(n_heads, dtype=np.float32) * np.float32(2.0 * np.pi / n_heads)
    grid = np.stack([np.cos(thetas), np.sin(thetas)], -1)
    grid = grid / np.abs(grid).max(-1, keepdims=True)
    grid = np.tile(grid[:, None, None, :], (1, n_levels, n_points, 1))
    grid = grid * np.arange(1, n_points + 1, dtype=np.float32)[None, None, :, None]
    return grid.reshape(-1).astype(np.float32)


def _zeros(key, shape, dtype=jnp.float32):
    del key
    return jnp.zeros(shape, dtype)


class MSDeformAttn(nnx.Module):
    """Multi-scale deformable attention (`ms_deform_attn.py:34-121`).

    Init as official (`:66-80`): sampling_offsets weight 0 and ring bias, attention_weights
    weight and bias 0, value_proj / output_proj xavier_uniform weights and zero biases.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8,
                 n_points: int = 4, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.dtype = dtype
        ring = ring_offset_bias(n_heads, n_levels, n_points)
        xavier = nnx.initializers.xavier_uniform()
        self.sampling_offsets = nnx.Linear(
            d_model, n_heads * n_levels * n_points * 2, dtype=dtype, kernel_init=_zeros,
            bias_init=lambda key, shape, dt=jnp.float32: jnp.asarray(ring, dt), rngs=rngs)
        self.attention_weights = nnx.Linear(
            d_model, n_heads * n_levels * n_points, dtype=dtype, kernel_init=_zeros,
            bias_init=_zeros, rngs=rngs)
        self.value_proj = nnx.Linear(d_model, d_model, dtype=dtype, kernel_init=xavier,
                                     bias_init=_zeros, rngs=rngs)
        self.output_proj = nnx.Linear(d_model, d_model, dtype=dtype, kernel_init=xavier,
                                      bias_init=_zeros, rngs=rngs)

    def sample_inputs(self, query: jax.Array, reference_points: jax.Array,
                      input_flatten: jax.Array, spatial_shapes: SpatialShapes,
                      padding_mask: jax.Array | None = None):
        """The core's inputs: (value [B,S,H,Dh], locations [B,Lq,H,L,P,2], weights [B,Lq,H,L,P]).

        Shapes as in `__call__`. Exposed so tests can compare each intermediate.
        """
        b, lq, _ = query.shape
        s = input_flatten.shape[1]
        nh, nl, npt = self.n_heads, self.n_levels, self.n_points
        if len(spatial_shapes) != nl:
            raise ValueError(f"{len(spatial_shapes)} spatial shapes for {nl} levels")
        value = self.value_proj(input_flatten)
        if padding_mask is not None:  # masked_fill(mask[..., None], 0) (`:99-100`)
            value = jnp.where(padding_mask[..., None], 0, value).astype(value.dtype)
        value = value.reshape(b, s, nh, -1)
        offsets = self.sampling_offsets(query).astype(jnp.float32)
        offsets = offsets.reshape(b, lq, nh, nl, npt, 2)
        logits = self.attention_weights(query).astype(jnp.float32).reshape(b, lq, nh, nl * npt)
        weights = jax.nn.softmax(logits, axis=-1).reshape(b, lq, nh, nl, npt)
        # Offsets are in pixels of each level: normaliser (w, h) in (x, y) order (`:106-109`).
        norm = np.array([[w, h] for h, w in spatial_shapes], np.float32)  # [L, 2]
        ref = reference_points.astype(jnp.float32)[:, :, None, :, None, :]
        locations = ref + offsets / norm[None, None, None, :, None, :]
        return value, locations, weights

    def __call__(self, query: jax.Array, reference_points: jax.Array,
                 input_flatten: jax.Array, spatial_shapes: SpatialShapes,
                 padding_mask: jax.Array | None = None) -> jax.Array:
        """Deformable attention of the queries over the multi-level input.

        query: [B, Lq, D] (content + position); reference_points: [B or 1, Lq, L, 2]
        normalised (x, y) per level; input_flatten: [B, S, D], levels concatenated row-major;
        spatial_shapes: static ((h, w), ...) per level; padding_mask: [B, S] bool, True =
        padded (those value rows are zeroed) or None. Returns [B, Lq, D].
        """
        value, loc, weights = self.sample_inputs(query, reference_points, input_flatten,
                                                 spatial_shapes, padding_mask)
        out = ms_deform_attn_core(value, spatial_shapes, loc, weights)
        return self.output_proj(out)
