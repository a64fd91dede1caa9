"""Mask2Former's training mappers as seeded pure functions of (example, rng).

`train_mapper` is `MaskFormerSemanticDatasetMapper` (`mask2former/data/dataset_mappers/
mask_former_semantic_dataset_mapper.py:64-182`) or, with `panoptic=True`,
`MaskFormerPanopticDatasetMapper` (`mask_former_panoptic_dataset_mapper.py:64-163`), with
the same library ops as detectron2 so that one draw gives the same pixels:

  1. ResizeShortestEdge(short side = choice(min_size_train), max_size, "choice")
     (`detectron2/data/transforms/augmentation_impl.py:167-200`): the image with PIL
     BILINEAR (uint8); the semantic label, which the mappers read as float64, takes
     detectron2's non-uint8 path, torch `F.interpolate(mode="nearest")` (`transform.py:
     112-156`; index floor(float32(dst * (in / out))), reproduced here in NumPy); the
     panoptic RGB PNG (uint8) PIL NEAREST. Image and semantic label can thus be shifted by
     up to one source pixel against each other, as officially.
  2. RandomCrop_CategoryAreaConstraint("absolute", crop, single_category_max_area, ignore)
     (`augmentation_impl.py:400-464`): with max area >= 1 a plain RandomCrop; else up to 10
     boxes until one has > 1 class and its largest class < max_area of the non-ignored
     pixels, the last box otherwise.
  3. ColorAugSSD (`projects/PointRend/point_rend/color_augmentation.py:8-98`), image only.
  4. RandomFlip (horizontal, `uniform() < prob`).
  5. Padding bottom/right to exactly `crop` (INPUT.SIZE_DIVISIBILITY = the crop size; the
     official pads to that size, not to a multiple): image with 128 in raw pixel space, so
     the pad is ~(0.07, 0.21, 0.43) after normalisation (unlike the zero pad of the model at
     test time), label with the ignore value, panoptic ids with 0 (VOID). Reproduced: the
     padded area is then background of every target mask, a hard negative of the mask
     losses rather than ignored (the official training behaviour).
  6. Targets (`data/mask_targets.py`, on NumPy): semantic, one per class present
     (ascending); panoptic, one per non-crowd segment of `segments_info` in JSON order,
     segments cropped or occluded away kept with an all-zero mask (official).
  7. Normalisation as the model does it: float32 (x - mean) / std.

The random draws are numpy's (`np.random.Generator`, seeded per (seed, index) by the
pipeline) in the official order; the official ColorAugSSD draws from Python's `random`, so
the distribution is the official one and the streams differ.

Output: {'image': float32 [H, W, 3] normalised, 'label': int32 [H, W] semantic (ignore in
the padding), 'target_classes': int32 [T] (-1 padding), 'target_masks': bool [T, H, W],
'target_valid': bool [T]} with (H, W) = crop and T = max_targets.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from rankseg_jax.data import mask_targets
from rankseg_jax.data.panoptic import VOID, id2rgb, rgb2id
from rankseg_jax.data.sources import BadExampleError
from rankseg_jax.data.transforms import convert_uint8

PAD_IMAGE = 128  # raw pixel value of the training image padding (`..._mapper.py:158`)


# --------------------------------------------------------------------------- geometry


def shortest_edge_shape(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2 `ResizeShortestEdge.get_output_shape`: the short side becomes `short`, then
    both sides shrink if the long one exceeds `max_size`; each side `int(x + 0.5)`."""
    size = short * 1.0
    scale = size / min(h, w)
    newh, neww = (size, scale * w) if h < w else (scale * h, size)
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def pil_resize(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """uint8 [H, W] or [H, W, 3] -> (h, w) with PIL (detectron2's uint8 path)."""
    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), resample))


def _torch_nearest_index(out: int, inp: int) -> np.ndarray:
    # torch CPU `nearest` on float64 maps: floorf(float(dst * (double)in / out)), clamped.
    src = np.floor((np.arange(out) * (inp / out)).astype(np.float32)).astype(np.int64)
    return np.minimum(src, inp - 1)


