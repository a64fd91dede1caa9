"""The pre-norm transformer block shared by the ViT backbone and the Segmenter/RankSeg heads.

    x = x + DropPath(Dropout(Attn(norm1(x))))
    x = x + DropPath(MLP(norm2(x)))

`Attention` also serves as cross-attention (keys/values from another input, optional mask).

Parameter paths (public contract, see docs/parameters.md):
    norm1.{scale,bias}  attn.{query,key,value,out}.{kernel,bias}  norm2.{scale,bias}
    mlp.fc1.{kernel,bias}  mlp.fc2.{kernel,bias}
query/key/value kernels are [d, d] with head-major columns (head h owns columns
[h*dh, (h+1)*dh)), the layout of torch's fused in_proj rows transposed.

Randomness is explicit: stochastic ops take a `rng` key (None = deterministic), so a training
step is a pure function of (params, batch, key) and resumes exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from rankseg_jax.models import random_bits

Initializer = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class InitScheme:
    """Initialisers of one model part (the official backbone and heads differ)."""

    kernel: Initializer
    bias: Initializer


def torch_default_init() -> InitScheme:
    """torch.nn.Linear defaults: weight and bias ~ U(+-1/sqrt(fan_in)) (what mmcv leaves)."""

    def kernel(key, shape, dtype=jnp.float32):
        fan_in = 1
        for s in shape[:-1]:  # Linear [in, out]; Conv [kh, kw, in, out]
            fan_in *= s
        bound = 1.0 / fan_in ** 0.5
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    def bias(key, shape, dtype=jnp.float32, fan_in: int = 1):
        bound = 1.0 / fan_in ** 0.5
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return InitScheme(kernel, bias)


def trunc_normal_init() -> InitScheme:
    """Official head init: weight trunc_normal(std 0.02, bounds +-2 absolute), bias 0."""

    def kernel(key, shape, dtype=jnp.float32):
        return 0.02 * jax.random.truncated_normal(key, -100.0, 100.0, shape, dtype)

    return InitScheme(kernel, lambda key, shape, dtype=jnp.float32, fan_in=1: jnp.zeros(
        shape, dtype))


def dense(d_in: int, d_out: int, init: InitScheme, dtype, rngs: nnx.Rngs,
          use_bias: bool = True) -> nnx.Linear:
    """An nnx.Linear (kernel [d_in, d_out]) initialised with `init`, computing in `dtype`."""
    return nnx.Linear(
        d_in, d_out, use_bias=use_bias, dtype=dtype, kernel_init=init.kernel,
        bias_init=lambda key, shape, dt=jnp.float32: init.bias(key, shape, dt, fan_in=d_in),
        rngs=rngs)


def layer_norm(dim: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm with biased variance computed as E[(x-mean)^2] (torch numerics), float32."""
    return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, dtype=jnp.float32,
                         rngs=rngs)


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when rng is None or rate == 0."""
    if rng is None or rate == 0.0:
        return x
    keep = random_bits.bernoulli(rng, 1.0 - rate, x.shape)  # = jax.random.bernoulli
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def drop_path(x: jax.Array, rate: float | jax.Array, rng: jax.Array | None) -> jax.Array:
    """Stochastic depth per sample (timm semantics): keep the branch with prob 1 - rate.
    `rate` may be traced (a scanned stack of blocks passes each block's rate)."""
    if rng is None or (isinstance(rate, (int, float)) and rate == 0.0):
        return x
    keep = random_bits.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def split_rng(rng: jax.Array | None, n: int) -> list[jax.Array | None]:
    """n independent keys from rng, or n Nones when rng is None."""
    return [None] * n if rng is None else list(jax.random.split(rng, n))


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float,
                    mask: jax.Array | None = None, implementation: str = "xla",
                    pad_odd: bool | None = None) -> jax.Array:
    """`jax.nn.dot_product_attention` of q [B, Nq, h, dh] over k, v [B, Nk, h, dh];
    returns [B, Nq, h, dh]. mask: as `Attention.__call__`'s.

    pad_odd (default: when implementation == "cudnn" and mask is None): an odd Nq or Nk is
    padded with one zero token to an even length, the padded key is excluded through
    `key_value_seq_lengths` (cuDNN's padding mask) and the padded query row dropped, so the
    result equals the unpadded attention. Why: jax's cuDNN path (jax 0.10-0.12,
    `jax/_src/cudnn/fused_attention_stablehlo.py`) replaces a missing bias by an empty
    placeholder array before its training check `check_is_flash_attention(..., bias is not
    None, is_training=True)`, so every differentiated call is checked as if it had a bias,
    and biased training needs even lengths: "Unsupported sequence length Q 1025, KV 1025"
    for the ViT's 1 + 32² tokens at 512².
    """
    n, nk = q.shape[1], k.shape[1]
    if pad_odd is None:
        pad_odd = implementation == "cudnn" and mask is None
    if not pad_odd or (n % 2 == 0 and nk % 2 == 0):
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale,
                                            implementation=implementation)
    if mask is not None:
        raise ValueError("fused_attention: pad_odd=True takes no mask (pad the mask too or "
                         "call jax.nn.dot_product_attention directly)")
    b = q.shape[0]
    q_pad, kv_pad = ((0, 0), (0, n % 2), (0, 0), (0, 0)), ((0, 0), (0, nk % 2), (0, 0), (0, 0))
    y = jax.nn.dot_product_attention(
        jnp.pad(q, q_pad), jnp.pad(k, kv_pad), jnp.pad(v, kv_pad), scale=scale,
        key_value_seq_lengths=jnp.full((b,), nk, jnp.int32), implementation=implementation)
    return y[:, :n]


