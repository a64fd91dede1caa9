"""Memory-light inference: whole/slide, multi-scale + flip, at the original resolution.

The official pipeline (mmseg-0.17 `EncoderDecoder.inference` / `aug_test`) forms K-way
logits at the test resolution
(-100 outside each window's top-kappa), averages overlapping windows, resizes to the original
size, softmaxes, un-flips, averages augmentations and takes the argmax. Done literally that is
O(K·H·W) per image (5 GB of float32 for K=3688 at 512x683). Every step before the softmax is
*linear per class*, which is what this module exploits:

* Window placement, the crop-size resize, the window average and the resize to the original
  size are separable in (y, x): for window n the map from the head's [h, w] grid to the
  original [H0, W0] image is ``A_h[n] @ L @ A_w[n].T`` with small host-built matrices
  (``A_h = R_H0 · diag(1/rowcount) · E_window · B_crop``). mmseg window grids make the
  per-pixel count a product rowcount(y)·colcount(x), so the division is separable too.
  Un-flipping is a reversal of the rows of ``A_w``.
* A class missing from window n contributes exactly -100 there, i.e. ``-100 · (A_h[n] 1)
  (A_w[n] 1)^T``; a class missing from every window is exactly -100 everywhere.
* So logits are only formed for "slots": the sorted union of the classes chosen by any window
  of any augmentation (at most n_windows·kappa per augmentation, capped at K). Classes outside
  the union are -100 everywhere and can never win the argmax; in the softmax they are an
  exact extra mass ``(K - |union|)·exp(-100 - max)`` per pixel. Sorting the slots by class id
  keeps argmax tie-breaking (lowest class id) identical to the full-K argmax.
* The full-resolution argmax runs over slot chunks of ``test.class_chunk`` in a `lax.scan`
  (running max), so peak memory is O(chunk·H0·W0), not O(K·H0·W0). Multi-augmentation
  softmax averaging does two passes (online max/normaliser per augmentation, then the
  averaged probabilities per chunk).

Stage 1 (the network) is jitted per crop-batch shape; stage 2 (combine) per bucketed output
shape: the original size is padded up to a multiple of ``test.size_bucket`` (extra rows of
the matrices are zero and the padding is cropped off), so differently sized images share
compilations while the valid region stays bit-identical.
"""

from __future__ import annotations

import dataclasses
import functools

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rankseg_jax.data import transforms
from rankseg_jax.evaluation import full_logits, windows
from rankseg_jax.rankseg import ranking

OUTSIDE = ranking.OUTSIDE_TOPK_LOGIT  # logit of a class outside a window's top-kappa
_HP = jax.lax.Precision.HIGHEST


# --------------------------------------------------------------------------- stage 2


def _slots(topks, num_classes: int):
    """Slot classes: sorted union of all windows' top-kappa (or all K classes).

    topks: list of [n_w, B, kappa] int arrays (one per augmentation), or None (Segmenter
    head: every class is a slot). Returns (classes [B, S] int32 sorted, valid [B, S] bool
    (False for repeated entries), n_unique [B]).
    """
    if topks is None:
        return None, None, None
    b = topks[0].shape[1]
    flat = jnp.concatenate([t.transpose(1, 0, 2).reshape(b, -1) for t in topks], axis=1)
    if flat.shape[1] >= num_classes:
        # The union may be everything: cheaper to use all K classes as slots.
        classes = jnp.broadcast_to(jnp.arange(num_classes, dtype=jnp.int32), (b, num_classes))
        return classes, jnp.ones(classes.shape, bool), jnp.full((b,), num_classes)
    classes = jnp.sort(flat.astype(jnp.int32), axis=1)
    valid = jnp.concatenate([jnp.ones((b, 1), bool), classes[:, 1:] != classes[:, :-1]], 1)
    return classes, valid, valid.sum(1)


