"""Mask2Former semantic and panoptic inference: the official post-processing, exactly.

From one image's predictions (class logits `mask_cls` [Q, K+1], last column = no-object; mask
logits `mask_logits` [Q, h, w] at 1/4 of the padded input) to
* `semantic_inference` -> sem_seg float32 [K, H0, W0] (`maskformer_model.py:446-450`);
* `panoptic_inference` -> (panoptic_seg int32 [H0, W0], segments_info) (`:452-513`).

Sizes (all static, python ints): `image_size` (h, w) = the resized image before padding,
`padded_size` (Hp, Wp) = the padded model input, `output_size` (H0, W0) = the requested output
(the original image size). The official order (`maskformer_model.py:365-395`, detectron2
`sem_seg_postprocess`, postprocessing.py:77-100): mask logits bilinear (torch,
align_corners=False, no antialias) to (Hp, Wp), crop [:h, :w], bilinear to (H0, W0), then
sigmoid. Both resizes use torch's float32 interpolation weights (`resize.bilinear_matrix`:
float32 source index, as torch computes it), so the logits match torch to ~1 ulp rather than
~1e-5..1e-3. Computing only the first h rows / w columns of the padded resize (the crop folded
into the resize matrix) evaluates exactly the same sums as resize-then-crop.

Panoptic split: everything of size Q x H0 x W0 (sigmoid masks, per-pixel argmax over the kept
queries, the three pixel counts per query) runs on the device in one jitted function
(`panoptic_maps`); the per-query segment bookkeeping (`panoptic_segments`: Q steps on Q-vectors)
runs on the host in numpy. Why the host: the official loop compares `area / orig_area` as a
Python float64 ratio (float32 on the device can flip it for ratios within ~1e-7 of the
threshold), merges repeated stuff classes through a dict, and returns a variable-length list;
the host loop reproduces all three literally at negligible cost. The final map is one host
gather `lut[ids]` (the segments are disjoint: a pixel belongs only to its argmax query).

`semantic_from_masks` / `panoptic_from_masks` are the traceable cores on already resized sigmoid
masks; `mask_former_engine.py` calls them on size-bucketed masks (with a validity map so that
bucket padding never counts in an area) to share compilations between image sizes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rankseg_jax import resize

_HIGHEST = jax.lax.Precision.HIGHEST


def _hw(size) -> tuple[int, int]:
    return int(size[0]), int(size[1])


def postprocess_masks(mask_logits: jax.Array, image_size, padded_size,
                      output_size) -> jax.Array:
    """Official mask resizing: bilinear to `padded_size`, crop to `image_size`, bilinear to
    `output_size` (torch, align_corners=False, no antialias).

    mask_logits: float [..., Q, h, w]; sizes: (height, width) python ints.
    Returns float32 [..., Q, H0, W0] logits (sigmoid not applied).
    """
    (ih, iw), (ph, pw), (oh, ow) = _hw(image_size), _hw(padded_size), _hw(output_size)
    h, w = mask_logits.shape[-2:]
    mat = resize.bilinear_matrix
    # The crop keeps the first ih/iw outputs of the padded resize: slice the matrix rows.
    x = resize.apply_separable(mask_logits, mat(h, ph)[:ih], mat(w, pw)[:iw])
    return resize.apply_separable(x, mat(ih, oh), mat(iw, ow))


def semantic_from_masks(mask_cls: jax.Array, masks: jax.Array) -> jax.Array:
    """The semantic einsum on resized sigmoid masks (traceable, no resizing).

    mask_cls: float [..., Q, K+1]; masks: float32 [..., Q, H, W] sigmoid probabilities.
    Returns float32 [..., K, H, W] = einsum('qc,qhw->chw', softmax(mask_cls)[:, :K], masks).
    """
    probs = jax.nn.softmax(mask_cls.astype(jnp.float32), axis=-1)[..., :-1]
    return jnp.einsum("...qc,...qhw->...chw", probs, masks, precision=_HIGHEST)


@functools.partial(jax.jit, static_argnames=("image_size", "padded_size", "output_size"))
def _semantic(mask_cls, mask_logits, image_size, padded_size, output_size):
    masks = jax.nn.sigmoid(postprocess_masks(mask_logits, image_size, padded_size, output_size))
    return semantic_from_masks(mask_cls, masks)


def semantic_inference(mask_cls: jax.Array, mask_logits: jax.Array, image_size, padded_size,
                       output_size) -> jax.Array:
    """sem_seg = einsum('qc,qhw->chw', softmax(mask_cls)[:, :K], sigmoid(masks)).

    mask_cls: float [..., Q, K+1]; mask_logits: float [..., Q, h, w]; leading batch dims are
    allowed when all images share the three sizes. Returns float32 [..., K, H0, W0] (not a
    distribution over classes: per-pixel sums vary). Jitted per static size triple.
    """
    return _semantic(mask_cls, mask_logits, _hw(image_size), _hw(padded_size),
                     _hw(output_size))


def panoptic_from_masks(mask_cls: jax.Array, masks: jax.Array, threshold: jax.Array,
                        valid: jax.Array | None = None) -> dict:
    """The device part of the panoptic inference on resized sigmoid masks (traceable).

    mask_cls: float [Q, K+1]; masks: float32 [Q, H, W]; threshold: float32 scalar;
    valid: optional bool [H, W], the pixels of the image (False = bucket padding, not
    counted in any area). Returns the dict of `panoptic_maps`.
    """
    num_queries, k1 = mask_cls.shape
    probs = jax.nn.softmax(mask_cls.astype(jnp.float32), axis=-1)
    scores = probs.max(-1)
    labels = jnp.argmax(probs, axis=-1).astype(jnp.int32)
    # float32 comparison, as torch compares a float32 tensor with a Python scalar.
    keep = (labels != k1 - 1) & (scores > threshold.astype(jnp.float32))
    # Kept probabilities are >= 0, so -1 never wins; argmax returns the first maximum like
    # torch, and the kept queries keep their order, so the winner is the same query.
    prob = jnp.where(keep[:, None, None], scores[:, None, None] * masks, -1.0)
    ids = jnp.argmax(prob, axis=0).astype(jnp.int32)
    fg = jnp.take_along_axis(masks, ids[None], axis=0)[0] >= 0.5
    inside = jnp.ones(ids.shape, bool) if valid is None else valid
    flat, counted = ids.reshape(-1), inside.reshape(-1)
    count = lambda sel: jnp.bincount(jnp.where(sel, flat, num_queries),  # noqa: E731
                                     length=num_queries + 1)[:num_queries].astype(jnp.int32)
    return {
        "ids": ids,
        "fg": fg,
        "scores": scores,
        "labels": labels,
        "keep": keep,
        "area": count(counted),
        "orig_area": jnp.sum((masks >= 0.5) & inside, axis=(1, 2), dtype=jnp.int32),
        "fg_area": count(fg.reshape(-1) & counted),
    }


@functools.partial(jax.jit, static_argnames=("image_size", "padded_size", "output_size"))
def _panoptic_maps(mask_cls, mask_logits, threshold, image_size, padded_size, output_size):
    masks = jax.nn.sigmoid(postprocess_masks(mask_logits, image_size, padded_size, output_size))
    return panoptic_from_masks(mask_cls, masks, threshold)


def panoptic_maps(mask_cls: jax.Array, mask_logits: jax.Array, image_size, padded_size,
                  output_size, object_mask_threshold: float) -> dict:
    """The device part of the official panoptic inference (one image, jitted).

    mask_cls: float [Q, K+1]; mask_logits: float [Q, h, w]. Returns device arrays:
    * 'scores' float32 [Q], 'labels' int32 [Q]: max / argmax of softmax(mask_cls) over K+1;
    * 'keep' bool [Q]: labels != K and scores > object_mask_threshold;
    * 'ids' int32 [H0, W0]: per pixel the kept query with the largest score * sigmoid(mask)
      (query index in 0..Q-1; meaningless when no query is kept);
    * 'fg' bool [H0, W0]: sigmoid(mask[ids]) >= 0.5 at the pixel;
    * 'area' int32 [Q] = #(ids == q), 'orig_area' int32 [Q] = #(sigmoid(mask_q) >= 0.5),
      'fg_area' int32 [Q] = #(ids == q and fg).
    """
    return _panoptic_maps(mask_cls, mask_logits, jnp.float32(object_mask_threshold),
                          _hw(image_size), _hw(padded_size), _hw(output_size))


def panoptic_segments(keep, labels, area, orig_area, fg_area, thing_ids,
                      overlap_threshold: float) -> tuple[np.ndarray, list[dict]]:
    """The official per-query segment loop (`maskformer_model.py:452-513`), on the host.

    Takes [Q] arrays (numpy or device) from `panoptic_maps`, thing_ids (contiguous class ids
    that are things; every other class is stuff) and the overlap threshold. Kept queries are
    visited in query order; a query with any of its three areas 0 is skipped, one with
    area / orig_area < overlap_threshold is rejected; a stuff class seen before reuses the
    first segment's id (no new segment); otherwise the next id (from 1) is assigned.
    Returns (lut int32 [Q]: segment id per query, 0 = none; segments_info: list of
    {'id': int, 'isthing': bool, 'category_id': int} in id order).
    """
    keep, labels = np.asarray(keep), np.asarray(labels)
    area, orig_area, fg_area = (np.asarray(a) for a in (area, orig_area, fg_area))
    things = {int(t) for t in thing_ids}
    lut = np.zeros(keep.shape[0], np.int32)
    segments_info: list[dict] = []
    stuff_memory: dict[int, int] = {}
    current = 0
    for q in np.flatnonzero(keep):
        cls = int(labels[q])
        isthing = cls in things
        a, o, m = int(area[q]), int(orig_area[q]), int(fg_area[q])
        if not (a > 0 and o > 0 and m > 0):
            continue
        if a / o < overlap_threshold:  # Python float64 ratio, as the official `.item()` ints
            continue
        if not isthing:
            if cls in stuff_memory:  # repeated stuff class: merged into its first segment
                lut[q] = stuff_memory[cls]
                continue
            stuff_memory[cls] = current + 1
        current += 1
        lut[q] = current
        segments_info.append({"id": current, "isthing": bool(isthing), "category_id": cls})
    return lut, segments_info


def panoptic_inference(mask_cls: jax.Array, mask_logits: jax.Array, image_size, padded_size,
                       output_size, *, object_mask_threshold: float, overlap_threshold: float,
                       thing_ids) -> tuple[np.ndarray, list[dict]]:
    """Official Mask2Former panoptic inference of one image.

    mask_cls: float [Q, K+1]; mask_logits: float [Q, h, w]; sizes as in `postprocess_masks`;
    thing_ids: contiguous ids of the thing classes. Returns (panoptic_seg int32 [H0, W0] numpy,
    0 = void, segment ids 1..n; segments_info [{'id', 'isthing', 'category_id'}]).
    """
    maps = jax.device_get(panoptic_maps(mask_cls, mask_logits, image_size, padded_size,
                                        output_size, object_mask_threshold))
    return panoptic_result(maps, thing_ids, overlap_threshold)


def panoptic_result(maps: dict, thing_ids, overlap_threshold: float
                    ) -> tuple[np.ndarray, list[dict]]:
    """Host maps of `panoptic_maps` (numpy; 'ids'/'fg' already cropped to the image) ->
    (panoptic_seg int32 [H0, W0], segments_info), via `panoptic_segments`."""
    lut, segments_info = panoptic_segments(maps["keep"], maps["labels"], maps["area"],
                                           maps["orig_area"], maps["fg_area"], thing_ids,
                                           overlap_threshold)
    panoptic_seg = np.where(maps["fg"], lut[maps["ids"]], 0).astype(np.int32)
    return panoptic_seg, segments_info
