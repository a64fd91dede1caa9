"""Mask2Former's `MultiScaleMaskedTransformerDecoder`
(`mask2former/modeling/transformer_decoder/mask2former_transformer_decoder.py`).

Q learnable queries attend, layer by layer, to the 3 pixel-decoder maps in round robin
(layer i reads level i % 3: 1/32, 1/16, 1/8). Each layer is post-norm masked cross-attention
-> self-attention -> FFN (`:40-178`, `:395-426`). Before the first layer and after every
layer a prediction head reads decoder_norm(queries) (`:440-460`): class logits (Linear with
bias, or the RankSeg cosine classifier), mask logits = mask_embed(q) . mask_features, and the
next layer's cross-attention mask = sigmoid(bilinear(mask logits -> next level size)) < 0.5,
where (query) rows that mask every key are cleared (`:402`; otherwise softmax gives NaN).

Output dict (P = num_layers + 1 predictions, L = num_layers):
    class_logits   [P, B, Q, K+1]   raw head outputs (cosine in [-1, 1] when cosine_classifier)
    mask_logits    [P, B, Q, H/4, W/4]
    query_features [L, B, Q, D]     raw layer outputs, before decoder_norm (RankSeg reads [2])
    cross_attn_masks (return_attn_masks only): L arrays [B, Q, h_l*w_l] bool, True = may NOT
                   attend (official convention), after the all-masked-row fix; identical for
                   every head (official repeats it per head).
Prediction p = 0 is on the learnable queries; p = P - 1 is the final one (`pred_logits`).

Parameter paths (public contract; official key = `sem_seg_head.predictor.` + right):
    query_feat [Q, D]                          query_feat.weight
    query_embed [Q, D]                         query_embed.weight
    level_embed [3, D]                         level_embed.weight
    input_proj.{l}.{kernel [1,1,C,D], bias}    input_proj.{l}.{weight,bias}  (only when
                                               in_channels != D or enforce_input_proj)
    layers.{i}.cross_attn.{query,key,value}.{kernel [D,D], bias [D]}
                                               transformer_cross_attention_layers.{i}.
                                               multihead_attn.in_proj_{weight,bias} thirds
    layers.{i}.cross_attn.out.{kernel,bias}    ….multihead_attn.out_proj.*
    layers.{i}.cross_norm.{scale,bias}         transformer_cross_attention_layers.{i}.norm.*
    layers.{i}.self_attn.*                     transformer_self_attention_layers.{i}.self_attn.*
    layers.{i}.self_norm.{scale,bias}          transformer_self_attention_layers.{i}.norm.*
    layers.{i}.linear1.{kernel [D,F], bias}    transformer_ffn_layers.{i}.linear1.*
    layers.{i}.linear2.{kernel [F,D], bias}    transformer_ffn_layers.{i}.linear2.*
    layers.{i}.ffn_norm.{scale,bias}           transformer_ffn_layers.{i}.norm.*
    decoder_norm.{scale,bias} [D]              decoder_norm.*
    class_embed.kernel [D, K+1] (+ .bias [K+1] unless cosine_classifier)   class_embed.*
    mask_embed.layers.{0,1,2}.{kernel,bias}    mask_embed.layers.{0,1,2}.*
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rankseg_jax import resize
from rankseg_jax.models import transformer as tfm
from rankseg_jax.models.position_encoding import sine_position_embedding

_zeros = nnx.initializers.zeros_init()


def _xavier_fused_qkv(key, shape, dtype=jnp.float32):
    """xavier_uniform of torch's fused in_proj_weight [3d, d], one [d, d] third of it.

    The official init runs xavier on the whole (3d, d) matrix (`:32-35`), so the bound is
    sqrt(6 / (d + 3d)), not that of a square d x d matrix.
    """
    bound = np.sqrt(6.0 / (shape[0] + 3 * shape[1]))
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _attention(dim: int, num_heads: int, dropout: float, dtype, rngs) -> tfm.Attention:
    """torch nn.MultiheadAttention(dim, heads) with the decoder's init (zero biases)."""
    zero_bias = lambda key, shape, dt=jnp.float32, fan_in=1: jnp.zeros(shape, dt)
    return tfm.Attention(
        dim, num_heads, attn_drop=dropout,
        init=tfm.InitScheme(_xavier_fused_qkv, zero_bias),
        out_init=tfm.InitScheme(nnx.initializers.xavier_uniform(), zero_bias),
        dtype=dtype, rngs=rngs)


def clear_full_rows(blocked: jax.Array) -> jax.Array:
    """The official all-masked-row fix (`:402`): rows masking every key become all False.

    blocked: [..., Nk] bool, True = may not attend. Returns the same shape.
    """
    return blocked & ~jnp.all(blocked, axis=-1, keepdims=True)


