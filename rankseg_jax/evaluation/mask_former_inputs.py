"""Mask2Former test-time input: the official detectron2 test mapper and model preprocessing.

Official path (batch 1, `train_net.py:262-265`, `detectron2_custom.py:188-208`):
1. `read_image(file, format="RGB")` (detectron2 `detection_utils.py:60-90,166-186`): PIL
   decode, EXIF orientation applied (`_apply_exif_orientation`), `convert("RGB")`, uint8 HWC;
2. `ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST, "choice")` (`detection_utils.py:632-656`,
   `augmentation_impl.py:181-200`):
   short side to `min_size` unless the long side would exceed `max_size`, sides rounded as
   `int(x + 0.5)`; the uint8 image is resized by `ResizeTransform.apply_image`
   (`transform.py:112-156`) with **PIL** `Image.resize(..., BILINEAR)`: Pillow's separable
   triangle filter whose support widens when downscaling (i.e. antialiased), 22-bit fixed-point
   weights, horizontal pass first, uint8 rounding after each pass. Pillow itself does it here;
3. the model (`maskformer_model.py:247-249`, detectron2 `image_list.py:99-102,129-134`):
   `(x - PIXEL_MEAN) / PIXEL_STD` in float32, then `ImageList.from_tensors(size_divisibility=32)`
   zero-pads bottom/right to a multiple of 32 (after normalisation: the padding is 0, not the
   mean);
4. the outputs are resized back to the original size (`height`/`width` of the dataset dict,
   `detection_utils.py:189-214`).

`prepare_test_image` returns the float32 [Hp, Wp, 3] (channels-last) model input with the
three sizes `mask_former.semantic_inference`/`panoptic_inference` take.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

_EXIF_ORIENTATION = 0x0112
# detectron2 `_apply_exif_orientation`: EXIF orientation value -> PIL transpose.
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def read_image(data: bytes) -> np.ndarray:
    """Decodes image bytes as detectron2 `read_image(format="RGB")` does (PIL, EXIF orientation
    applied, converted to RGB). Returns uint8 [H, W, 3]."""
    with Image.open(io.BytesIO(data)) as image:
        try:
            orientation = image.getexif().get(_EXIF_ORIENTATION)
        except Exception:  # detectron2 ignores unreadable EXIF likewise
            orientation = None
        method = _EXIF_TRANSPOSE.get(orientation)
        if method is not None:
            image = image.transpose(method)
        return np.asarray(image.convert("RGB"))


def shortest_edge_size(height: int, width: int, short_edge: int,
                       max_size: int) -> tuple[int, int]:
    """detectron2 `ResizeShortestEdge.get_output_shape` (augmentation_impl.py:181-200).

    The short side becomes `short_edge`; if the long side then exceeds `max_size`, both are
    scaled so that it equals `max_size`; each side is rounded half up (`int(x + 0.5)`).
    Returns (new_height, new_width).
    """
    size = float(short_edge)
    scale = size / min(height, width)
    if height < width:
        newh, neww = size, scale * width
    else:
        newh, neww = scale * height, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [h, w, 3] with PIL bilinear, as detectron2's ResizeTransform does
    for uint8 images (transform.py:112-156; antialiased when downscaling)."""
    h, w = int(size[0]), int(size[1])
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))


def normalize_and_pad(image: np.ndarray, mean, std,
                      size_divisibility: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(x - mean) / std in float32, then zero padding bottom/right to multiples of
    `size_divisibility` (detectron2 `ImageList.from_tensors`, one image).

    image: uint8 [h, w, 3] RGB; mean/std: 3 values (RGB, 0..255 scale).
    Returns (float32 [Hp, Wp, 3], (Hp, Wp)).
    """
    h, w = image.shape[:2]
    d = max(int(size_divisibility), 1)
    ph, pw = -(-h // d) * d, -(-w // d) * d
    mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    out = np.zeros((ph, pw, image.shape[2]), np.float32)
    out[:h, :w] = (image.astype(np.float32) - mean32) / std32
    return out, (ph, pw)


@dataclass(frozen=True)
class PreparedImage:
    """One prepared test image.

    image: float32 [Hp, Wp, 3] normalised, zero-padded model input (channels-last);
    image_size: (h, w) of the resized image inside it; padded_size: (Hp, Wp);
    output_size: (H0, W0), the original image size the predictions are resized back to.
    """

    image: np.ndarray
    image_size: tuple[int, int]
    padded_size: tuple[int, int]
    output_size: tuple[int, int]


def resize_shortest_edge(image: np.ndarray, short_edge: int, max_size: int) -> np.ndarray:
    """detectron2 `ResizeShortestEdge(short_edge, max_size)` of a uint8 RGB image [H, W, 3]
    (`shortest_edge_size`, then `resize_image`). Returns uint8 [h, w, 3]; raises ValueError
    for any other input."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    return resize_image(image, shortest_edge_size(*image.shape[:2], short_edge, max_size))


def prepare_resized(resized: np.ndarray, output_size: tuple[int, int], *, mean, std,
                    size_divisibility: int) -> PreparedImage:
    """A resized uint8 image [h, w, 3] as the model's input (`normalize_and_pad`), with the
    original size (H0, W0) its predictions go back to. Returns a `PreparedImage`."""
    padded, padded_size = normalize_and_pad(resized, mean, std, size_divisibility)
    return PreparedImage(padded, resized.shape[:2], padded_size, tuple(output_size))


def prepare_test_image(image: np.ndarray, *, min_size: int, max_size: int, mean, std,
                       size_divisibility: int) -> PreparedImage:
    """Official test-time sizing of a uint8 RGB image [H0, W0, 3] (see the module docstring).

    min_size/max_size: MIN_SIZE_TEST/MAX_SIZE_TEST (640/2560 for ADE20K); mean/std: PIXEL_MEAN /
    PIXEL_STD (RGB); size_divisibility: 32. Returns a `PreparedImage`.
    """
    return prepare_resized(resize_shortest_edge(image, min_size, max_size), image.shape[:2],
                           mean=mean, std=std, size_divisibility=size_divisibility)
