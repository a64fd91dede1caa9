"""RankSeg's classifier pieces: rank-slot normalisation, per-class linear, cosine scores.

`RankNorm` is the rank-adaptive temperature: a LayerNorm over the slots of the last axis
whose scale and bias are indexed by slot, so slot r (rank r) gets its own temperature and
bias. The Segmenter baseline uses the same layer over its K class slots (`mask_norm`), and
Mask2Former+RankSeg over its kappa+1 rank slots (`ml_norm`, the no-object column last).

Parameter paths: RankNorm `scale [n]`, `bias [n]` ([1] when shared);
GroupWiseLinear `kernel [K, d]`, `bias [K]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class RankNorm(nnx.Module):
    """LayerNorm over the last axis with per-slot affine (eps 1e-5, biased variance).

    With `shared=True` all slots share one scale and one bias (the paper's "w/o RA"
    ablation: no rank-adaptive temperature). Params: scale, bias of shape [n] or [1].
    """

    def __init__(self, n: int, *, shared: bool = False, eps: float = 1e-5):
        self.eps = eps
        size = 1 if shared else n
        self.scale = nnx.Param(jnp.ones((size,)))
        self.bias = nnx.Param(jnp.zeros((size,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., n] float -> float32, normalised over the last axis, then scale*x + bias."""
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class GroupWiseLinear(nnx.Module):
    """One linear classifier per class: out[b, c] = sum_k W[c, k] x[b, c, k] + bias[c]."""

    def __init__(self, num_classes: int, dim: int, *, rngs: nnx.Rngs):
        bound = 1.0 / np.sqrt(dim)  # official init: U(+-1/sqrt(hidden)) for W and b
        k1, k2 = jax.random.split(rngs.params())
        self.kernel = nnx.Param(jax.random.uniform(k1, (num_classes, dim), jnp.float32,
                                                   -bound, bound))
        self.bias = nnx.Param(jax.random.uniform(k2, (num_classes,), jnp.float32, -bound,
                                                 bound))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, K, d] -> [B, K] float32."""
        return jnp.einsum("bkd,kd->bk", x.astype(jnp.float32), self.kernel[...]) + self.bias[...]


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """Cosine similarity of every row of `a` with every row of `b`, without epsilon.

    a: [B, P, d]; b: [B, N, d] or [N, d] (shared by the batch). Returns [B, P, N] float32.
    No epsilon, as both official cosine classifiers (Segmenter's masks and Mask2Former's
    `USE_LAYERNORM` class head): a zero-norm row cannot occur with real features.
    """
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    a = a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    b = b / jnp.linalg.norm(b, axis=-1, keepdims=True)
    if b.ndim == 2:
        return jnp.einsum("bpd,nd->bpn", a, b)
    return jnp.einsum("bpd,bnd->bpn", a, b)
