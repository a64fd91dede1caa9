"""Each augmentation op against its mmseg-0.17 definition (`datasets/pipelines/transforms.py`)."""

import cv2
import numpy as np
import pytest

from rankseg_jax.data import transforms as T


class ScriptedRng:
    """Stands in for np.random.Generator: returns scripted values and records every call."""

    def __init__(self, integers=(), uniform=(), random=()):
        self._q = {"integers": list(integers), "uniform": list(uniform), "random": list(random)}
        self.calls = []

    def _next(self, kind, args):
        self.calls.append((kind, args))
        return self._q[kind].pop(0)

    def integers(self, *args):
        return self._next("integers", args)

    def uniform(self, *args):
        return self._next("uniform", args)

    def random(self):
        return self._next("random", ())


def _ex(h=40, w=60, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (h, w, 3)).astype(np.uint8),
            "label": rng.integers(0, 5, (h, w)).astype(np.int32), "name": "x"}


# --------------------------------------------------------------------------- resize


@pytest.mark.parametrize("hw,scale,expected", [
    ((512, 683), (2048, 512), (512, 683)),  # short side binds, f = 1
    ((512, 683), (1024, 256), (256, 342)),  # 683 * 0.5 = 341.5 -> int(342.0) = 342
    ((683, 512), (1024, 256), (342, 256)),
    ((100, 1000), (2048, 512), (205, 2048)),  # long side binds: f = 2.048
    ((375, 500), (4160, 520), (520, 693)),  # PASCAL: 500 * 520/375 = 693.33
    ((333, 500), (1536, 384), (384, 577)),  # 500 * 384/333 = 576.58 -> 577
])
def test_rescale_size_matches_mmcv(hw, scale, expected):
    assert T.rescale_size(hw, scale) == expected


def test_random_resize_ratio_and_interpolation():
    ex = _ex(50, 80)
    rng = ScriptedRng(random=[0.5])  # r = 0.5 * 1.5 + 0.5 = 1.25 -> target (2560, 640)
    out = T.random_resize(ex, rng, (2048, 512))
    h, w = T.rescale_size((50, 80), (2560, 640))
    assert out["image"].shape == (h, w, 3) and out["label"].shape == (h, w)
    assert out["image"].dtype == np.uint8 and out["label"].dtype == np.int32
    np.testing.assert_array_equal(
        out["image"], cv2.resize(ex["image"], (w, h), interpolation=cv2.INTER_LINEAR))
    # Nearest: labels keep only their original values, including -1 ignore.
    ex["label"][0, :] = -1
    out = T.random_resize(ex, np.random.default_rng(0), (2048, 512))
    assert set(np.unique(out["label"])) <= set(np.unique(ex["label"]))
    r_lo = T.random_resize(ex, ScriptedRng(random=[0.0]), (2048, 512))
    assert r_lo["label"].shape == T.rescale_size((50, 80), (1024, 256))


# --------------------------------------------------------------------------- crop


