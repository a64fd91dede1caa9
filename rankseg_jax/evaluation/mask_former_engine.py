"""Mask2Former(+RankSeg) inference on single images: `MaskFormerInferencer`.

The official test path, batch 1 (`train_net.py:262-265`, `maskformer_model.py:350-513`):
uint8 RGB image -> `prepare_test_image` (ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST) with
Pillow, normalise, zero-pad to `size_divisibility`) -> the model -> final prediction (class
logits in class order, mask logits at 1/4 of the padded size) -> mask resize chain -> semantic
(`sem_seg` argmax) and/or panoptic inference (`mask_former.py`), at the original image size.

Sizes from the config: MIN_SIZE_TEST = min(data.test_scale), MAX_SIZE_TEST =
max(data.test_scale) (`data.test_scale` is (long, short) = (2560, 640) for ADE20K; mmcv's
keep-ratio rescale to it and detectron2's ResizeShortestEdge(640, 2560) pick the same scale).

Compilations. The forward is compiled once per padded input size (Hp, Wp): every image is
padded on its own to a multiple of 32 as officially, never further, because no module of the
model masks its padding (Swin windows, MSDeformAttn and the decoder all see the zeros), so more
padding would change the outputs. The post-processing is compiled per (Hp, Wp, bucketed
original size): its resize matrices are arguments, not constants, laid out as
* rows: bilinear (h -> Hp) with the rows >= the resized height `ih` zeroed (the official crop
  `[:ih]`), then bilinear (ih -> H0) placed in the first H0 rows / ih columns of a
  [bucket(H0), Hp] zero matrix (columns likewise);
so one compilation serves every image of the same padded size whose original size falls in the
same `test.size_bucket` bucket. The zero rows/columns add exact zeros to the same sums; the
result equals `mask_former.postprocess_masks` up to float32 summation order (tested), the
bucket padding is cropped off, and the panoptic areas count only pixels of the image.

Test-time augmentation (`test.aug_min_sizes`, the official `SemanticSegmentorWithTTA`,
`mask2former/test_time_augmentation.py:72-103`, with detectron2's `DatasetMapperTTA`,
`detectron2/modeling/test_time_augmentation.py:58-98`): the uint8 test image at its usual
size (short side MIN_SIZE_TEST) is resized again, with Pillow as above, to each short side of
`test.aug_min_sizes` (long side at most `test.aug_max_size`), then also flipped horizontally
when `test.flip`, in the order (size 1), (size 1, flipped), (size 2), ...; each view goes
through the usual model and mask resize chain to `sem_seg` [K, H0, W0] at the original size,
flipped views are flipped back, and the maps are summed in view order in float32 and divided
by the number of views before the argmax. Semantic only, like the official wrapper (it
returns `sem_seg` and nothing else), so no panoptic result and no ranking metrics.

Ground truth enters the forward only for the `-gt` oracle (`model.mask2former.gt_oracle`,
`gt_present` [K] required there); plain and RankSeg predictions never see it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rankseg_jax import resize
from rankseg_jax.evaluation import mask_former
from rankseg_jax.evaluation.mask_former_inputs import (
    PreparedImage,
    prepare_resized,
    prepare_test_image,
    resize_shortest_edge,
)

_HIGHEST = jax.lax.Precision.HIGHEST


def bucket(n: int, size: int) -> int:
    """n rounded up to a multiple of `size` (>= 1)."""
    return -(-int(n) // max(int(size), 1)) * max(int(size), 1)


@functools.lru_cache(maxsize=512)
def resize_chain(n_mask: int, n_padded: int, n_image: int, n_out: int,
                 n_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """The two matrices of one axis of the official mask resize, bucket-padded (module doc).

    n_mask: mask logits size (padded / 4); n_padded: padded input size; n_image: the resized
    image inside it; n_out: the original size; n_bucket: n_out rounded up to the bucket.
    Returns (first [n_padded, n_mask], second [n_bucket, n_padded]) float32, read-only.
    """
    first = resize.bilinear_matrix(n_mask, n_padded).copy()
    first[n_image:] = 0.0
    second = np.zeros((n_bucket, n_padded), np.float32)
    second[:n_out, :n_image] = resize.bilinear_matrix(n_image, n_out)
    for m in (first, second):
        m.flags.writeable = False
    return first, second


def _resized_masks(mask_logits, a_h, a_w, b_h, b_w) -> jax.Array:
    """mask logits [Q, h, w] -> sigmoid masks float32 [Q, Hb, Wb] through the official resize
    chain (`resize_chain` matrices; the order of `resize.apply_separable`: rows first, then
    columns, per stage)."""
    x = jnp.einsum("Hh,qhw->qHw", a_h, mask_logits.astype(jnp.float32), precision=_HIGHEST)
    x = jnp.einsum("Ww,qhw->qhW", a_w, x, precision=_HIGHEST)
    x = jnp.einsum("Hh,qhw->qHw", b_h, x, precision=_HIGHEST)
    x = jnp.einsum("Ww,qhw->qhW", b_w, x, precision=_HIGHEST)
    return jax.nn.sigmoid(x)


def _semantic_maps(mask_cls, mask_logits, a_h, a_w, b_h, b_w) -> jax.Array:
    """`sem_seg` float32 [K, Hb, Wb] (bucket-sized) of one image: the resize chain, sigmoid,
    then the semantic einsum."""
    return mask_former.semantic_from_masks(
        mask_cls, _resized_masks(mask_logits, a_h, a_w, b_h, b_w))


def _postprocess(mask_cls, mask_logits, a_h, a_w, b_h, b_w, out_hw, threshold, *,
                 semantic: bool, panoptic: bool) -> dict:
    """Resize chain + sigmoid + semantic argmax and/or panoptic maps on bucket-sized maps.

    mask_cls [Q, K+1]; mask_logits [Q, h, w]; a_*/b_*: `resize_chain` matrices; out_hw int32
    [2] = (H0, W0) (traced: pixels outside are bucket padding). Returns {'sem' int32 [Hb, Wb]
    (semantic)} and the `panoptic_from_masks` maps (panoptic).
    """
    masks = _resized_masks(mask_logits, a_h, a_w, b_h, b_w)
    out = {}
    if semantic:
        # torch argmax: the first maximal class.
        out["sem"] = jnp.argmax(mask_former.semantic_from_masks(mask_cls, masks),
                                axis=0).astype(jnp.int32)
    if panoptic:
        hb, wb = masks.shape[1:]
        valid = ((jnp.arange(hb) < out_hw[0])[:, None] & (jnp.arange(wb) < out_hw[1])[None])
        out.update(mask_former.panoptic_from_masks(mask_cls, masks, threshold, valid))
    return out


@dataclasses.dataclass
class MaskFormerPrediction:
    """One image's result at its original size (H0, W0).

    sem: int32 [H0, W0] argmax of `sem_seg` (None unless semantic_on); panoptic: int32 [H0, W0]
    segment ids, 0 = void, and segments_info [{'id', 'isthing', 'category_id'}] (None unless
    panoptic_on); image_logits: float32 [K] and topk: int32 [kappa] ranked classes (RankSeg
    only, else None).
    """

    sem: np.ndarray | None
    panoptic: np.ndarray | None
    segments_info: list | None
    image_logits: np.ndarray | None
    topk: np.ndarray | None


class MaskFormerInferencer:
    """Runs the official Mask2Former test-time inference of a `MaskFormer` on single images.

    config: the full config (model.mask2former.{semantic_on, panoptic_on, thresholds,
    size_divisibility}, data.{test_scale, mean, std}, test.size_bucket); model: a `MaskFormer`;
    thing_ids: contiguous ids of the thing classes (panoptic; every other class is stuff).
    compiler_options: optional XLA options of the forward's jit (e.g. faster CPU compiles in
    tests).
    """

    def __init__(self, config, model, thing_ids=(), *, compiler_options=None):
        mf = config.model.mask2former
        self.semantic_on, self.panoptic_on = bool(mf.semantic_on), bool(mf.panoptic_on)
        self.object_mask_threshold = float(mf.object_mask_threshold)
        self.overlap_threshold = float(mf.overlap_threshold)
        self.size_divisibility = int(mf.size_divisibility)
        self.gt_oracle = bool(model.cfg.gt_oracle)
        self.is_rankseg = bool(model.is_rankseg)
        d = config.data
        self.min_size, self.max_size = min(d.test_scale), max(d.test_scale)
        self.mean, self.std = tuple(d.mean), tuple(d.std)
        self.size_bucket = int(config.test.size_bucket)
        self.aug_min_sizes = tuple(int(v) for v in config.test.aug_min_sizes)
        self.aug_max_size = int(config.test.aug_max_size)
        self.aug_flip = bool(config.test.flip)
        self.tta = bool(self.aug_min_sizes)
        if self.tta and self.panoptic_on:
            raise ValueError("test-time augmentation (test.aug_min_sizes) is semantic only; "
                             "set model.mask2former.panoptic_on=False")
        self.thing_ids = tuple(int(t) for t in thing_ids)
        self.num_classes = int(config.model.num_classes)
        graphdef, self._state = nnx.split(model)

        def fwd(state, image, gt):
            out = nnx.merge(graphdef, state)(image, gt_present=gt)
            return (out["class_logits_full"][0], out["mask_logits"][-1, 0],
                    out["topk_index"][0] if "topk_index" in out else None,
                    out["image_logits"][0] if "image_logits" in out else None)

        # One compilation per padded input size.
        self._fwd = jax.jit(fwd, compiler_options=compiler_options)
        self._post = jax.jit(functools.partial(_postprocess, semantic=self.semantic_on,
                                               panoptic=self.panoptic_on))
        self._semantic_maps = jax.jit(_semantic_maps)

    def prepare(self, image_u8: np.ndarray) -> PreparedImage:
        """The official test-time sizing of a uint8 [H0, W0, 3] RGB image."""
        return prepare_test_image(image_u8, min_size=self.min_size, max_size=self.max_size,
                                  mean=self.mean, std=self.std,
                                  size_divisibility=self.size_divisibility)

    def tta_views(self, image_u8: np.ndarray) -> list[tuple[PreparedImage, bool]]:
        """The test-time augmentation views of a uint8 [H0, W0, 3] RGB image, in the official
        order: (prepared view, flipped) for each short side of `test.aug_min_sizes`, unflipped
        then (with `test.flip`) flipped. Each view re-resizes the image as the plain test path
        sizes it (module doc); its output size stays (H0, W0)."""
        base = resize_shortest_edge(image_u8, self.min_size, self.max_size)
        views = []
        for short in self.aug_min_sizes:
            resized = resize_shortest_edge(base, short, self.aug_max_size)
            for flipped in (False, True) if self.aug_flip else (False,):
                views.append((prepare_resized(resized[:, ::-1] if flipped else resized,
                                              image_u8.shape[:2], mean=self.mean, std=self.std,
                                              size_divisibility=self.size_divisibility),
                              flipped))
        return views

    def predict(self, image_u8: np.ndarray, gt_present=None) -> MaskFormerPrediction:
        """Predicts one uint8 [H0, W0, 3] RGB image; gt_present: [K] 0/1, the `-gt` oracle's
        ground-truth classes (required there, ignored otherwise). With `test.aug_min_sizes`
        this is `predict_tta`."""
        if self.tta:
            return self.predict_tta(image_u8, gt_present)
        return self.predict_prepared(self.prepare(image_u8), gt_present)

    def semantic_maps(self, prep: PreparedImage, gt_present=None) -> np.ndarray:
        """`sem_seg` float32 [K, H0, W0] of one prepared image (the semantic map before the
        argmax, at the original size)."""
        mask_cls, mask_logits, _, _ = self._forward(prep, gt_present)
        (oh, ow) = prep.output_size
        maps = self._semantic_maps(mask_cls, mask_logits, *self._chain(prep, mask_logits))
        return np.asarray(jax.device_get(maps))[:, :oh, :ow]

    def predict_tta(self, image_u8: np.ndarray, gt_present=None) -> MaskFormerPrediction:
        """The official multi-scale(+flip) semantic prediction (module doc): `sem` only."""
        total = None
        views = self.tta_views(image_u8)
        for prep, flipped in views:
            maps = self.semantic_maps(prep, gt_present)
            if flipped:
                maps = maps[:, :, ::-1]
            # In view order, float32, as `final_predictions += ...` does officially.
            total = maps.copy() if total is None else np.add(total, maps, out=total)
        total /= np.float32(len(views))
        # torch argmax: the first maximal class.
        return MaskFormerPrediction(sem=np.argmax(total, axis=0).astype(np.int32),
                                    panoptic=None, segments_info=None, image_logits=None,
                                    topk=None)

    def _forward(self, prep: PreparedImage, gt_present):
        """The jitted forward of one prepared image: (class logits [Q, K+1], mask logits
        [Q, h, w], topk [kappa] or None, image logits [K] or None)."""
        gt = None
        if self.gt_oracle:
            if gt_present is None:
                raise ValueError("the -gt oracle (model.mask2former.gt_oracle) needs the "
                                 "image's ground-truth classes")
            gt = jnp.asarray(np.asarray(gt_present, np.float32).reshape(1, self.num_classes))
        return self._fwd(self._state, jnp.asarray(prep.image)[None], gt)

    def _chain(self, prep: PreparedImage, mask_logits) -> tuple:
        """The `resize_chain` matrices (a_h, a_w, b_h, b_w) of one prepared image."""
        (ih, iw), (ph, pw), (oh, ow) = prep.image_size, prep.padded_size, prep.output_size
        h, w = mask_logits.shape[1:]
        a_h, b_h = resize_chain(h, ph, ih, oh, bucket(oh, self.size_bucket))
        a_w, b_w = resize_chain(w, pw, iw, ow, bucket(ow, self.size_bucket))
        return a_h, a_w, b_h, b_w

    def predict_prepared(self, prep: PreparedImage, gt_present=None) -> MaskFormerPrediction:
        """Predicts an already prepared image (see `prepare`), single view."""
        mask_cls, mask_logits, topk, image_logits = self._forward(prep, gt_present)
        (oh, ow) = prep.output_size
        a_h, a_w, b_h, b_w = self._chain(prep, mask_logits)
        maps = jax.device_get(self._post(mask_cls, mask_logits, a_h, a_w, b_h, b_w,
                                         np.array([oh, ow], np.int32),
                                         np.float32(self.object_mask_threshold)))
        sem = maps["sem"][:oh, :ow] if self.semantic_on else None
        panoptic = segments = None
        if self.panoptic_on:
            maps["ids"], maps["fg"] = maps["ids"][:oh, :ow], maps["fg"][:oh, :ow]
            panoptic, segments = mask_former.panoptic_result(maps, self.thing_ids,
                                                             self.overlap_threshold)
        return MaskFormerPrediction(
            sem=sem, panoptic=panoptic, segments_info=segments,
            image_logits=None if image_logits is None else np.asarray(image_logits, np.float32),
            topk=None if topk is None else np.asarray(topk, np.int32))
