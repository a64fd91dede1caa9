"""Pure RankSeg ops: rank classes, gather per image, remap labels to ranks, scatter back.

Every function is per image along the batch axis (no cross-image mixing), so outputs for a
batch equal the outputs for its images one by one. None of them costs O(K * H * W).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Logit given to classes outside the top-kappa in full K-way outputs (official value).
OUTSIDE_TOPK_LOGIT = -100.0


def select_topk(scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Ranks classes by score, descending, and keeps the first k.

    scores: [B, K] float. Returns (values [B, k], indices [B, k] int32). Ties go to the lower
    class index (`jax.lax.top_k`); torch's argsort is unstable on ties, which never occur in
    practice with float scores.
    """
    values, indices = jax.lax.top_k(scores, k)
    return values, indices.astype(jnp.int32)


def oracle_scores(scores: jax.Array, present: jax.Array) -> jax.Array:
    """Scores that rank ground-truth classes first (oracle selection, paper Fig. 3).

    scores: [B, K] predicted logits; present: [B, K] bool/0-1 ground-truth presence. Present
    classes come first, ordered by their predicted score; the rest follow in predicted order.
    The offset is larger than any logit range the model can produce in float32.
    """
    offset = jnp.asarray(1e4, scores.dtype)
    shifted = jnp.clip(scores, -offset / 4, offset / 4)
    return shifted + offset * present.astype(scores.dtype)


def gather_ranked(features: jax.Array, indices: jax.Array) -> jax.Array:
    """Gathers per-image rows: out[b, r] = features[b, indices[b, r]].

    features: [B, K, d]; indices: [B, k] int. Returns [B, k, d]. (The official gather is only
    correct for B = 1; this is its per-image generalisation.)
    """
    return jnp.take_along_axis(features, indices[..., None].astype(jnp.int32), axis=1)


def rank_of_class(indices: jax.Array, num_classes: int) -> jax.Array:
    """Inverse of the ranking: rank[b, c] = r if indices[b, r] == c else -1.

    indices: [B, k] int (distinct per row). Returns [B, num_classes] int32.
    """
    b, k = indices.shape
    ranks = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k))
    inverse = jnp.full((b, num_classes), -1, jnp.int32)
    return inverse.at[jnp.arange(b)[:, None], indices].set(ranks)


def remap_labels(labels: jax.Array, indices: jax.Array, num_classes: int,
                 ignore_index: int) -> jax.Array:
    """Maps class labels to rank positions: r if indices[b, r] == label, else ignore_index.

    labels: [B, H, W] int class ids (values outside [0, num_classes) are ignored, which covers
    255 and -1); indices: [B, k]. Returns [B, H, W] int32 in [0, k) or ignore_index.
    """
    inverse = rank_of_class(indices, num_classes)  # [B, K]
    b = labels.shape[0]
    valid = (labels >= 0) & (labels < num_classes)
    safe = jnp.where(valid, labels, 0).astype(jnp.int32).reshape(b, -1)
    ranks = jnp.take_along_axis(inverse, safe, axis=1).reshape(labels.shape)
    return jnp.where(valid & (ranks >= 0), ranks, ignore_index).astype(jnp.int32)


def scatter_to_classes(ranked: jax.Array, indices: jax.Array, num_classes: int,
                       fill: float = OUTSIDE_TOPK_LOGIT) -> jax.Array:
    """Scatters rank-ordered maps back to class ids; other classes get `fill`.

    ranked: [B, k, ...]; indices: [B, k]. Returns [B, num_classes, ...] (the official eval
    output, -100 outside the top-k). This is the O(K * h * w) path: use only when full
    K-way logits are really wanted.
    """
    b, k = indices.shape
    out = jnp.full((b, num_classes) + ranked.shape[2:], fill, ranked.dtype)
    return out.at[jnp.arange(b)[:, None], indices].set(ranked)


def class_presence(labels: jax.Array, num_classes: int) -> jax.Array:
    """Multi-label target from a label map: present[b, c] = any(labels[b] == c).

    labels: [B, H, W] int; values outside [0, num_classes) (ignore) are not counted, as in the
    official `torch.histc(bins=K, min=0, max=K-1)`. Returns [B, K] float32 in {0, 1}.
    """
    return (class_histogram(labels, num_classes) > 0).astype(jnp.float32)


def batched_bincount(idx: jax.Array, keep: jax.Array, length: int) -> jax.Array:
    """Per-row bincount: out[b, v] = #{n : keep[b, n] and idx[b, n] == v}.

    idx, keep: [B, N] (int, bool); `length` is static. Rejected entries go to a sentinel bin
    that is sliced off (`jnp.bincount` alone would clip a -1 label into bin 0), and rows are
    offset so one flat bincount serves the batch: O(B*N + B*length), no one-hot.
    Returns int32 [B, length].
    """
    b = idx.shape[0]
    width = length + 1
    local = jnp.where(keep, idx, length).astype(jnp.int32)
    flat = local + (jnp.arange(b, dtype=jnp.int32) * width)[:, None]
    counts = jnp.bincount(flat.reshape(-1), length=b * width)
    return counts.reshape(b, width)[:, :length].astype(jnp.int32)


def class_histogram(labels: jax.Array, num_classes: int,
                    valid: jax.Array | None = None) -> jax.Array:
    """Per-image pixel count of each class, [B, K] int32.

    labels: [B, H, W] int; values outside [0, num_classes) (ignore) are not counted.
    valid: optional [B, H, W] bool; False pixels are not counted either.
    """
    b = labels.shape[0]
    flat = labels.reshape(b, -1).astype(jnp.int32)
    keep = (flat >= 0) & (flat < num_classes)
    if valid is not None:
        keep = keep & valid.reshape(b, -1)
    return batched_bincount(flat, keep, num_classes)


def dynamic_rank_mask(ranked_scores: jax.Array, threshold: float) -> jax.Array:
    """Which of the kappa_max ranks are kept by a score threshold (dynamic kappa).

    ranked_scores: [B, k] logits in rank order. A rank is kept when sigmoid(score) >=
    threshold; rank 0 is always kept so every image keeps one class. Returns [B, k] bool.
    Shapes stay static: masked ranks are filled, not removed.
    """
    keep = jax.nn.sigmoid(ranked_scores) >= threshold
    return keep.at[:, 0].set(True)


def select(image_logits: jax.Array, k: int, *, gt_present: jax.Array | None = None,
           dynamic_threshold: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """RankSeg's sort & select, as every host calls it.

    image_logits: [B, K] multi-label logits. k: kappa. gt_present: [B, K] 0/1 (oracle
    selection: ground-truth classes ranked first) or None. dynamic_threshold > 0 keeps only
    the ranks whose sigmoid score reaches it (at least rank 0); shapes stay static.
    Returns (topk_index [B, k] int32 in descending score order, rank_valid [B, k] bool).
    """
    scores = image_logits if gt_present is None else oracle_scores(image_logits, gt_present)
    _, topk = select_topk(scores, k)
    if dynamic_threshold > 0.0:
        ranked = gather_ranked(image_logits[..., None], topk)[..., 0]
        return topk, dynamic_rank_mask(ranked, dynamic_threshold)
    return topk, jnp.ones(topk.shape, bool)