def torch_nearest_resize(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Label map [H, W] -> (h, w) as torch `F.interpolate(mode='nearest')` on a float64 map
    (detectron2's non-uint8 resize). Same dtype out."""
    h, w = label.shape
    return label[_torch_nearest_index(size[0], h)][:, _torch_nearest_index(size[1], w)]


def resize_shortest_edge(ex: dict, rng: np.random.Generator, min_sizes, max_size: int) -> dict:
    """Step 1 (module doc). ex: {'image' uint8 [H,W,3], 'label' int [H,W], optional
    'panoptic' int [H,W] ids}; returns the same keys at the new size."""
    h, w = ex["label"].shape
    size = shortest_edge_shape(h, w, int(rng.choice(np.asarray(min_sizes))), max_size)
    out = dict(ex)
    out["image"] = pil_resize(ex["image"], size, Image.BILINEAR)
    out["label"] = torch_nearest_resize(ex["label"], size)
    if "panoptic" in ex:  # the RGB PNG, PIL NEAREST, decoded after the transforms
        out["panoptic"] = rgb2id(pil_resize(id2rgb(ex["panoptic"]), size, Image.NEAREST))
    return out


def _crop(ex: dict, y0: int, x0: int, ch: int, cw: int) -> dict:
    out = dict(ex)
    for key in ("image", "label", "panoptic"):
        if key in ex:
            out[key] = ex[key][y0:y0 + ch, x0:x0 + cw]
    return out


def random_crop(ex: dict, rng: np.random.Generator, crop: tuple[int, int],
                single_category_max_area: float = 1.0, ignore_index: int = 255) -> dict:
    """Step 2 (module doc): a (min(ch, H), min(cw, W)) crop of every map of `ex`."""
    h, w = ex["label"].shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    y0 = int(rng.integers(h - ch + 1))
    x0 = int(rng.integers(w - cw + 1))
    if single_category_max_area < 1.0:
        for attempt in range(10):
            if attempt:
                y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            labels, cnt = np.unique(ex["label"][y0:y0 + ch, x0:x0 + cw], return_counts=True)
            cnt = cnt[labels != ignore_index]
            if len(cnt) > 1 and np.max(cnt) < np.sum(cnt) * single_category_max_area:
                break
    return _crop(ex, y0, x0, ch, cw)


# --------------------------------------------------------------------------- photometric


def color_aug_ssd(image: np.ndarray, rng: np.random.Generator, brightness_delta: int = 32,
                  contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                  hue_delta: int = 18) -> np.ndarray:
    """Step 3 (module doc): uint8 RGB [H, W, 3] -> uint8 RGB.

    Brightness (p 1/2, +U(-32, 32)); then with p 1/2 [contrast, saturation, hue], else
    [saturation, hue, contrast]; each p 1/2: contrast x U(.5, 1.5), HSV saturation
    x U(.5, 1.5), hue + randint(-18, 18) (both ends included) mod 180. The official code
    converts RGB -> BGR and uses cv2's BGR<->HSV; RGB<->HSV on the RGB image gives the same
    pixels.
    """
    def contrast(img):
        return convert_uint8(img, alpha=rng.uniform(*contrast_range)) if rng.integers(2) else img

    def saturation(img):
        if not rng.integers(2):
            return img
        hsv = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2HSV)
        hsv[:, :, 1] = convert_uint8(hsv[:, :, 1], alpha=rng.uniform(*saturation_range))
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

    def hue(img):
        if not rng.integers(2):
            return img
        hsv = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2HSV)
        delta = int(rng.integers(-hue_delta, hue_delta + 1))
        hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int64) + delta) % 180
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

    img = image
    if rng.integers(2):
        img = convert_uint8(img, beta=rng.uniform(-brightness_delta, brightness_delta))
    order = (contrast, saturation, hue) if rng.integers(2) else (saturation, hue, contrast)
    for op in order:
        img = op(img)
    return img


def random_flip(ex: dict, rng: np.random.Generator, prob: float = 0.5) -> dict:
    """Step 4 (module doc): horizontal flip of every map when uniform() < prob."""
    if not rng.random() < prob:
        return ex
    out = dict(ex)
    for key in ("image", "label", "panoptic"):
        if key in ex:
            out[key] = ex[key][:, ::-1]
    return out


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
    """uint8 RGB -> float32 (x - mean) / std, in float32 as the model
    (`maskformer_model.py:247`: uint8 tensor minus float32 buffer, divided by float32)."""
    mean = np.asarray(mean, np.float32).reshape(1, 1, 3)
    std = np.asarray(std, np.float32).reshape(1, 1, 3)
    return (image.astype(np.float32) - mean) / std


def pad_to(ex: dict, size: tuple[int, int], ignore_index: int) -> dict:
    """Step 5 (module doc): bottom/right to exactly `size`; image 128 (raw uint8), label
    ignore, panoptic VOID. Raises ValueError if a map is larger than `size`."""
    h, w = ex["label"].shape
    ph, pw = size[0] - h, size[1] - w
    if ph < 0 or pw < 0:
        raise ValueError(f"cannot pad {(h, w)} to smaller size {tuple(size)}")
    out = dict(ex)
    out["image"] = np.pad(ex["image"], ((0, ph), (0, pw), (0, 0)), constant_values=PAD_IMAGE)
    out["label"] = np.pad(ex["label"], ((0, ph), (0, pw)), constant_values=ignore_index)
    if "panoptic" in ex:
        out["panoptic"] = np.pad(ex["panoptic"], ((0, ph), (0, pw)), constant_values=VOID)
    return out