def _to_slots(logits, topk, classes):
    """Scatters rank-ordered window logits into slots.

    logits: [n_w, B, kappa, h, w]; topk: [n_w, B, kappa]; classes: [B, S].
    Returns (slot logits [n_w, B, S, h, w] (0 where not chosen), miss [n_w, B, S] float32,
    1 where the window did not choose the slot's class).
    """
    onehot = (topk[..., None] == classes[None, :, None, :]).astype(jnp.float32)
    slot_logits = jnp.einsum("nbrs,nbrhw->nbshw", onehot, logits.astype(jnp.float32),
                             precision=_HP)
    return slot_logits, 1.0 - onehot.max(2)


def _chunk_logits(sl, miss, ah, aw, valid, s0, chunk):
    """Original-resolution logits of slots [s0, s0+chunk): [B, chunk, H0p, W0p].

    sl: [n_w, B, S, h, w]; miss: [n_w, B, S] or None; ah: [n_w, H0p, h]; aw: [n_w, W0p, w];
    valid: [B, S] bool or None (invalid slots get -inf).
    """
    lc = jax.lax.dynamic_slice_in_dim(sl, s0, chunk, axis=2)
    t = jnp.einsum("nYh,nbchw->nbcYw", ah, lc, precision=_HP)
    out = jnp.einsum("nbcYw,nXw->bcYX", t, aw, precision=_HP)
    if miss is not None:
        mc = jax.lax.dynamic_slice_in_dim(miss, s0, chunk, axis=2)
        # A missing class is exactly -100 in that window: -100 * coverage weight (rank 1).
        out = out + OUTSIDE * jnp.einsum("nbc,nY,nX->bcYX", mc, ah.sum(-1), aw.sum(-1),
                                         precision=_HP)
    if valid is not None:
        vc = jax.lax.dynamic_slice_in_dim(valid, s0, chunk, axis=1)
        out = jnp.where(vc[:, :, None, None], out, -jnp.inf)
    return out


def _pad_slots(x, axis, total, value):
    pad = total - x.shape[axis]
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def combine(logits, topks, ahs, aws, *, num_classes: int, chunk: int) -> jax.Array:
    """Argmax class map at the original resolution from low-resolution window logits.

    logits: list (one per augmentation) of [n_w, B, C, h, w] head logits (C = kappa in rank
    order for RankSeg, K for the Segmenter head); topks: list of [n_w, B, kappa] or None;
    ahs / aws: lists of [n_w, H0p, h] / [n_w, W0p, w] window matrices (`window_matrices`).
    One augmentation: argmax of the averaged logits (= argmax of their softmax). Several:
    argmax of the mean softmax probability over K classes (mmseg aug_test).
    Returns int32 [B, H0p, W0p] class ids (rows/cols beyond the original size are junk).
    """
    classes, valid, n_unique = _slots(topks, num_classes)
    if classes is None:
        sls = [x.astype(jnp.float32) for x in logits]
        misses = [None] * len(logits)
        n_slots, b = num_classes, logits[0].shape[1]
    else:
        pairs = [_to_slots(x, t, classes) for x, t in zip(logits, topks, strict=True)]
        sls, misses = [p[0] for p in pairs], [p[1] for p in pairs]
        n_slots, b = classes.shape[1], classes.shape[0]
    chunk = max(1, min(chunk, n_slots))
    total = windows.bucket(n_slots, chunk)
    sls = [_pad_slots(x, 2, total, 0.0) for x in sls]
    misses = [None if m is None else _pad_slots(m, 2, total, 1.0) for m in misses]
    if valid is None:
        valid = jnp.ones((b, n_slots), bool)
        n_unique = jnp.full((b,), num_classes)
        classes = jnp.broadcast_to(jnp.arange(num_classes, dtype=jnp.int32), (b, num_classes))
    valid = _pad_slots(valid, 1, total, False)
    starts = jnp.arange(0, total, chunk)
    hp, wp = ahs[0].shape[1], aws[0].shape[1]
    ahs = [jnp.asarray(a, jnp.float32) for a in ahs]
    aws = [jnp.asarray(a, jnp.float32) for a in aws]

    def logits_of(a, s0):
        return _chunk_logits(sls[a], misses[a], ahs[a], aws[a], valid, s0, chunk)

    if len(sls) == 1:
        score_of = lambda s0: logits_of(0, s0)  # noqa: E731
    else:
        # Pass 1: per augmentation, online max and softmax normaliser over slot chunks. The
        # max starts at -100 (finite, so no inf - inf) which only shifts the exponent.
        def stats(a):
            def body(carry, s0):
                m, z = carry
                lc = logits_of(a, s0)
                m_new = jnp.maximum(m, lc.max(1))
                z = z * jnp.exp(m - m_new) + jnp.exp(lc - m_new[:, None]).sum(1)
                return (m_new, z), None
            init = (jnp.full((b, hp, wp), OUTSIDE), jnp.zeros((b, hp, wp)))
            (m, z), _ = jax.lax.scan(body, init, starts)
            n_out = (num_classes - n_unique).astype(jnp.float32)[:, None, None]
            # Classes outside the union: exactly -100 everywhere, n_out of them.
            return m, z + n_out * jnp.exp(OUTSIDE - m)
        moments = [stats(a) for a in range(len(sls))]

        def score_of(s0):
            acc = 0.0
            for a, (m, z) in enumerate(moments):
                acc = acc + jnp.exp(logits_of(a, s0) - m[:, None]) / z[:, None]
            return acc / len(moments)

    def body(carry, s0):
        best, idx = carry
        sc = score_of(s0)
        cmax, carg = sc.max(1), sc.argmax(1).astype(jnp.int32) + s0
        better = cmax > best  # strict: earlier slots (lower class ids) win ties, as argmax
        return (jnp.where(better, cmax, best), jnp.where(better, carg, idx)), None

    init = (jnp.full((b, hp, wp), -jnp.inf), jnp.zeros((b, hp, wp), jnp.int32))
    (_, idx), _ = jax.lax.scan(body, init, starts)
    classes = _pad_slots(classes, 1, total, num_classes - 1)
    return jnp.take_along_axis(classes, idx.reshape(b, -1), axis=1).reshape(idx.shape)