def _crop_label(ignore_rows=True):
    # Columns < 120 alternate classes 1/2 in 4-px stripes (a 50/50 mix); the rest is class 0.
    # Crops 32x32 starting at x <= ~96 are valid; x >= 120 are pure class 0. The top rows are
    # ignore, which must not count towards the ratio.
    lab = np.zeros((64, 160), np.int32)
    cols = np.arange(120)
    lab[:, :120] = 1 + (cols // 4) % 2
    if ignore_rows:
        lab[:20] = 255
    return lab


def _ratio(crop, ignore=255):
    v, c = np.unique(crop, return_counts=True)
    c = c[v != ignore]
    return c.max() / c.sum(), len(c)


def test_random_crop_respects_cat_max_ratio():
    lab = _crop_label()
    ex = {"image": np.zeros((64, 160, 3), np.uint8), "label": lab}
    for seed in range(100):
        out = T.random_crop(ex, np.random.default_rng(seed), (32, 32), 0.75, 255)
        ratio, n = _ratio(out["label"])
        assert n > 1 and ratio < 0.75, seed
    # Without the check (ratio 1.0) many crops are dominated by one class: the test can fail.
    dominated = sum(_ratio(T.random_crop(ex, np.random.default_rng(s), (32, 32), 1.0)["label"])[0]
                    >= 0.75 for s in range(100))
    assert dominated > 10


def test_random_crop_ignore_value_is_configurable():
    lab = _crop_label()
    lab[lab == 255] = -1
    ex = {"image": np.zeros((64, 160, 3), np.uint8), "label": lab}
    for seed in range(30):
        out = T.random_crop(ex, np.random.default_rng(seed), (32, 32), 0.75, -1)
        assert _ratio(out["label"], -1)[0] < 0.75


def test_random_crop_ten_tries_then_unchecked():
    ex = {"image": np.zeros((64, 160, 3), np.uint8), "label": np.zeros((64, 160), np.int32)}
    rng = ScriptedRng(integers=[0, 0] * 10 + [7, 9])
    out = T.random_crop(ex, rng, (32, 32))
    assert len(rng.calls) == 22  # 1 + 10 boxes, 2 draws each; the 11th box is used unchecked
    assert rng.calls[0] == ("integers", (0, 33)) and rng.calls[1] == ("integers", (0, 129))
    assert out["label"].shape == (32, 32)
    ex["image"][7, 9] = 77
    assert T.random_crop(ex, ScriptedRng(integers=[0, 0] * 10 + [7, 9]), (32, 32))[
        "image"][0, 0, 0] == 77


def test_random_crop_small_image_and_same_box():
    ex = _ex(20, 50)
    ex["image"][..., 0] = ex["label"]  # the label is written into the red channel
    out = T.random_crop(ex, np.random.default_rng(3), (32, 32), 0.75)
    assert out["label"].shape == (20, 32)  # min(h, ch) x min(w, cw)
    np.testing.assert_array_equal(out["image"][..., 0], out["label"])


# --------------------------------------------------------------------------- flip


def test_flip_same_on_image_and_label():
    ex = _ex()
    ex["image"][..., 1] = ex["label"] * 40
    flipped = T.random_flip(ex, ScriptedRng(random=[0.49]), 0.5)
    np.testing.assert_array_equal(flipped["label"], ex["label"][:, ::-1])
    np.testing.assert_array_equal(flipped["image"][..., 1], flipped["label"] * 40)
    kept = T.random_flip(ex, ScriptedRng(random=[0.5]), 0.5)
    np.testing.assert_array_equal(kept["label"], ex["label"])
    n = sum(not np.array_equal(T.random_flip(ex, np.random.default_rng(s))["label"],
                               ex["label"]) for s in range(200))
    assert 50 < n < 150


# --------------------------------------------------------------------------- photometric


def _mmseg_photometric_bgr(bgr, ints, unis):
    """mmseg 0.17 PhotoMetricDistortion written out on a BGR image with scripted draws."""
    ints, unis = list(ints), list(unis)

    def convert(img, alpha=1, beta=0):
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    img = bgr
    if ints.pop(0):
        img = convert(img, beta=unis.pop(0))
    mode = ints.pop(0)
    if mode == 1 and ints.pop(0):
        img = convert(img, alpha=unis.pop(0))
    if ints.pop(0):
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = convert(hsv[:, :, 1], alpha=unis.pop(0))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if ints.pop(0):
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + ints.pop(0)) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if mode == 0 and ints.pop(0):
        img = convert(img, alpha=unis.pop(0))
    return img


@pytest.mark.parametrize("ints,unis", [
    ([1, 1, 1, 1, 1, -18], [25.3, 1.37, 0.61]),  # mode 1: contrast before
    ([1, 0, 1, 1, 17, 1], [-31.0, 1.45, 0.55]),  # mode 0: contrast after
    ([0, 0, 0, 1, 5, 0], []),
    ([0, 1, 1, 0, 0], [0.5]),
])
def test_photometric_matches_mmseg_on_bgr(ints, unis):
    rgb = _ex(32, 48, seed=5)["image"]
    ours = T.photometric_distortion({"image": rgb}, ScriptedRng(integers=ints, uniform=unis))
    ref = _mmseg_photometric_bgr(rgb[:, :, ::-1].copy(), ints, unis)[:, :, ::-1]
    assert ours["image"].dtype == np.uint8
    np.testing.assert_array_equal(ours["image"], ref)


def test_photometric_ranges():
    rgb = _ex(16, 16)["image"]
    rng = ScriptedRng(integers=[1, 1, 1, 1, 1, 3], uniform=[0.0, 1.0, 1.0])
    T.photometric_distortion({"image": rgb}, rng)
    args = [c for c in rng.calls]
    assert ("uniform", (-32, 32)) in args
    assert ("uniform", (0.5, 1.5)) in args
    assert ("integers", (-18, 18)) in args  # numpy high-exclusive: delta in [-18, 17]
    for s in range(20):
        out = T.photometric_distortion({"image": rgb}, np.random.default_rng(s))["image"]
        assert out.dtype == np.uint8 and out.shape == rgb.shape


# --------------------------------------------------------------------------- normalise / pad


