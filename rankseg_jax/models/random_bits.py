"""Dropout's keep masks: bit for bit `jax.random.bernoulli`, as one fusible expression.

Why by hand: for a threefry key, jax lowers the Threefry-2x32 hash on the CPU as a rolled
loop of 5 iterations (`jax/_src/random/threefry2x32.py`, `_threefry2x32_cpu_lowering_rule`,
chosen there to keep CPU compiles small), and XLA:CPU runs every iteration as its own
passes over the whole counter arrays: for the attention dropout of RankSeg's `tran_enc`
block at K = 847 that is 6 x 911 x 911 counters, ~10 ns per mask element. On GPU and TPU
jax already emits the hash unrolled. `bernoulli` below emits the unrolled hash from `jnp`
operations, so XLA fuses counters, hash, comparison and the dropout's select into one loop:
the ViT-S/16 RankSeg train step at K = 847 runs 9% faster on a 2-core CPU
(`BENCHMARKS.md`, "CPU speed: multi-output fusion and one-pass dropout bits").

The bits are exactly those of jax's partitionable threefry (`jax_threefry_partitionable`,
on by default in the jax versions this project supports): the counters are the element's
flat index as (high, low) uint32 words, bits = y1 ^ y2 of (y1, y2) = Threefry-2x32(key,
counters), and keep = uniform < p with jax's mantissa construction of a float32 uniform
(`jax/_src/random/core.py`, `_uniform`, `_bernoulli`). So dropout masks, and with them
every training run, are the same as with `jax.random.bernoulli`
(`tests/models/test_random_bits.py` checks equality). Keys of another implementation
(`train.dropout_prng='rbg'`), partitionable threefry switched off, scalar shapes and arrays
of 2**32 elements or more go to `jax.random.bernoulli` itself.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# Threefry-2x32 with 20 rounds (Salmon et al. 2011, Table 4): the rotation constants of
# the even and odd groups of 4 rounds, and the key-schedule parity constant.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x: jax.Array, r: int) -> jax.Array:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array,
                 x2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The Threefry-2x32 block function, unrolled (the form jax emits on GPU/TPU).

    k1, k2: uint32 scalars (the key's two words); x1, x2: uint32 arrays of one shape (the
    counters). Returns the two uint32 output words, each of the counters' shape.
    """
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for group in range(5):
        for r in _ROTATIONS[group % 2]:
            x1 = x1 + x2
            x2 = _rotate_left(x2, r) ^ x1
        x1 = x1 + ks[(group + 1) % 3]
        x2 = x2 + ks[(group + 2) % 3] + np.uint32(group + 1)
    return x1, x2


def _threefry_words(key: jax.Array) -> jax.Array | None:
    """The uint32 [2] data of a threefry key (raw or typed), or None for any other key."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(key)) != "threefry2x32" or key.shape != ():
            return None
        return jax.random.key_data(key)
    if (key.dtype == jnp.uint32 and key.shape == (2,)
            and jax.config.jax_default_prng_impl == "threefry2x32"):
        return key
    return None


def _bits_from_words(words: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """uint32 bits of `shape` from threefry key data `words` [2] (size below 2**32)."""
    # The flat row-major index, built from one broadcasted iota per axis rather than
    # iota(size).reshape(shape): like jax's `iota_2x32_shape`, this form lets the SPMD
    # partitioner give each device only its own slice of the counters. Its high word is 0
    # below 2**32 elements.
    low = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        low = low + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
        stride *= shape[axis]
    y1, y2 = threefry2x32(words[0], words[1], jnp.zeros(shape, jnp.uint32), low)
    return y1 ^ y2


def random_bits32(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """uint32 bits of `shape` (below 2**32 elements), equal to `jax.random.bits(key, shape)`
    under partitionable threefry. key: a threefry key, raw uint32 [2] or typed."""
    words = _threefry_words(key)
    if words is None:
        raise ValueError(f"random_bits32 takes a threefry key (raw uint32 [2] or typed); "
                         f"got dtype {key.dtype}, shape {key.shape}")
    return _bits_from_words(words, tuple(shape))


def bernoulli(key: jax.Array, p: float | jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Keep mask: bool array of `shape`, True with probability p; equal to
    `jax.random.bernoulli(key, jnp.float32(p), shape)`.

    key: a threefry key, raw uint32 [2] or typed (other keys are passed to jax); p: a
    Python float or a float32 scalar (possibly traced).
    """
    shape = tuple(int(d) for d in shape)
    p = jnp.asarray(p, jnp.float32)
    words = _threefry_words(key)
    fast = (words is not None and jax.config.jax_threefry_partitionable
            and len(shape) > 0 and math.prod(shape) < 2**32)
    if not fast:
        return jax.random.bernoulli(key, p, shape)
    bits = _bits_from_words(words, shape)
    # jax's uniform in [0, 1): 23 random mantissa bits under the exponent of 1.0, minus 1.
    mantissa = (bits >> np.uint32(32 - 23)) | np.array(1.0, np.float32).view(np.uint32)
    uniform = jax.lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1.0)
    return uniform < p