class DecoderLayer(nnx.Module):
    """One post-norm Mask2Former layer: masked cross-attention, self-attention, FFN (ReLU).

    Cross: q = tgt + query_pos, k = memory + pos, v = memory (`:98-110`); self: q = k = tgt +
    query_pos, v = tgt (`:40-50`); FFN `:163-167`. Each sub-layer is tgt = LN(tgt + x).
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, *, dropout: float = 0.0,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        self.dropout = dropout
        self.cross_attn = _attention(dim, num_heads, dropout, dtype, rngs)
        self.cross_norm = tfm.layer_norm(dim, 1e-5, rngs)
        self.self_attn = _attention(dim, num_heads, dropout, dtype, rngs)
        self.self_norm = tfm.layer_norm(dim, 1e-5, rngs)
        # FFN: xavier weights, torch-default biases (`:155-158`).
        init = tfm.InitScheme(nnx.initializers.xavier_uniform(), tfm.torch_default_init().bias)
        self.linear1 = tfm.dense(dim, ffn_dim, init, dtype, rngs)
        self.linear2 = tfm.dense(ffn_dim, dim, init, dtype, rngs)
        self.ffn_norm = tfm.layer_norm(dim, 1e-5, rngs)

    def __call__(self, tgt: jax.Array, query_pos: jax.Array, memory: jax.Array,
                 pos: jax.Array, allowed: jax.Array | None,
                 rng: jax.Array | None = None) -> jax.Array:
        """tgt, query_pos: [B, Q, D]; memory: [B, S, D]; pos: [1 or B, S, D]; allowed: bool
        broadcastable to [B, heads, Q, S] (True = may attend) or None. Returns [B, Q, D]."""
        r = tfm.split_rng(rng, 6)
        dtype = tgt.dtype
        q = tgt + query_pos
        att = self.cross_attn(q, r[0], key_input=memory + pos, value_input=memory,
                              mask=allowed)
        tgt = self.cross_norm(tgt + tfm.dropout(att, self.dropout, r[1])).astype(dtype)
        q = tgt + query_pos
        att = self.self_attn(q, r[2], value_input=tgt)
        tgt = self.self_norm(tgt + tfm.dropout(att, self.dropout, r[3])).astype(dtype)
        ff = tfm.dropout(jax.nn.relu(self.linear1(tgt)), self.dropout, r[4])
        ff = self.linear2(ff)
        return self.ffn_norm(tgt + tfm.dropout(ff, self.dropout, r[5])).astype(dtype)


class MaskEmbed(nnx.Module):
    """MLP(D, D, mask_dim, 3 layers): Linear-ReLU-Linear-ReLU-Linear (`:192-204`)."""

    def __init__(self, dim: int, mask_dim: int, num_layers: int = 3, *, dtype,
                 rngs: nnx.Rngs):
        init = tfm.torch_default_init()
        dims = [dim] * num_layers + [mask_dim]
        self.layers = nnx.List([tfm.dense(dims[i], dims[i + 1], init, dtype, rngs)
                                for i in range(num_layers)])

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., D] -> [..., mask_dim]."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x


class MultiScaleMaskedTransformerDecoder(nnx.Module):
    """Masked-attention transformer decoder (see the module docstring).

    in_channels: channels of the pixel-decoder maps; hidden_dim D; num_queries Q;
    num_heads (8); ffn_dim (2048 official); num_layers = DEC_LAYERS - 1 (9 official);
    num_classes K (the class head has K + 1 outputs, the last = no object); mask_dim: channels
    of mask_features; cosine_classifier: the RankSeg `USE_LAYERNORM` head (no bias; logits =
    cos(decoder_norm(q), class_embed row), no eps, `:443-446`); enforce_input_proj as
    official; dropout 0.0 (hard-coded officially).
    """

    def __init__(self, *, in_channels: int = 256, hidden_dim: int = 256,
                 num_queries: int = 100, num_heads: int = 8, ffn_dim: int = 2048,
                 num_layers: int = 9, num_classes: int = 150, mask_dim: int = 256,
                 cosine_classifier: bool = False, enforce_input_proj: bool = False,
                 num_feature_levels: int = 3, dropout: float = 0.0, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.num_feature_levels = num_feature_levels
        self.cosine_classifier = cosine_classifier
        self.dtype = dtype
        self.layers = nnx.List([
            DecoderLayer(hidden_dim, num_heads, ffn_dim, dropout=dropout, dtype=dtype,
                         rngs=rngs) for _ in range(num_layers)])
        self.decoder_norm = tfm.layer_norm(hidden_dim, 1e-5, rngs)
        # nn.Embedding init N(0, 1) (`:318-324`).
        self.query_feat = nnx.Param(jax.random.normal(rngs.params(), (num_queries, hidden_dim)))
        self.query_embed = nnx.Param(
            jax.random.normal(rngs.params(), (num_queries, hidden_dim)))
        self.level_embed = nnx.Param(
            jax.random.normal(rngs.params(), (num_feature_levels, hidden_dim)))
        if in_channels != hidden_dim or enforce_input_proj:  # else identity (`:325-331`)
            self.input_proj = nnx.List([
                nnx.Conv(in_channels, hidden_dim, (1, 1), dtype=dtype,
                         kernel_init=nnx.initializers.variance_scaling(1.0, "fan_in",
                                                                       "uniform"),
                         bias_init=_zeros, rngs=rngs)
                for _ in range(num_feature_levels)])
        else:
            self.input_proj = None
        self.class_embed = tfm.dense(hidden_dim, num_classes + 1, tfm.torch_default_init(),
                                     dtype, rngs, use_bias=not cosine_classifier)
        self.mask_embed = MaskEmbed(hidden_dim, mask_dim, dtype=dtype, rngs=rngs)

    def prediction_heads(self, output: jax.Array, mask_features: jax.Array,
                         attn_size: tuple[int, int] | None):
        """Class logits [B,Q,K+1], mask logits [B,Q,H,W] and the next cross-attention mask.

        output: [B, Q, D] raw queries; mask_features: [B, H, W, M]; attn_size: (h, w) of the
        next layer's memory, or None to skip the mask. The mask is [B, Q, h*w] bool, True =
        may not attend, before the all-masked-row fix (`:440-460`).
        """
        y = self.decoder_norm(output)  # float32
        if self.cosine_classifier:
            w = self.class_embed.kernel[...].astype(jnp.float32)  # [D, K+1]
            # No eps, as official (`:444-445`): zero norms do not occur in practice.
            yn = y / jnp.linalg.norm(y, axis=-1, keepdims=True)
            wn = w / jnp.linalg.norm(w, axis=0, keepdims=True)
            class_logits = yn @ wn
        else:
            class_logits = self.class_embed(y.astype(self.dtype)).astype(jnp.float32)
        emb = self.mask_embed(y.astype(self.dtype))
        mask_logits = jnp.einsum("bqc,bhwc->bqhw", emb, mask_features.astype(emb.dtype))
        mask_logits = mask_logits.astype(jnp.float32)
        if attn_size is None:
            return class_logits, mask_logits, None
        small = resize.resize_bilinear(mask_logits, attn_size, axes=(2, 3))
        b, q = small.shape[:2]
        # sigmoid(x) < 0.5 rather than x < 0: the two differ for |x| below ~1e-7 in float32.
        blocked = jax.lax.stop_gradient(jax.nn.sigmoid(small) < 0.5).reshape(b, q, -1)
        return class_logits, mask_logits, blocked

    def __call__(self, features: Sequence[jax.Array], mask_features: jax.Array,
                 rng: jax.Array | None = None, *, return_attn_masks: bool = False) -> dict:
        """Runs the decoder.

        features: the pixel decoder's maps [B, h_l, w_l, C], lowest resolution first;
        mask_features: [B, H/4, W/4, M]; rng: dropout key or None (eval).
        Returns the dict of the module docstring.
        """
        nl = self.num_feature_levels
        if len(features) != nl:
            raise ValueError(f"expected {nl} feature maps, got {len(features)}")
        b = mask_features.shape[0]
        d = self.hidden_dim
        memories, poss, sizes = [], [], []
        for lvl, x in enumerate(features):
            x = x.astype(self.dtype)
            h, w = x.shape[1:3]
            if self.input_proj is not None:
                x = self.input_proj[lvl](x)
            # Level embedding on the memory itself (keys and values), `:376-389`.
            memories.append(x.reshape(b, h * w, d) + self.level_embed[lvl].astype(self.dtype))
            pos = sine_position_embedding(h, w, d).reshape(1, h * w, d)
            poss.append(jnp.asarray(pos, self.dtype))
            sizes.append((h, w))
        output = jnp.broadcast_to(self.query_feat[...].astype(self.dtype), (b,) +
                                  self.query_feat.shape)
        query_pos = jnp.broadcast_to(self.query_embed[...].astype(self.dtype), output.shape)
        n = len(self.layers)
        cls, msk, blocked = self.prediction_heads(output, mask_features, sizes[0])
        class_logits, mask_logits, query_features, attn_masks = [cls], [msk], [], []
        for i, (layer, key) in enumerate(zip(self.layers, tfm.split_rng(rng, n), strict=True)):
            blocked = clear_full_rows(blocked)
            attn_masks.append(blocked)
            output = layer(output, query_pos, memories[i % nl], poss[i % nl],
                           (~blocked)[:, None], key)
            query_features.append(output)
            nxt = sizes[(i + 1) % nl] if i + 1 < n else None
            cls, msk, blocked = self.prediction_heads(output, mask_features, nxt)
            class_logits.append(cls)
            mask_logits.append(msk)
        out = {"class_logits": jnp.stack(class_logits), "mask_logits": jnp.stack(mask_logits),
               "query_features": jnp.stack(query_features) if query_features else
               jnp.zeros((0,) + output.shape, output.dtype)}
        if return_attn_masks:
            out["cross_attn_masks"] = attn_masks
        return out
