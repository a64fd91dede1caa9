"""DETR sine position encoding of a feature map, as Mask2Former's `PositionEmbeddingSine`.

(`mask2former/modeling/transformer_decoder/position_encoding.py:12-52`, with no padding mask:
the official pixel decoder and transformer decoder call it on the map's shape only.)
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def sine_position_embedding(h: int, w: int, dim: int, *, temperature: float = 10000.0,
                            normalize: bool = True, scale: float = 2 * np.pi,
                            eps: float = 1e-6) -> np.ndarray:
    """Returns the [h, w, dim] float32 sine position table of an h x w map (channels last).

    y_i = i + 1 and x_j = j + 1 (cumsum of the all-valid mask); with `normalize` they become
    y_i / (h + eps) * scale and x_j / (w + eps) * scale (`:35-38`). With F = dim / 2 and
    omega_k = temperature^(2 * floor(k / 2) / F), channel k < F is sin(y / omega_k) for even
    k and cos(y / omega_k) for odd k (`:40-50`); channels F + k are the same for x. Output
    channels are [y-part, x-part] (`:51`). Computed in float64 on the host, rounded once to
    float32 (the official float32 arithmetic differs by at most a few float32 ulps).
    The table is cached and read-only; it is a compile-time constant under jit.
    """
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    f = dim // 2
    y = np.arange(1, h + 1, dtype=np.float64)
    x = np.arange(1, w + 1, dtype=np.float64)
    if normalize:
        y = y / (h + eps) * scale
        x = x / (w + eps) * scale
    omega = temperature ** (2 * (np.arange(f) // 2) / f)
    even = np.arange(f) % 2 == 0

    def encode(t):  # [n] -> [n, F]
        p = t[:, None] / omega
        return np.where(even, np.sin(p), np.cos(p))

    pos_y = np.broadcast_to(encode(y)[:, None, :], (h, w, f))
    pos_x = np.broadcast_to(encode(x)[None, :, :], (h, w, f))
    table = np.concatenate([pos_y, pos_x], axis=-1).astype(np.float32)
    table.setflags(write=False)
    return table