class Attention(nnx.Module):
    """Multi-head attention with separate q/k/v projections (head-major columns).

    Self-attention by default; cross-attention when `key_input` / `value_input` are given
    (torch `nn.MultiheadAttention(q, k, v)` semantics: q·k scaled by dh^-0.5, softmax over
    keys in float32). `init` initialises query/key/value/out; `out_init` (default `init`)
    overrides it for `out` (Mask2Former's decoder initialises the fused in_proj and out_proj
    differently). `implementation`: jax.nn.dot_product_attention's ("xla" or "cudnn") for
    the path without attention dropout.
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, init: InitScheme,
                 out_init: InitScheme | None = None, dtype=jnp.float32,
                 implementation: str = "xla", rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.implementation = implementation
        self.attn_drop = attn_drop
        self.proj_drop = proj_drop
        self.query = dense(dim, dim, init, dtype, rngs, use_bias=qkv_bias)
        self.key = dense(dim, dim, init, dtype, rngs, use_bias=qkv_bias)
        self.value = dense(dim, dim, init, dtype, rngs, use_bias=qkv_bias)
        self.out = dense(dim, dim, init if out_init is None else out_init, dtype, rngs)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None, *,
                 key_input: jax.Array | None = None, value_input: jax.Array | None = None,
                 mask: jax.Array | None = None) -> jax.Array:
        """Attention of the queries x over keys/values; returns [B, Nq, d].

        x: [B, Nq, d] query input (also the key/value input for self-attention).
        key_input: [B, Nk, d] key input (default x); value_input: [B, Nk, d] value input
        (default key_input). mask: bool broadcastable to [B, heads, Nq, Nk], True = may
        attend (jax convention; torch's bool attn_mask is its negation). A fully masked row
        gives a uniform average (callers must not rely on it; torch gives NaN there).
        """
        b, n, d = x.shape
        h = self.num_heads
        dh = d // h
        key_input = x if key_input is None else key_input
        value_input = key_input if value_input is None else value_input
        nk = key_input.shape[1]
        q = self.query(x).reshape(b, n, h, dh)
        k = self.key(key_input).reshape(b, nk, h, dh)
        v = self.value(value_input).reshape(b, nk, h, dh)
        rng_attn, rng_proj = split_rng(rng, 2)
        if rng_attn is None or self.attn_drop == 0.0:
            # "xla" (the reference numerics, every backend) or "cudnn" (fused flash
            # attention on CUDA GPUs; config validation checks dtype and head dim).
            y = fused_attention(q, k, v, scale=dh ** -0.5, mask=mask,
                                implementation=self.implementation).reshape(b, n, d)
        else:
            # The barrier keeps the scale out of the matrix product's fusion (same values:
            # the product is rounded, then scaled, as before): XLA:CPU (jaxlib 0.10) runs a
            # batched product with a fused elementwise epilogue ~5x slower than without
            # (the [6, 911, 911] logits of RankSeg's K = 847 multi-label block: 19 ms against
            # 3 ms); the scale fuses into the softmax instead. Elsewhere it only moves the
            # multiply into the softmax's fusion, which reads the logits anyway.
            logits = jax.lax.optimization_barrier(jnp.einsum("bqhd,bkhd->bhqk", q, k))
            logits = logits * (dh ** -0.5)
            # Softmax in float32 even for bf16 compute.
            logits = logits.astype(jnp.float32)
            if mask is not None:
                logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
            probs = dropout(probs, self.attn_drop, rng_attn)
            y = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, n, d)
        return dropout(self.out(y), self.proj_drop, rng_proj)


class Mlp(nnx.Module):
    """fc1 -> exact (erf) GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, dim: int, hidden: int, *, drop: float = 0.0, init: InitScheme,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        self.drop = drop
        self.fc1 = dense(dim, hidden, init, dtype, rngs)
        self.fc2 = dense(hidden, dim, init, dtype, rngs)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """x: [..., d] -> [..., d]."""
        r1, r2 = split_rng(rng, 2)
        x = jax.nn.gelu(self.fc1(x), approximate=False)
        x = dropout(x, self.drop, r1)
        return dropout(self.fc2(x), self.drop, r2)


class Block(nnx.Module):
    """Pre-norm transformer block (backbone: eps 1e-6; heads: eps 1e-5)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, eps: float,
                 qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, init: InitScheme, dtype=jnp.float32,
                 attention: str = "xla", rngs: nnx.Rngs):
        self.drop_path = drop_path
        self.norm1 = layer_norm(dim, eps, rngs)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                              proj_drop=drop, init=init, dtype=dtype,
                              implementation=attention, rngs=rngs)
        self.norm2 = layer_norm(dim, eps, rngs)
        self.mlp = Mlp(dim, mlp_dim, drop=drop, init=init, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None,
                 drop_path_rate: jax.Array | None = None) -> jax.Array:
        """x: [B, N, d] -> [B, N, d]; rng None means eval (no dropout, no drop path).
        drop_path_rate: overrides the block's own rate (a traced scalar when the blocks run
        under a scan, where one module definition serves every block)."""
        r_attn, r_mlp, r_dp1, r_dp2 = split_rng(rng, 4)
        dtype = x.dtype
        rate = self.drop_path if drop_path_rate is None else drop_path_rate
        x = x + drop_path(self.attn(self.norm1(x).astype(dtype), r_attn), rate, r_dp1)
        x = x + drop_path(self.mlp(self.norm2(x).astype(dtype), r_mlp), rate, r_dp2)
        return x


def remat_policy(remat: bool | str):
    """The `jax.checkpoint` policy of a rematerialised block: None (save nothing but the
    block's inputs) for True and "nothing_saveable", else the `jax.checkpoint_policies`
    function of that name (e.g. "dots_saveable")."""
    if remat is True or remat == "nothing_saveable":
        return None
    policy = getattr(jax.checkpoint_policies, remat, None)
    if policy is None:
        raise ValueError(f"unknown remat policy {remat!r}: a name in jax.checkpoint_policies")
    return policy


def scan_blocks(blocks, x: jax.Array, keys: list[jax.Array | None],
                remat: bool | str = False) -> jax.Array:
    """Applies `blocks` in order as one `lax.scan` over their stacked parameters; block i is
    called with keys[i] (all None in evaluation) and its own drop-path rate.

    The parameters stay where they are (`layers.{i}...`, the checkpoint and conversion
    contract); each call stacks them ([n, ...] copies, whose gradients flow back to the
    per-block parameters). XLA then compiles one block body instead of n, and the backward
    pass cannot fuse element-wise work across blocks. Each block keeps its own key and its
    own drop-path rate (passed in as data). The blocks must differ only in their rates.
    """
    graphdef, _ = nnx.split(blocks[0])
    states = [nnx.split(blk)[1] for blk in blocks]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    rates = jnp.asarray([blk.drop_path for blk in blocks], jnp.float32)
    keys = None if keys[0] is None else jnp.stack(keys)

    def body(y, per_block):
        state, rate, key = per_block
        return nnx.merge(graphdef, state)(y, key, drop_path_rate=rate), None

    if remat:
        body = jax.checkpoint(body, policy=remat_policy(remat))
    x, _ = jax.lax.scan(body, x, (stacked, rates, keys))
    return x


def run_blocks(blocks, x: jax.Array, rng: jax.Array | None,
               remat: bool | str = False) -> jax.Array:
    """Applies a sequence of Blocks, each with its own key. remat: False (keep activations
    for the backward pass), or True / a `jax.checkpoint_policies` name: rematerialise each
    block, keeping what that policy saves (`remat_policy`)."""
    policy = remat_policy(remat) if remat else None
    for blk, key in zip(blocks, split_rng(rng, len(blocks)), strict=True):
        if remat:
            x = nnx.remat(lambda m, y, k: m(y, k), policy=policy)(blk, x, key)
        else:
            x = blk(x, key)
    return x
