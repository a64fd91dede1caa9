"""Pure RankSeg ops: rank classes, gather per image, remap labels to ranks, scatter back.

Pixel hosts (Segmenter) gather class *rows* (class tokens) with `gather_ranked` and scatter
maps back with `scatter_to_classes`; region hosts (Mask2Former) gather the class *columns*
of their query logits plus the no-object column with `gather_class_columns` and scatter them
back with `scatter_class_columns` (the same two functions along the last axis).

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


def gather_ranked(features: jax.Array, indices: jax.Array, axis: int = 1) -> jax.Array:
    """Gathers per image along `axis`: out[b, .., r, ..] = features[b, .., indices[b, r], ..].

    features: [B, ..., K at `axis`, ...] (batch first); indices: [B, k] int. Returns the same
    shape with k at `axis`. axis=1 gathers rows (class tokens [B, K, d] -> [B, k, d]),
    axis=-1 gathers columns (query logits [B, Q, K] -> [B, Q, k]). (The official Segmenter
    gather is only correct for B = 1; this is its per-image generalisation.)
    """
    axis = axis % features.ndim
    if axis == 0:
        raise ValueError("axis 0 is the batch axis")
    shape = [1] * features.ndim
    shape[0], shape[axis] = indices.shape
    return jnp.take_along_axis(features, indices.astype(jnp.int32).reshape(shape), axis=axis)


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
                       fill: float = OUTSIDE_TOPK_LOGIT, axis: int = 1) -> jax.Array:
    """Scatters rank-ordered entries back to class ids along `axis`; other classes get `fill`.

    ranked: [B, ..., k at `axis`, ...]; indices: [B, k] (distinct per row). Returns the same
    shape with num_classes at `axis` (the official eval output, -100 outside the top-k).
    The inverse of `gather_ranked` on the selected classes. With maps [B, k, h, w] (axis 1)
    this is the O(K * h * w) path: use only when full K-way logits are really wanted.
    """
    axis = axis % ranked.ndim
    if axis == 0:
        raise ValueError("axis 0 is the batch axis")
    moved = jnp.moveaxis(ranked, axis, 1)  # [B, k, ...]
    b = indices.shape[0]
    out = jnp.full((b, num_classes) + moved.shape[2:], fill, ranked.dtype)
    out = out.at[jnp.arange(b)[:, None], indices].set(moved)
    return jnp.moveaxis(out, 1, axis)


def with_no_object(indices: jax.Array, num_classes: int) -> jax.Array:
    """Appends the no-object column K to a ranking: [B, k] -> [B, k + 1] int32.

    Region classifiers (Mask2Former) have K + 1 class columns, the last = no object; it is
    always kept, in the last rank slot (`mask2former/maskformer_model.py:294-302`).
    """
    b = indices.shape[0]
    return jnp.concatenate([indices.astype(jnp.int32),
                            jnp.full((b, 1), num_classes, jnp.int32)], axis=1)


def gather_class_columns(logits: jax.Array, indices: jax.Array) -> jax.Array:
    """Region class logits in rank order: [B, ..., K+1] -> [B, ..., k+1].

    out[b, .., r] = logits[b, .., indices[b, r]] for r < k and the no-object column K in slot
    k (`mask2former/maskformer_model.py:310-327`: the same ranking for every query and every
    prediction of an image). indices: [B, k] top-k classes (`select`).
    """
    num_classes = logits.shape[-1] - 1
    return gather_ranked(logits, with_no_object(indices, num_classes), axis=-1)


def scatter_class_columns(ranked: jax.Array, indices: jax.Array, num_classes: int,
                          fill: float = OUTSIDE_TOPK_LOGIT) -> jax.Array:
    """Rank-order region logits back to class order: [B, ..., k+1] -> [B, ..., K+1].

    The inverse of `gather_class_columns`: slot r goes to class indices[b, r], the last slot to
    the no-object column K; classes outside the top-k get `fill` (-100, i.e. probability ~0
    after the softmax; `mask2former/maskformer_model.py:350-359`).
    """
    return scatter_to_classes(ranked, with_no_object(indices, num_classes), num_classes + 1,
                              fill, axis=-1)


def mask_absent_classes(logits: jax.Array, present: jax.Array,
                        fill: float = OUTSIDE_TOPK_LOGIT) -> jax.Array:
    """The official `-gt` oracle: class columns absent from the image's ground truth -> fill.

    logits: [B, ..., K+1] region class logits (last column = no object, never masked);
    present: [B, K] bool / 0-1 ground-truth presence. Returns the same shape
    (`mask2former/maskformer_model.py:304-307`).
    """
    b, k = present.shape
    keep = jnp.concatenate([present.astype(bool), jnp.ones((b, 1), bool)], axis=1)
    keep = keep.reshape((b,) + (1,) * (logits.ndim - 2) + (k + 1,))
    return jnp.where(keep, logits, jnp.asarray(fill, logits.dtype))


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