def test_normalize_and_pad():
    img = np.array([[[0, 128, 255]]], np.uint8)
    out = T.normalize(img, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    expect = (np.array([0, 128, 255]) - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375]
    np.testing.assert_allclose(out[0, 0], expect, rtol=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_allclose(T.normalize(img, (127.5,) * 3, (127.5,) * 3)[0, 0],
                               [-1, 0.00392157, 1], rtol=1e-5)
    ex = {"image": np.ones((3, 4, 3), np.float32), "label": np.ones((3, 4), np.int32)}
    p = T.pad_to(ex, (5, 6), -1)
    assert p["image"].shape == (5, 6, 3) and p["label"].shape == (5, 6)
    assert (p["image"][3:] == 0).all() and (p["image"][:, 4:] == 0).all()
    assert (p["label"][3:] == -1).all() and (p["label"][:3, :4] == 1).all()


def _jpeg_bgr(h: int = 300, w: int = 400) -> np.ndarray:
    """A real JPEG (smooth colours + texture), encoded and decoded by OpenCV: uint8 BGR."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = np.stack([255 * yy, 255 * xx, 128 + 100 * np.sin(8 * xx + 5 * yy)], -1)
    img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return cv2.imdecode(np.frombuffer(data.tobytes(), np.uint8), cv2.IMREAD_COLOR)


def _mmcv_imnormalize(bgr, mean, std):
    """mmcv/image/photometric.py imnormalize(img, mean, std, to_rgb=True), as mmcv runs it."""
    img = bgr.copy().astype(np.float32)
    mean = np.float64(np.asarray(mean).reshape(1, -1))
    stdinv = 1 / np.float64(np.asarray(std).reshape(1, -1))
    cv2.cvtColor(img, cv2.COLOR_BGR2RGB, img)
    cv2.subtract(img, mean, img)
    cv2.multiply(img, stdinv, img)
    return img


def _numpy_imnormalize(bgr, mean, std):
    """The same in NumPy from OpenCV's arithm_op rules: `array - scalar` in the array's float32
    (a non-integer float64 scalar is converted to float32), `array * scalar` in float64 (a
    float64 scalar makes the work type float64) with one rounding back to float32."""
    img = bgr[..., ::-1].astype(np.float32)
    img = img - np.float64(np.asarray(mean)).astype(np.float32)
    return (img.astype(np.float64) * (1 / np.float64(np.asarray(std)))).astype(np.float32)


@pytest.mark.parametrize("mean,std", [((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
                                      ((127.5,) * 3, (127.5,) * 3)])
def test_normalize_is_mmcv_imnormalize_bit_for_bit(mean, std):
    bgr = _jpeg_bgr()
    want = _mmcv_imnormalize(bgr, mean, std)
    np.testing.assert_array_equal(_numpy_imnormalize(bgr, mean, std), want)
    got = T.normalize(np.ascontiguousarray(bgr[..., ::-1]), mean, std)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    # The test can fail: 1/std rounded to float32 first is 1 ulp off in 20-50% of the values.
    stdinv32 = (1 / np.asarray(std, np.float64)).astype(np.float32)
    two_roundings = (bgr[..., ::-1].astype(np.float32) - np.float32(mean)) * stdinv32
    assert (two_roundings != want).mean() > 0.1


def test_train_and_eval_transform_shapes():
    ex = _ex(30, 40)
    kw = dict(scale=(128, 32), ratio_range=(0.5, 2.0), crop=(48, 48), cat_max_ratio=0.75,
              flip_prob=0.5, photometric=True, mean=(127.5,) * 3, std=(127.5,) * 3,
              ignore_index=255)
    for s in range(10):
        out = T.train_transform(ex, np.random.default_rng(s), **kw)
        assert out["image"].shape == (48, 48, 3) and out["image"].dtype == np.float32
        assert out["label"].shape == (48, 48) and out["label"].dtype == np.int32
        assert out["image"].min() >= -1 and out["image"].max() <= 1
    small = T.train_transform(ex, ScriptedRng(random=[0.0, 0.9], integers=[0, 0] * 11 + [0]),
                              **{**kw, "photometric": False})
    # r = 0.5: scale (64, 16); f = min(64/40, 16/30) -> 16x21 image, padded to 48x48 with ignore
    assert (small["label"][16:] == 255).all() and (small["label"][:, 21:] == 255).all()
    assert (small["label"][:16, :21] != 255).all()
    ev = T.eval_transform(ex, scale=(2048, 512), mean=(0,) * 3, std=(1,) * 3)
    assert ev["image"].shape == (512, 683, 3)
    np.testing.assert_array_equal(ev["label"], ex["label"])