# --------------------------------------------------------------------------- the engine


@dataclasses.dataclass
class Prediction:
    """One image's result. pred: int32 [H0, W0]; image_logits: float32 [K] (mean over the
    windows of every augmentation, RankSeg only, else None); topk: int32 [kappa] or None
    (top-kappa of `image_logits`)."""

    pred: np.ndarray
    image_logits: np.ndarray | None
    topk: np.ndarray | None


class Inferencer:
    """Runs the configured test-time inference of a model on single images.

    Use `views(image_u8)` to build the augmented inputs of a raw RGB image, then
    `predict(views, ori_shape)`. `config.test`: mode, crop_size, stride, scales, flip,
    memory_light, class_chunk, size_bucket.
    """

    def __init__(self, config, model):
        self.config = config
        self.num_classes = config.model.num_classes
        self.patch = config.model.vit.patch_size
        self.is_rankseg = model.is_rankseg
        self.topk = config.model.rankseg.topk if self.is_rankseg else None
        t = config.test
        self.mode, self.crop, self.stride = t.mode, tuple(t.crop_size), tuple(t.stride)
        self.memory_light, self.chunk, self.size_bucket = t.memory_light, t.class_chunk, \
            t.size_bucket
        self.model = model
        graphdef, state = nnx.split(model)
        self._state = state

        def fwd(state, crops, gt):
            out = nnx.merge(graphdef, state)(crops, train=False, gt_present=gt,
                                             full_logits=False)
            return out["mask_logits"], out.get("topk_index"), out.get("image_logits")

        self._fwd = jax.jit(fwd)
        self._combine = jax.jit(functools.partial(combine, num_classes=self.num_classes),
                                static_argnames=("chunk",))

        def naive(state, images, *, ori, flip, softmax):
            m = nnx.merge(graphdef, state)
            return full_logits.naive_scores(m, images, mode=self.mode, crop=self.crop,
                                            stride=self.stride, ori=ori, flip=flip,
                                            softmax=softmax)

        self._naive = jax.jit(naive, static_argnames=("ori", "flip", "softmax"))

    # ---------------------------------------------------------------- inputs

    def views(self, image_u8: np.ndarray) -> list[tuple[np.ndarray, bool]]:
        """Augmented inputs of a raw uint8 [H0, W0, 3] RGB image.

        One per (scale ratio, flip): keep-ratio resize to ratio x data.test_scale (mmseg
        MultiScaleFlipAug: (int(long*r), int(short*r))), normalise, flip. Returns a list of
        (float32 [h, w, 3], flipped).
        """
        d, t = self.config.data, self.config.test
        out = []
        for r in t.scales:
            scale = (int(d.test_scale[0] * r), int(d.test_scale[1] * r))
            img = transforms.normalize(transforms.imrescale(image_u8, scale, cv2.INTER_LINEAR),
                                       d.mean, d.std)
            out.append((img, False))
            if t.flip:
                out.append((np.ascontiguousarray(img[:, ::-1]), True))
        return out

    # ---------------------------------------------------------------- inference

    def _boxes(self, h: int, w: int):
        return windows.window_boxes(self.mode, h, w, self.crop, self.stride)

    def _run_view(self, image: np.ndarray, gt):
        """Stage 1 on one view [h, w, 3]: window logits [n_w, 1, C, gh, gw], topk, image
        logits, and the window boxes."""
        h, w, _ = image.shape
        boxes = self._boxes(h, w)
        crops = np.stack([image[y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])
        g = None if gt is None else jnp.tile(jnp.asarray(gt)[None], (len(boxes), 1))
        logits, topk, img_logits = self._fwd(self._state, jnp.asarray(crops), g)
        n = len(boxes)
        logits = logits.reshape((n, 1) + logits.shape[1:])
        topk = None if topk is None else topk.reshape(n, 1, -1)
        return logits, topk, img_logits, boxes

    def predict(self, views, ori_shape: tuple[int, int], gt_present=None) -> Prediction:
        """Prediction at the original size from `views` (see `views`).

        ori_shape: (H0, W0); gt_present: optional [K] 0/1 (oracle heads only).
        """
        h0, w0 = ori_shape
        if not self.memory_light:
            return self._predict_naive(views, ori_shape, gt_present)
        padded = (windows.bucket(h0, self.size_bucket), windows.bucket(w0, self.size_bucket))
        logits, topks, ahs, aws, img = [], [], [], [], []
        for image, flip in views:
            lg, tk, il, boxes = self._run_view(image, gt_present)
            ah, aw = windows.view_matrices(boxes, image.shape[:2], lg.shape[-2:], (h0, w0),
                                           padded, flip)
            ahs.append(ah)
            aws.append(aw)
            logits.append(lg)
            topks.append(tk)
            img.append(il)
        pred = self._combine(logits, None if topks[0] is None else topks, ahs, aws,
                             chunk=self.chunk)
        return self._finish(np.asarray(pred)[0, :h0, :w0], img)

    def _finish(self, pred, img) -> Prediction:
        if img[0] is None:
            return Prediction(pred.astype(np.int32), None, None)
        scores = np.concatenate([np.asarray(x) for x in img]).mean(0)
        topk = np.argsort(-scores, kind="stable")[: self.topk].astype(np.int32)
        return Prediction(pred.astype(np.int32), scores.astype(np.float32), topk)

    def _predict_naive(self, views, ori_shape, gt_present) -> Prediction:
        """Full-K path: literal official order of operations (test.memory_light=False)."""
        if gt_present is not None:
            raise ValueError("oracle heads need test.memory_light=True")
        softmax = len(views) > 1
        acc, img = None, []
        for image, flip in views:
            s = self._naive(self._state, jnp.asarray(image)[None], ori=tuple(ori_shape),
                            flip=flip, softmax=softmax)
            acc = s if acc is None else acc + s
            if self.is_rankseg:
                h, w = image.shape[:2]
                crops = np.stack([image[y1:y2, x1:x2] for y1, y2, x1, x2 in self._boxes(h, w)])
                img.append(self._fwd(self._state, jnp.asarray(crops), None)[2])
            else:
                img.append(None)
        return self._finish(np.asarray(jnp.argmax(acc[0], axis=0)), img)
