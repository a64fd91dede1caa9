"""Segmenter mask-transformer head and the RankSeg head (with its multi-label encoders).

Inputs are the backbone's patch grid [B, h, w, C] (and OCE class tokens [B, N, C] when the
class embeddings come from the backbone). Outputs are dicts with named fields:
    image_logits [B, K]       multi-label logits (RankSeg only)
    topk_index   [B, kappa]   selected classes in descending score order (RankSeg only)
    mask_logits  [B, kappa, h, w] (RankSeg, rank order) or [B, K, h, w] (Segmenter)
    full_logits  [B, K, h, w] (RankSeg eval, when asked): -100 outside the top-kappa
    rank_valid   [B, kappa]   bool, ranks kept by dynamic kappa (all True when static)
    class_features [B, K, d]  decoder_norm2 features the top-kappa rows are gathered from

Parameter paths (public contract, see docs/parameters.md): `cls_emb [1,K,d]`,
`proj_dec.{kernel,bias}`, `blocks.{j}.<Block>`, `decoder_norm`, `decoder_norm2`,
`proj_patch [d,d]`, `proj_classes [d,d]` (right-multiplied, as official), `mask_norm.{scale,
bias}`, `ml_fc.{kernel [K,d], bias [K]}` (GroupWiseLinear), `ml_decoder.*` (tran_dec),
`ml_gap.*` (gap_linear).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rankseg_jax import ranking, resize
from rankseg_jax.models import transformer as tfm


class ClassAxisNorm(nnx.Module):
    """LayerNorm over the class (or rank) axis with per-slot affine (eps 1e-5, biased var).

    With `shared=True` all slots share one scale and one bias (the paper's "w/o RA" ablation:
    no rank-adaptive temperature). Params: scale, bias of shape [n] or [1].
    """

    def __init__(self, n: int, *, shared: bool = False, eps: float = 1e-5):
        self.eps = eps
        size = 1 if shared else n
        self.scale = nnx.Param(jnp.ones((size,)))
        self.bias = nnx.Param(jnp.zeros((size,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., n] float -> normalised over the last axis, then scale * x + bias."""
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


def _tokens(grid: jax.Array) -> jax.Array:
    b, h, w, c = grid.shape
    return grid.reshape(b, h * w, c)


def cosine_masks(patches: jax.Array, classes: jax.Array, proj_patch: jax.Array,
                 proj_classes: jax.Array) -> jax.Array:
    """Cosine similarity of projected patch and class tokens (no epsilon, as official).

    patches: [B, P, d]; classes: [B, N, d]; proj_*: [d, d] right-multiplied.
    Returns [B, P, N] float32.
    """
    p = (patches @ proj_patch.astype(patches.dtype)).astype(jnp.float32)
    c = (classes @ proj_classes.astype(classes.dtype)).astype(jnp.float32)
    p = p / jnp.linalg.norm(p, axis=-1, keepdims=True)
    c = c / jnp.linalg.norm(c, axis=-1, keepdims=True)
    return jnp.einsum("bpd,bnd->bpn", p, c)


def _to_maps(masks: jax.Array, h: int, w: int) -> jax.Array:
    """[B, h*w, N] -> [B, N, h, w]."""
    b, _, n = masks.shape
    return masks.reshape(b, h, w, n).transpose(0, 3, 1, 2)


