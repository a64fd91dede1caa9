"""mmseg-0.17-equivalent augmentation ops (`datasets/pipelines/transforms.py`), numpy + cv2.

Each op is a pure function of (example, rng) -> example, where an example is the source dict
{'image': uint8 [H,W,3] RGB, 'label': int32 [H,W], ...} and rng a `np.random.Generator`. The
order of random draws inside each op follows mmseg, so the *distribution* is mmseg's; the
streams themselves differ (mmseg uses numpy's global RandomState).

Deviation, deliberate: RandomCrop's cat_max_ratio check excludes the dataset's ignore value. mmseg
hard-codes 255 there, so for the -1-ignore datasets (ADE20K-Full, COCO+LVIS) it counts -1 as a
class (`RandomCrop.__call__` compares with 255 only); for 255-ignore datasets the two agree.
"""

from __future__ import annotations

import cv2
import numpy as np


def rescale_size(hw: tuple[int, int], scale: tuple[float, float]) -> tuple[int, int]:
    """mmcv `rescale_size` for a (long, short) bound; takes (h, w), returns new (h, w).

    f = min(max(scale)/max(h, w), min(scale)/min(h, w)); new side = int(side * f + 0.5).
    """
    h, w = hw
    f = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


def imrescale(array: np.ndarray, scale: tuple[float, float], interpolation: int) -> np.ndarray:
    """Keep-ratio resize like `mmcv.imrescale`; takes [H,W(,C)], returns [h,w(,C)] same dtype."""
    h, w = rescale_size(array.shape[:2], scale)
    # cv2 INTER_NEAREST is a plain copy for every depth, int32 labels (with -1) included.
    return cv2.resize(array, (w, h), interpolation=interpolation)


def random_resize(ex: dict, rng: np.random.Generator, scale: tuple[int, int],
                  ratio_range: tuple[float, float] = (0.5, 2.0)) -> dict:
    """mmseg `Resize(img_scale=scale, ratio_range, keep_ratio=True)`.

    r ~ U[lo, hi); target = (int(scale[0]*r), int(scale[1]*r)); image bilinear, label nearest.
    Takes/returns an example (image [H,W,3] uint8, label [H,W] int32) at the new size.
    """
    lo, hi = ratio_range
    r = rng.random() * (hi - lo) + lo
    target = (int(scale[0] * r), int(scale[1] * r))
    out = dict(ex)
    out["image"] = imrescale(ex["image"], target, cv2.INTER_LINEAR)
    out["label"] = imrescale(ex["label"], target, cv2.INTER_NEAREST)
    return out


def _crop_box(rng: np.random.Generator, hw, crop):
    margin_h, margin_w = max(hw[0] - crop[0], 0), max(hw[1] - crop[1], 0)
    y = int(rng.integers(0, margin_h + 1))
    x = int(rng.integers(0, margin_w + 1))
    return y, y + crop[0], x, x + crop[1]


def random_crop(ex: dict, rng: np.random.Generator, crop: tuple[int, int],
                cat_max_ratio: float = 0.75, ignore_index: int = 255) -> dict:
    """mmseg `RandomCrop(crop, cat_max_ratio)`: up to 10 checked boxes, then one unchecked.

    A box is accepted when its label has > 1 non-ignore class and the largest class covers
    < cat_max_ratio of the non-ignore pixels. Returns an example of size min(H,ch) x min(W,cw).
    """
    hw = ex["label"].shape
    box = _crop_box(rng, hw, crop)
    if cat_max_ratio < 1.0:
        for _ in range(10):
            y0, y1, x0, x1 = box
            labels, counts = np.unique(ex["label"][y0:y1, x0:x1], return_counts=True)
            counts = counts[labels != ignore_index]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = _crop_box(rng, hw, crop)
    y0, y1, x0, x1 = box
    out = dict(ex)
    out["image"] = ex["image"][y0:y1, x0:x1]
    out["label"] = ex["label"][y0:y1, x0:x1]
    return out


def random_flip(ex: dict, rng: np.random.Generator, prob: float = 0.5) -> dict:
    """mmseg `RandomFlip(prob)`: horizontal flip of image and label when rand() < prob."""
    if rng.random() < prob:
        ex = dict(ex)
        ex["image"] = ex["image"][:, ::-1]
        ex["label"] = ex["label"][:, ::-1]
    return ex


