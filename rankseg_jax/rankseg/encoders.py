"""The multi-label encoders xi of RankSeg: image-level class scores for ranking.

* `encode_class_tokens` (the `tran_enc` pattern): transformer block(s) over [context tokens;
  class tokens], LayerNorm, one linear classifier per class on the class tokens. The
  Segmenter host runs it on pooled patch tokens with its head block 0 (`tran_enc`);
  Mask2Former's `MultiLabelHead` on the object queries of one decoder layer.
* `MultiLabelDecoder` (`tran_dec`): DETR-style decoder, class queries attend to the pooled grid.
* `MultiLabelGAP` (`gap_linear`): global average pool, Linear+ReLU, Linear.
* `MultiLabelHead`: Mask2Former+RankSeg's head (`mask2former/modeling/multilabel_head.py`).

Each returns image logits [B, K] (float32); the transformer ones also return the normalised
class features [B, K, d] a pixel host gathers its classifiers from.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rankseg_jax.models import transformer as tfm
from rankseg_jax.rankseg.classifier import GroupWiseLinear


def encode_class_tokens(blocks, norm, fc: GroupWiseLinear, context: jax.Array,
                        class_tokens: jax.Array, rng: jax.Array | None = None,
                        remat: bool | str = False, *, return_sequence: bool = False):
    """Image logits from [context; class tokens] through `blocks`, `norm` and `fc`.

    blocks: sequence of transformer Blocks; norm: LayerNorm; fc: GroupWiseLinear over K.
    context: [B, N, d] (pooled patches or object queries); class_tokens: [B, K, d].
    Returns (image_logits [B, K] float32, class_features [B, K, d] = norm of the class part,
    in the compute dtype of `context`); with return_sequence a third element
    {'block_out', 'norm_out'} [B, N+K, d]: the whole sequence after the blocks and the norm.
    """
    k = class_tokens.shape[1]
    x = jnp.concatenate([context, class_tokens.astype(context.dtype)], axis=1)
    x = tfm.run_blocks(blocks, x, rng, remat)
    if not return_sequence:
        feats = norm(x[:, -k:]).astype(context.dtype)
        return fc(feats), feats
    normed = norm(x).astype(context.dtype)  # LayerNorm is per token: same class part
    feats = normed[:, -k:]
    return fc(feats), feats, {"block_out": x, "norm_out": normed}


class MultiLabelHead(nnx.Module):
    """Mask2Former+RankSeg's multi-label head on object queries.

    proj_dec (Linear d_in -> d), learned class tokens `cls_emb` [1, K, d], one pre-norm ViT
    block (heads d // 64 officially, FFN 4d, dropout), LayerNorm, GroupWiseLinear
    (`mask2former/modeling/multilabel_head.py:44-98`, built at
    `mask2former/maskformer_model.py:159-171` with dropout 0.1). No positional embedding,
    no pooling of the queries.
    Parameter paths: cls_emb [1, K, d], proj_dec.{kernel [d_in, d], bias}, block.<Block>,
    norm.{scale,bias}, fc.{kernel [K, d], bias [K]}.
    """

    def __init__(self, *, num_classes: int, d_in: int, d_model: int, num_heads: int,
                 dropout: float = 0.1, dtype=jnp.float32, rngs: nnx.Rngs):
        init = tfm.trunc_normal_init()
        self.cls_emb = nnx.Param(0.02 * jax.random.truncated_normal(
            rngs.params(), -100.0, 100.0, (1, num_classes, d_model)))
        self.proj_dec = tfm.dense(d_in, d_model, init, dtype, rngs)
        self.block = tfm.Block(d_model, num_heads, 4 * d_model, eps=1e-5, drop=dropout,
                               attn_drop=dropout, init=init, dtype=dtype, rngs=rngs)
        self.norm = tfm.layer_norm(d_model, 1e-5, rngs)
        self.fc = GroupWiseLinear(num_classes, d_model, rngs=rngs)
        self.dtype = dtype

    def __call__(self, queries: jax.Array, rng: jax.Array | None = None, *,
                 return_intermediates: bool = False):
        """queries: [B, Q, d_in] raw decoder-layer outputs; rng: dropout key (None = eval).

        Returns image logits [B, K] float32; with return_intermediates (logits, {'tokens'
        [B, Q, d] = proj_dec output, 'block_out' / 'norm_out' [B, Q+K, d]}).
        """
        tokens = self.proj_dec(queries.astype(self.dtype))
        emb = jnp.broadcast_to(self.cls_emb[...], (tokens.shape[0],) + self.cls_emb.shape[1:])
        if not return_intermediates:
            logits, _ = encode_class_tokens([self.block], self.norm, self.fc, tokens, emb, rng)
            return logits
        logits, _, seq = encode_class_tokens([self.block], self.norm, self.fc, tokens, emb, rng,
                                             return_sequence=True)
        return logits, {"tokens": tokens, **seq}


def sine_position_grid(size: int, dim: int) -> np.ndarray:
    """DETR sine position embedding of a size x size grid, [size*size, dim] float32.

    The official `RankSegDecoderHead` buffer `position_embedding.pe`: y/x = index+1,
    normalised by (size + 1e-6) * 2pi; dim_t[k] = 10000^(2*floor(k/2)/(dim/2)); even
    channels sin, odd cos; the first dim/2 channels come from y, the rest from x.
    Row-major over (i, j).
    """
    half = dim // 2
    idx = np.arange(1, size + 1, dtype=np.float64) / (size + 1e-6) * 2 * np.pi
    dim_t = 10000.0 ** (2 * (np.arange(half) // 2) / half)
    p = idx[:, None] / dim_t  # [size, half]
    enc = np.where(np.arange(half) % 2 == 0, np.sin(p), np.cos(p))  # [size, half]
    y = np.broadcast_to(enc[:, None, :], (size, size, half))
    x = np.broadcast_to(enc[None, :, :], (size, size, half))
    return np.concatenate([y, x], axis=-1).reshape(size * size, dim).astype(np.float32)


class _DecoderLayer(nnx.Module):
    """Post-norm DETR decoder layer with its self-attention removed (official ablation)."""

    def __init__(self, dim, num_heads, d_ff, dropout, init, dtype, rngs):
        self.dropout = dropout
        # Dropout on the attention probabilities only, as torch nn.MultiheadAttention.
        self.cross_attn = tfm.Attention(dim, num_heads, attn_drop=dropout, init=init,
                                        dtype=dtype, rngs=rngs)
        self.norm2 = tfm.layer_norm(dim, 1e-5, rngs)
        self.linear1 = tfm.dense(dim, d_ff, init, dtype, rngs)
        self.linear2 = tfm.dense(d_ff, dim, init, dtype, rngs)
        self.norm3 = tfm.layer_norm(dim, 1e-5, rngs)

    def __call__(self, tgt, memory, pos, query_pos, rng):
        r = tfm.split_rng(rng, 4)
        att = self.cross_attn(tgt + query_pos, r[0], key_input=memory + pos,
                              value_input=memory)
        tgt = self.norm2(tgt + tfm.dropout(att, self.dropout, r[1])).astype(tgt.dtype)
        ff = self.linear2(tfm.dropout(jax.nn.relu(self.linear1(tgt)), self.dropout, r[2]))
        return self.norm3(tgt + tfm.dropout(ff, self.dropout, r[3])).astype(tgt.dtype)


class MultiLabelDecoder(nnx.Module):
    """`tran_dec` multi-label encoder: class queries cross-attend to the pooled grid.

    input_proj (1x1 conv as Linear C->d), 2 decoder layers, final LN, GroupWiseLinear.
    """

    def __init__(self, *, num_classes, d_encoder, d_model, num_heads, d_ff, num_layers,
                 dropout, pool_size, dtype, rngs):
        init = tfm.trunc_normal_init()
        self.input_proj = tfm.dense(d_encoder, d_model, init, dtype, rngs)
        self.layers = nnx.List([
            _DecoderLayer(d_model, num_heads, d_ff, dropout, init, dtype, rngs)
            for _ in range(num_layers)])
        self.norm = tfm.layer_norm(d_model, 1e-5, rngs)
        self.fc = GroupWiseLinear(num_classes, d_model, rngs=rngs)
        self.pool_size = pool_size  # the sine positions are a constant, not a parameter
        self.d_model = d_model

    def __call__(self, pooled: jax.Array, queries: jax.Array, rng) -> jax.Array:
        """pooled: [B, s, s, C]; queries: [B, K, d] class embeddings. Returns [B, K] logits."""
        b, s1, s2, c = pooled.shape
        memory = self.input_proj(pooled.reshape(b, s1 * s2, c))
        pos = jnp.asarray(sine_position_grid(self.pool_size, self.d_model), memory.dtype)[None]
        tgt = jnp.zeros_like(queries)
        for layer, key in zip(self.layers, tfm.split_rng(rng, len(self.layers)), strict=True):
            tgt = layer(tgt, memory, pos, queries, key)
        return self.fc(self.norm(tgt))


class MultiLabelGAP(nnx.Module):
    """`gap_linear` multi-label encoder: global average -> Linear+ReLU -> Linear (1x1 convs)."""

    def __init__(self, *, num_classes, d_encoder, dtype, rngs):
        init = tfm.torch_default_init()
        self.fc1 = tfm.dense(d_encoder, d_encoder, init, dtype, rngs)
        self.fc2 = tfm.dense(d_encoder, num_classes, init, dtype, rngs)

    def __call__(self, pooled: jax.Array) -> jax.Array:
        """pooled: [B, s, s, C] -> [B, K] float32 logits."""
        g = pooled.mean(axis=(1, 2))
        return self.fc2(jax.nn.relu(self.fc1(g))).astype(jnp.float32)