class _MaskDecoderBase(nnx.Module):
    """Parameters and mask computation shared by the Segmenter and RankSeg heads."""

    def _init_common(self, *, num_classes, d_encoder, d_model, num_heads, d_ff, n_layers,
                     dropout, drop_path_rate, ln_eps, cls_emb_from_backbone, dtype, remat,
                     rngs):
        self.num_classes = num_classes
        self.dtype = dtype
        self.remat = remat
        init = tfm.trunc_normal_init()
        if not cls_emb_from_backbone:
            self.cls_emb = nnx.Param(0.02 * jax.random.truncated_normal(
                rngs.params(), -100.0, 100.0, (1, num_classes, d_model)))
        self.cls_emb_from_backbone = cls_emb_from_backbone
        self.proj_dec = tfm.dense(d_encoder, d_model, init, dtype, rngs)
        rates = np.linspace(0.0, drop_path_rate, n_layers)
        self.blocks = nnx.List([
            tfm.Block(d_model, num_heads, d_ff, eps=ln_eps, drop=dropout, attn_drop=dropout,
                      drop_path=float(rates[j]), init=init, dtype=dtype, rngs=rngs)
            for j in range(n_layers)])
        self.decoder_norm = tfm.layer_norm(d_model, ln_eps, rngs)
        scale = d_model ** -0.5
        self.proj_patch = nnx.Param(scale * jax.random.normal(rngs.params(), (d_model, d_model)))
        self.proj_classes = nnx.Param(
            scale * jax.random.normal(rngs.params(), (d_model, d_model)))

    def _class_tokens(self, batch: int, class_tokens: jax.Array | None) -> jax.Array:
        if self.cls_emb_from_backbone:
            if class_tokens is None:
                raise ValueError("this head takes class tokens from the backbone (OCE), "
                                 "but the backbone returned none")
            return class_tokens.astype(self.dtype)
        emb = self.cls_emb[...].astype(self.dtype)
        return jnp.broadcast_to(emb, (batch,) + emb.shape[1:])

    def _decode(self, pixel_tokens, class_tokens, blocks, rng):
        """Runs [pixels; classes] through blocks + decoder_norm; returns cosine masks."""
        n_pix = pixel_tokens.shape[1]
        x = jnp.concatenate([pixel_tokens, class_tokens], axis=1)
        x = tfm.run_blocks(blocks, x, rng, self.remat)
        x = self.decoder_norm(x).astype(x.dtype)
        return cosine_masks(x[:, :n_pix], x[:, n_pix:], self.proj_patch[...],
                            self.proj_classes[...])


class SegmenterHead(_MaskDecoderBase):
    """Segmenter's mask transformer (official_spec.md §3.2): K-way masks over all classes."""

    def __init__(self, *, num_classes: int, d_encoder: int, d_model: int, num_heads: int,
                 d_ff: int, n_layers: int = 2, dropout: float = 0.0,
                 drop_path_rate: float = 0.0, ln_eps: float = 1e-5,
                 cls_emb_from_backbone: bool = False, dtype=jnp.float32, remat: bool = False,
                 rngs: nnx.Rngs):
        self._init_common(num_classes=num_classes, d_encoder=d_encoder, d_model=d_model,
                          num_heads=num_heads, d_ff=d_ff, n_layers=n_layers, dropout=dropout,
                          drop_path_rate=drop_path_rate, ln_eps=ln_eps,
                          cls_emb_from_backbone=cls_emb_from_backbone, dtype=dtype,
                          remat=remat, rngs=rngs)
        self.mask_norm = ClassAxisNorm(num_classes, eps=ln_eps)

    def __call__(self, grid: jax.Array, class_tokens: jax.Array | None = None, *,
                 train: bool = False, rng: jax.Array | None = None,
                 gt_present: jax.Array | None = None, full_logits: bool = True) -> dict:
        """grid: [B, h, w, C] -> {'mask_logits': [B, K, h, w], 'full_logits': same}.

        `train`, `gt_present` and `full_logits` are accepted for a uniform head interface.
        """
        del train, gt_present
        b, h, w, _ = grid.shape
        pixels = self.proj_dec(_tokens(grid).astype(self.dtype))
        masks = self._decode(pixels, self._class_tokens(b, class_tokens), self.blocks, rng)
        maps = _to_maps(self.mask_norm(masks), h, w)
        out = {"mask_logits": maps}
        if full_logits:
            out["full_logits"] = maps
        return out