def convert_uint8(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """uint8 array -> uint8 clip(float32(img) * alpha + beta, 0, 255), truncated: the photometric
    step of mmseg's PhotoMetricDistortion and of detectron2's ColorAugSSD alike."""
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(ex: dict, rng: np.random.Generator, brightness_delta: int = 32,
                           contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                           hue_delta: int = 18) -> dict:
    """mmseg `PhotoMetricDistortion` on the uint8 image; returns an example with a uint8 image.

    Order: brightness (p .5, +U(-32,32)); mode = randint(2); contrast if mode == 1 (p .5,
    xU(.5,1.5)); saturation (p .5, S xU(.5,1.5) in cv2 HSV); hue (p .5, H + randint(-18,18)
    i.e. [-18, 17], mod 180); contrast if mode == 0. RGB input gives the same HSV as mmseg's BGR.
    """
    img = ex["image"]
    if rng.integers(2):
        img = convert_uint8(img, beta=rng.uniform(-brightness_delta, brightness_delta))
    mode = rng.integers(2)
    if mode == 1 and rng.integers(2):
        img = convert_uint8(img, alpha=rng.uniform(*contrast_range))
    if rng.integers(2):
        hsv = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2HSV)
        hsv[:, :, 1] = convert_uint8(hsv[:, :, 1], alpha=rng.uniform(*saturation_range))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.integers(2):
        hsv = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2HSV)
        delta = int(rng.integers(-hue_delta, hue_delta))
        hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int64) + delta) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if mode == 0 and rng.integers(2):
        img = convert_uint8(img, alpha=rng.uniform(*contrast_range))
    out = dict(ex)
    out["image"] = img
    return out


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
    """mmcv `imnormalize` (to_rgb already done): takes uint8 [H,W,3] RGB, returns float32.

    Bit for bit what mmcv's `cv2.subtract(img, mean)` then `cv2.multiply(img, 1 / std)` give
    (mmcv/image/photometric.py:imnormalize_): OpenCV subtracts a non-integer float64 scalar
    from a float32 image in float32 (the scalar rounded to float32 first), but multiplies by
    a float64 scalar in float64 and rounds the product to float32 once. Rounding 1/std to
    float32 before multiplying differs by 1 ulp in ~30-50% of the values.
    """
    mean = np.asarray(mean, np.float64).reshape(1, 1, 3).astype(np.float32)
    stdinv = 1.0 / np.asarray(std, np.float64).reshape(1, 1, 3)
    centred = image.astype(np.float32) - mean
    return (centred.astype(np.float64) * stdinv).astype(np.float32)


def pad_to(ex: dict, size: tuple[int, int], ignore_index: int) -> dict:
    """mmseg `Pad(size)` bottom/right: image with 0 (post-normalise), label with ignore.

    Takes image [h,w,3] float32, label [h,w] int32 with h <= H, w <= W; returns [H,W,...].
    """
    h, w = ex["label"].shape
    ph, pw = size[0] - h, size[1] - w
    if ph < 0 or pw < 0:
        raise ValueError(f"cannot pad {(h, w)} to smaller size {tuple(size)}")
    out = dict(ex)
    out["image"] = np.pad(ex["image"], ((0, ph), (0, pw), (0, 0)), constant_values=0)
    out["label"] = np.pad(ex["label"], ((0, ph), (0, pw)), constant_values=ignore_index)
    return out


def train_transform(ex: dict, rng: np.random.Generator, *, scale, ratio_range, crop,
                    cat_max_ratio, flip_prob, photometric, mean, std, ignore_index) -> dict:
    """The full mmseg train pipeline after loading.

    Takes a source example; returns {'image': float32 [ch,cw,3] normalised RGB,
    'label': int32 [ch,cw]} (padded with 0 / ignore when the resized image is smaller).
    """
    ex = random_resize(ex, rng, scale, ratio_range)
    ex = random_crop(ex, rng, crop, cat_max_ratio, ignore_index)
    ex = random_flip(ex, rng, flip_prob)
    if photometric:
        ex = photometric_distortion(ex, rng)
    ex = {"image": normalize(ex["image"], mean, std),
          "label": np.ascontiguousarray(ex["label"], dtype=np.int32)}
    return pad_to(ex, crop, ignore_index)


def eval_transform(ex: dict, *, scale, mean, std) -> dict:
    """mmseg test pipeline (single scale, no flip).

    Takes a source example; returns {'image': float32 [h,w,3] keep-ratio resized to `scale` and
    normalised, 'label': int32 [H0,W0] at the original resolution, 'name': str}.
    """
    image = imrescale(ex["image"], scale, cv2.INTER_LINEAR)
    return {"image": normalize(image, mean, std), "label": ex["label"], "name": ex["name"]}