# --------------------------------------------------------------------------- targets


def count_targets(ex: dict, num_classes: int, panoptic: bool) -> int:
    """Targets of an (unaugmented) example: non-crowd segments (panoptic; the mappers keep
    empty ones, so augmentation does not change the count) or classes present (semantic; an
    upper bound of any crop's count)."""
    if panoptic:
        return sum(1 for s in ex["segments_info"] if not s["iscrowd"])
    return int(mask_targets.semantic_targets(np.asarray(ex["label"]), num_classes, 1)[3])


def example_targets(ex: dict, num_classes: int, max_targets: int, panoptic: bool) -> dict:
    """Step 6 (module doc): {'target_classes' int32 [T], 'target_masks' bool [T, H, W],
    'target_valid' bool [T]}. Raises BadExampleError naming the image when it has more than
    T targets (nothing is dropped silently)."""
    if panoptic:
        segs = ex["segments_info"]
        table = mask_targets.segments_table(segs, len(segs))
        cls, masks, valid = mask_targets.panoptic_targets(np.asarray(ex["panoptic"]), **table)
        n = int(valid.sum())
    else:
        cls, masks, valid, n = mask_targets.semantic_targets(
            np.asarray(ex["label"]), num_classes, max_targets)
        n = int(n)
    if n > max_targets:
        raise BadExampleError(f"{ex.get('name', '?')}: {n} targets but data.max_targets="
                              f"{max_targets}")
    t, hw = max_targets, masks.shape[1:]
    out_cls = np.full((t,), mask_targets.PAD_CLASS, np.int32)
    out_masks = np.zeros((t, *hw), bool)
    out_valid = np.zeros((t,), bool)
    k = min(len(cls), t)  # kept targets come first; the rest are invalid padding
    out_cls[:k], out_masks[:k], out_valid[:k] = cls[:k], masks[:k], valid[:k]
    return {"target_classes": out_cls, "target_masks": out_masks, "target_valid": out_valid}


class TargetLimitSource:
    """Raises BadExampleError, naming the image, for an example with more than `max_targets`
    targets (`count_targets`), so `data.bad_example_policy` fails on it or skips and counts
    it before any augmentation. Otherwise returns the wrapped source's example."""

    def __init__(self, source, num_classes: int, max_targets: int, panoptic: bool):
        self.source, self.num_classes = source, num_classes
        self.max_targets, self.panoptic = max_targets, panoptic

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        ex = self.source[index]
        n = count_targets(ex, self.num_classes, self.panoptic)
        if n > self.max_targets:
            raise BadExampleError(f"{ex.get('name', index)}: {n} targets but "
                                  f"data.max_targets={self.max_targets}")
        return ex

    def __repr__(self) -> str:
        return f"TargetLimitSource({self.source!r}, max_targets={self.max_targets})"


# --------------------------------------------------------------------------- mapper


def train_mapper(ex: dict, rng: np.random.Generator, *, panoptic: bool, min_sizes, max_size,
                 crop, single_category_max_area, color_aug, flip_prob, mean, std, ignore_index,
                 num_classes, max_targets) -> dict:
    """The whole official training mapper (module doc) of one source example.

    ex: {'image' uint8 [H,W,3] RGB, 'label' int [H,W], and for panoptic 'panoptic' int32
    [H,W] ids + 'segments_info' (training-id `category_id`, `iscrowd`)}. Returns the dict of
    the module doc.
    """
    keys = ("image", "label", "panoptic") if panoptic else ("image", "label")
    maps = {k: ex[k] for k in keys}
    maps = resize_shortest_edge(maps, rng, min_sizes, max_size)
    maps = random_crop(maps, rng, crop, single_category_max_area, ignore_index)
    if color_aug:
        maps["image"] = color_aug_ssd(maps["image"], rng)
    maps = random_flip(maps, rng, flip_prob)
    maps = pad_to({k: np.ascontiguousarray(v) for k, v in maps.items()}, crop, ignore_index)
    maps["label"] = maps["label"].astype(np.int32)
    targets = example_targets({**maps, "segments_info": ex.get("segments_info"),
                               "name": ex.get("name")}, num_classes, max_targets, panoptic)
    return {"image": normalize(maps["image"], mean, std), "label": maps["label"], **targets}