def sine_position_grid(size: int, dim: int) -> np.ndarray:
    """DETR sine position embedding of a size x size grid, [size*size, dim] float32.

    Official RankSegDecoderHead buffer (spec §3.5): y/x = index+1 normalised by
    (size + 1e-6) * 2pi; dim_t[k] = 10000^(2*floor(k/2)/(dim/2)); even channels sin, odd cos;
    the first dim/2 channels come from y, the rest from x. Row-major over (i, j).
    """
    half = dim // 2
    idx = np.arange(1, size + 1, dtype=np.float64) / (size + 1e-6) * 2 * np.pi
    dim_t = 10000.0 ** (2 * (np.arange(half) // 2) / half)
    p = idx[:, None] / dim_t  # [size, half]
    enc = np.where(np.arange(half) % 2 == 0, np.sin(p), np.cos(p))  # [size, half]
    y = np.broadcast_to(enc[:, None, :], (size, size, half))
    x = np.broadcast_to(enc[None, :, :], (size, size, half))
    return np.concatenate([y, x], axis=-1).reshape(size * size, dim).astype(np.float32)


class _CrossAttention(nnx.Module):
    """torch nn.MultiheadAttention used as cross-attention (q from queries, k/v from memory)."""

    def __init__(self, dim: int, num_heads: int, dropout: float, init, dtype, rngs):
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = tfm.dense(dim, dim, init, dtype, rngs)
        self.key = tfm.dense(dim, dim, init, dtype, rngs)
        self.value = tfm.dense(dim, dim, init, dtype, rngs)
        self.out = tfm.dense(dim, dim, init, dtype, rngs)

    def __call__(self, q_in, k_in, v_in, rng):
        b, nq, d = q_in.shape
        nk = k_in.shape[1]
        h = self.num_heads
        dh = d // h
        q = self.query(q_in).reshape(b, nq, h, dh)
        k = self.key(k_in).reshape(b, nk, h, dh)
        v = self.value(v_in).reshape(b, nk, h, dh)
        probs = jax.nn.softmax(
            (jnp.einsum("bqhd,bkhd->bhqk", q, k) * dh ** -0.5).astype(jnp.float32), axis=-1)
        probs = tfm.dropout(probs.astype(v.dtype), self.dropout, rng)
        return self.out(jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, nq, d))


class _DecoderLayer(nnx.Module):
    """Post-norm DETR decoder layer with its self-attention removed (official ablation)."""

    def __init__(self, dim, num_heads, d_ff, dropout, init, dtype, rngs):
        self.dropout = dropout
        self.cross_attn = _CrossAttention(dim, num_heads, dropout, init, dtype, rngs)
        self.norm2 = tfm.layer_norm(dim, 1e-5, rngs)
        self.linear1 = tfm.dense(dim, d_ff, init, dtype, rngs)
        self.linear2 = tfm.dense(d_ff, dim, init, dtype, rngs)
        self.norm3 = tfm.layer_norm(dim, 1e-5, rngs)

    def __call__(self, tgt, memory, pos, query_pos, rng):
        r = tfm.split_rng(rng, 4)
        att = self.cross_attn(tgt + query_pos, memory + pos, memory, r[0])
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
        memory = self.input_proj(_tokens(pooled))
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


class RankSegHead(_MaskDecoderBase):
    """RankSeg head (official_spec.md §3.3-3.6): rank classes, keep top-kappa, segment over them.

    ml_encoder:
      tran_enc   (default) blocks[0] over [pooled patches; class tokens] -> decoder_norm2 ->
                 GroupWiseLinear; the gathered class tokens are the decoder_norm2 outputs.
      tran_dec   DETR-style decoder (MultiLabelDecoder); raw cls_emb rows are gathered.
      gap_linear global pooling + 2 linears (MultiLabelGAP); raw cls_emb rows are gathered.
    temperature: rank_adaptive (LayerNorm over the kappa rank slots with per-rank affine) or
      shared (one scale/bias for all ranks).
    """

    def __init__(self, *, num_classes: int, d_encoder: int, d_model: int, num_heads: int,
                 d_ff: int, n_layers: int = 3, topk: int = 50, downsample: int = 8,
                 ml_encoder: str = "tran_enc", temperature: str = "rank_adaptive",
                 dropout: float = 0.0, drop_path_rate: float = 0.0, ln_eps: float = 1e-5,
                 cls_emb_from_backbone: bool = False, dec_num_heads: int = 8,
                 dec_d_ff: int = 2048, dec_layers: int = 2,
                 dynamic_k_threshold: float = 0.0, dtype=jnp.float32, remat: bool = False,
                 rngs: nnx.Rngs):
        if ml_encoder != "tran_enc" and cls_emb_from_backbone:
            raise ValueError(f"ml_encoder={ml_encoder!r} gathers the head's own cls_emb; "
                             "it cannot be combined with backbone class tokens (OCE)")
        self._init_common(num_classes=num_classes, d_encoder=d_encoder, d_model=d_model,
                          num_heads=num_heads, d_ff=d_ff, n_layers=n_layers, dropout=dropout,
                          drop_path_rate=drop_path_rate, ln_eps=ln_eps,
                          cls_emb_from_backbone=cls_emb_from_backbone, dtype=dtype,
                          remat=remat, rngs=rngs)
        self.topk = topk
        self.downsample = downsample
        self.ml_encoder = ml_encoder
        self.dynamic_k_threshold = dynamic_k_threshold
        self.mask_norm = ClassAxisNorm(topk, shared=temperature == "shared", eps=ln_eps)
        if ml_encoder == "tran_enc":
            self.decoder_norm2 = tfm.layer_norm(d_model, ln_eps, rngs)
            self.ml_fc = GroupWiseLinear(num_classes, d_model, rngs=rngs)
        elif ml_encoder == "tran_dec":
            self.ml_decoder = MultiLabelDecoder(
                num_classes=num_classes, d_encoder=d_encoder, d_model=d_model,
                num_heads=dec_num_heads, d_ff=dec_d_ff, num_layers=dec_layers,
                dropout=dropout, pool_size=downsample, dtype=dtype, rngs=rngs)
        elif ml_encoder == "gap_linear":
            self.ml_gap = MultiLabelGAP(num_classes=num_classes, d_encoder=d_encoder,
                                        dtype=dtype, rngs=rngs)
        else:
            raise ValueError(f"unknown ml_encoder {ml_encoder!r}")

    def __call__(self, grid: jax.Array, class_tokens: jax.Array | None = None, *,
                 train: bool = False, rng: jax.Array | None = None,
                 gt_present: jax.Array | None = None, full_logits: bool = True) -> dict:
        """Runs the head on the patch grid.

        grid: [B, h, w, C]; class_tokens: [B, K, C] (OCE) or None; rng: dropout key or None;
        gt_present: [B, K] 0/1 ground-truth presence, given only for oracle selection;
        full_logits: also return the K-way map with -100 outside the top-kappa (eval).
        Returns the dict described in the module docstring.
        """
        b, h, w, _ = grid.shape
        s = self.downsample
        r_ml, r_seg = tfm.split_rng(rng, 2)
        pixels = self.proj_dec(_tokens(grid).astype(self.dtype))  # skip the ML encoder
        queries = self._class_tokens(b, class_tokens)
        pooled = resize.adaptive_avg_pool(grid, (s, s), axes=(1, 2)).astype(self.dtype)
        if self.ml_encoder == "tran_enc":
            ml_in = jnp.concatenate([self.proj_dec(_tokens(pooled)), queries], axis=1)
            ml_out = tfm.run_blocks(self.blocks[:1], ml_in, r_ml, self.remat)
            class_feats = self.decoder_norm2(ml_out[:, -self.num_classes:]).astype(self.dtype)
            image_logits = self.ml_fc(class_feats)
            seg_blocks = self.blocks[1:]
        else:
            if self.ml_encoder == "tran_dec":
                image_logits = self.ml_decoder(pooled, queries, r_ml)
            else:
                image_logits = self.ml_gap(pooled)
            class_feats = queries
            seg_blocks = self.blocks
        scores = image_logits
        if gt_present is not None:
            scores = ranking.oracle_scores(image_logits, gt_present)
        ranked_scores, topk = ranking.select_topk(scores, self.topk)
        selected = ranking.gather_ranked(class_feats, topk)
        masks = self.mask_norm(self._decode(pixels, selected, seg_blocks, r_seg))  # [B,hw,k]
        if self.dynamic_k_threshold > 0.0 and not train:
            rank_valid = ranking.dynamic_rank_mask(
                ranking.gather_ranked(image_logits[..., None], topk)[..., 0],
                self.dynamic_k_threshold)
            masks = jnp.where(rank_valid[:, None, :], masks, ranking.OUTSIDE_TOPK_LOGIT)
        else:
            rank_valid = jnp.ones(topk.shape, bool)
        del ranked_scores
        maps = _to_maps(masks, h, w)
        out = {"image_logits": image_logits, "topk_index": topk, "mask_logits": maps,
               "rank_valid": rank_valid, "class_features": class_feats}
        if full_logits:
            out["full_logits"] = ranking.scatter_to_classes(maps, topk, self.num_classes)
        return out
