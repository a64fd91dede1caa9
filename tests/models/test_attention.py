"""`transformer.Attention` used as masked cross-attention vs a float64 NumPy reference."""

import jax
import numpy as np
from flax import nnx

from rankseg_jax.models import transformer as tfm


def _reference(attn, x, keys, values, allowed):
    """torch nn.MultiheadAttention(q, k, v, attn_mask=~allowed) in float64."""
    p = {n: {k: np.asarray(v[...], np.float64) for k, v in vars(getattr(attn, n)).items()
             if k in ("kernel", "bias")} for n in ("query", "key", "value", "out")}
    lin = lambda t, n: t @ p[n]["kernel"] + p[n]["bias"]
    b, nq, d = x.shape
    h = attn.num_heads
    dh = d // h
    q = lin(x, "query").reshape(b, nq, h, dh) * dh ** -0.5
    k = lin(keys, "key").reshape(b, -1, h, dh)
    v = lin(values, "value").reshape(b, -1, h, dh)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k)
    logits = np.where(allowed, logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return lin(np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, nq, d), "out")


def test_masked_cross_attention_both_paths():
    init = tfm.InitScheme(nnx.initializers.lecun_normal(),
                          lambda key, shape, dtype, fan_in=1: 0.1 * jax.random.normal(key, shape))
    # attn_drop 1e-12 takes the explicit (dropout) path while keeping every probability.
    fused = tfm.Attention(8, 2, init=init, rngs=nnx.Rngs(0))
    explicit = tfm.Attention(8, 2, attn_drop=1e-12, init=init, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 8)).astype(np.float32)
    keys = rng.normal(size=(2, 5, 8)).astype(np.float32)
    values = rng.normal(size=(2, 5, 8)).astype(np.float32)
    allowed = rng.uniform(size=(2, 1, 3, 5)) < 0.6
    allowed[..., 0] = True  # no fully masked row
    ref = _reference(fused, x, keys, values, allowed)
    out_fused = fused(x, key_input=keys, value_input=values, mask=allowed)
    out_explicit = explicit(x, jax.random.key(1), key_input=keys, value_input=values,
                            mask=allowed)
    np.testing.assert_allclose(np.asarray(out_fused), ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out_explicit), ref, rtol=0, atol=1e-5)
    # Self-attention default: keys and values are the queries' input.
    np.testing.assert_allclose(np.asarray(fused(x)),
                               _reference(fused, x, x, x, np.ones((1, 1, 3, 3), bool)),
                               rtol=0, atol=1e-5)
