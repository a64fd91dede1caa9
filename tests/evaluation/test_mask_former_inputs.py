"""Tests of the Mask2Former test-time input (rankseg_jax/evaluation/mask_former_inputs.py):
detectron2's shortest-edge sizing, PIL decoding (EXIF), the PIL bilinear resize against the
independent Pillow re-implementation (tests/reference/pil_resize_numpy.py) on real JPEG/PNG
bytes encoded here with cv2, normalisation and zero padding to multiples of 32.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from rankseg_jax.evaluation import mask_former_inputs as mi
from tests.reference.pil_resize_numpy import resize_bilinear_uint8

MEAN = (123.675, 116.28, 103.53)  # the official PIXEL_MEAN / PIXEL_STD (RGB)
STD = (58.395, 57.12, 57.375)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random uint8 RGB image with some sharp edges (JPEG-friendly, not constant)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3), dtype=np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img[h // 3: h // 2, w // 4: w // 2] = 255 - img[h // 3: h // 2, w // 4: w // 2]
    return img


def _encode(img: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(img[..., ::-1]))  # cv2 encodes BGR
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("hw,short,max_size,want", [
    ((512, 683), 640, 2560, (640, 854)),   # 683 * 1.25 = 853.75
    ((256, 301), 640, 2560, (640, 753)),   # 301 * 2.5 = 752.5: half rounds up, not to even
    ((640, 480), 640, 2560, (853, 640)),   # portrait: 640 * 4/3 = 853.33
    ((300, 300), 640, 2560, (640, 640)),
    ((100, 1000), 640, 2560, (256, 2560)),  # 6400 > 2560: both scaled by 0.4
    ((1000, 120), 640, 2560, (2560, 307)),  # 5333.3 > 2560: 640 * 0.48 = 307.2
])
def test_shortest_edge_size_examples(hw, short, max_size, want):
    assert mi.shortest_edge_size(*hw, short, max_size) == want


def test_shortest_edge_size_properties():
    rng = np.random.default_rng(0)
    for h, w in rng.integers(1, 5000, (200, 2)).tolist():
        nh, nw = mi.shortest_edge_size(h, w, 640, 2560)
        if max(h, w) / min(h, w) * 640 <= 2560:
            assert min(nh, nw) == 640
        else:
            assert max(nh, nw) == 2560
        assert abs(nh * w - nw * h) <= max(h, w)  # aspect ratio kept to within rounding


def test_read_image_png_is_lossless_and_applies_exif():
    img = _image(23, 37)
    np.testing.assert_array_equal(mi.read_image(_encode(img, ".png")), img)
    gray = img[..., 0]
    ok, buf = cv2.imencode(".png", gray)
    assert ok
    np.testing.assert_array_equal(mi.read_image(buf.tobytes()), np.repeat(gray[..., None], 3, -1))
    # EXIF orientation 6 ("rotate 90 clockwise to display"), as detectron2 applies it
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="PNG", exif=exif)
    np.testing.assert_array_equal(mi.read_image(out.getvalue()), np.rot90(img, k=-1))


@pytest.mark.parametrize("ext", [".png", ".jpg"])
@pytest.mark.parametrize("hw,short,max_size", [
    ((37, 53), 64, 256),    # upscale 1.73x
    ((150, 211), 48, 256),  # downscale 3.1x: PIL's triangle widens (antialias)
    ((40, 300), 64, 256),   # long side clipped to max_size: 40x300 -> 34x256
])
def test_resize_matches_pillow_reference_on_encoded_images(ext, hw, short, max_size):
    src = mi.read_image(_encode(_image(*hw, seed=1), ext))
    size = mi.shortest_edge_size(*src.shape[:2], short, max_size)
    got = mi.resize_image(src, size)
    want = resize_bilinear_uint8(src, *size)
    assert got.dtype == np.uint8 and got.shape == (*size, 3)
    np.testing.assert_array_equal(got, want)
    if size[0] < hw[0] and size[1] < hw[1]:  # discriminates: cv2 (no antialias) differs
        cv = cv2.resize(src, size[::-1], interpolation=cv2.INTER_LINEAR)
        assert (cv != want).mean() > 0.1


def _normalized(resized: np.ndarray, padded: tuple[int, int]) -> np.ndarray:
    out = np.zeros((*padded, 3), np.float32)
    h, w = resized.shape[:2]
    out[:h, :w] = (resized.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
    return out


def test_prepare_test_image_official_sizes():
    img = mi.read_image(_encode(_image(120, 170, seed=2), ".jpg"))
    x = mi.prepare_test_image(img, min_size=640, max_size=2560, mean=MEAN, std=STD,
                              size_divisibility=32)
    assert x.image_size == (640, 907)  # 170 * 640 / 120 = 906.67
    assert x.padded_size == (640, 928) and x.output_size == (120, 170)
    assert x.image.dtype == np.float32 and x.image.shape == (640, 928, 3)
    want = _normalized(resize_bilinear_uint8(img, 640, 907), (640, 928))
    np.testing.assert_array_equal(x.image, want)
    assert not x.image[:, 907:].any()  # zero padding after normalisation


def test_normalize_and_pad_divisibility():
    img = _image(33, 64)
    out, padded = mi.normalize_and_pad(img, MEAN, STD, 32)
    assert padded == (64, 64) and out.shape == (64, 64, 3)
    np.testing.assert_array_equal(out, _normalized(img, (64, 64)))
    out1, padded1 = mi.normalize_and_pad(img, MEAN, STD, 1)
    assert padded1 == (33, 64)
    np.testing.assert_array_equal(out1, out[:33])
    with pytest.raises(ValueError):
        mi.prepare_test_image(img.astype(np.float32), min_size=8, max_size=16, mean=MEAN,
                              std=STD, size_divisibility=32)
