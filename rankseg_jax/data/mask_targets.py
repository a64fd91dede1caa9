"""Mask-classification targets (classes + binary masks) from label maps, as the official mappers.

Mask2Former trains on a set of (class, mask) targets per image, built by its dataset mappers
from the already augmented and padded label maps:
  * semantic (`mask_former_semantic_dataset_mapper.py:167-182`): one target per class present in
    the semantic map, classes ascending (`np.unique`), mask = (label == class); the ignore value
    (255) is no class;
  * panoptic (`mask_former_panoptic_dataset_mapper.py:141-163`): one target per **non-crowd**
    entry of `segments_info`, in JSON order, class = its (contiguous) `category_id`, mask =
    (panoptic id map == segment id). Crowd segments give no target (their pixels are then
    background for every mask). A segment that the crop (or the pasting of things over stuff in
    the ADE20K preparation) left without pixels still gives a target with an all-zero mask, and
    its class still enters the RankSeg multi-hot: the official behaviour, kept by default
    (`keep_empty=True`); `keep_empty=False` drops such targets instead.
  * RankSeg's image-level target (`maskformer_model.py:267-280,347`): the multi-hot of
    `unique(gt_classes)`, i.e. of the target classes (repeated thing classes count once).

Static shapes for jit/vmap: targets are padded to T slots with a validity mask; padded slots
have class -1 and an all-False mask. Everything here is jittable; `segments_table` (host side)
turns `segments_info` into the padded arrays and refuses more than T segments rather than
dropping any. `panoptic_targets` and `semantic_targets` also run on the host: given NumPy
arrays they compute in NumPy and return NumPy arrays (the training mappers,
`data/mask_former_mappers.py`, call them per example in the input pipeline).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rankseg_jax.rankseg.ranking import batched_bincount, class_histogram

PAD_CLASS = -1


def _on_host(*arrays) -> bool:
    """True when every input is a NumPy array (compute in NumPy, off the accelerator)."""
    return all(isinstance(a, np.ndarray) for a in arrays)


def segments_table(segments_info: Sequence[dict], max_segments: int) -> dict[str, np.ndarray]:
    """Host side: `segments_info` (contiguous `category_id`) -> padded arrays for the targets.

    Returns {'ids': int32 [S], 'classes': int32 [S], 'iscrowd': bool [S], 'valid': bool [S]}
    with S = max_segments, JSON order, padding ids 0 / classes -1. Raises ValueError when the
    image has more than `max_segments` segments (nothing is dropped silently).
    """
    n = len(segments_info)
    if n > max_segments:
        raise ValueError(f"{n} segments but max_segments={max_segments}: raise the limit")
    out = {"ids": np.zeros(max_segments, np.int32),
           "classes": np.full(max_segments, PAD_CLASS, np.int32),
           "iscrowd": np.zeros(max_segments, bool), "valid": np.zeros(max_segments, bool)}
    for i, s in enumerate(segments_info):
        out["ids"][i], out["classes"][i] = int(s["id"]), int(s["category_id"])
        out["iscrowd"][i], out["valid"][i] = bool(s.get("iscrowd", 0)), True
    return out


def panoptic_targets(panoptic: jax.Array, ids: jax.Array, classes: jax.Array,
                     iscrowd: jax.Array, valid: jax.Array, keep_empty: bool = True
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Official panoptic targets (module doc) from an id map and a padded segment table.

    Args:
      panoptic: int [H, W] segment ids (0 = VOID, padding included).
      ids, classes, iscrowd, valid: [S] from `segments_table`.
      keep_empty: keep targets whose mask is empty (official True).
    Returns:
      classes int32 [S] (kept segments first, in JSON order; -1 after), masks bool [S, H, W],
      valid bool [S].
    """
    xp = np if _on_host(panoptic, ids, classes, iscrowd, valid) else jnp
    masks = panoptic[None, :, :] == ids[:, None, None]
    keep = valid & ~iscrowd
    if not keep_empty:
        keep &= masks.any(axis=(1, 2))
    order = xp.argsort(~keep, stable=True)  # kept first, JSON order preserved
    keep = keep[order]
    return (xp.where(keep, classes[order], PAD_CLASS).astype(xp.int32),
            masks[order] & keep[:, None, None], keep)


def semantic_targets(label: jax.Array, num_classes: int, max_targets: int
                     ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Official semantic targets (module doc): one per class present, ascending.

    Args:
      label: int [H, W] training ids; values outside [0, K) (ignore) are no class.
      num_classes: K. max_targets: T (static).
    Returns:
      classes int32 [T] (-1 padding), masks bool [T, H, W], valid bool [T], and the number of
      classes present (int32 scalar): targets beyond T are cut, so a caller that cannot take
      T = K must check it.
    """
    if _on_host(label):  # the official `np.unique` of the label, without the ignore value
        flat = label[(label >= 0) & (label < num_classes)]
        present = np.bincount(flat.ravel(), minlength=num_classes) > 0
        found = np.flatnonzero(present)[:max_targets]
        cls = np.full((max_targets,), PAD_CLASS, np.int32)
        cls[:len(found)] = found
        xp = np
    else:
        present = class_histogram(label[None], num_classes)[0] > 0
        cls = jnp.nonzero(present, size=max_targets, fill_value=PAD_CLASS)[0].astype(jnp.int32)
        xp = jnp
    ok = cls >= 0
    masks = (label[None, :, :] == cls[:, None, None]) & ok[:, None, None]
    return cls, masks, ok, xp.asarray(present.sum(), xp.int32)


def target_multi_hot(classes: jax.Array, valid: jax.Array, num_classes: int) -> jax.Array:
    """RankSeg's GT multi-hot of a target set: float32 [K], 1 where a valid target has class k.

    classes, valid: [T] (or [B, T] -> [B, K]).
    """
    squeeze = classes.ndim == 1
    c, v = (classes[None], valid[None]) if squeeze else (classes, valid)
    hot = (batched_bincount(jnp.where(v, c, 0), v, num_classes) > 0).astype(jnp.float32)
    return hot[0] if squeeze else hot
