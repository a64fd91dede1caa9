"""Mask2Former's training mappers against an independent implementation of the official
detectron2 steps (PIL / torch F.interpolate / cv2 on BGR / torch F.pad, written here from
`MaskFormer{Semantic,Panoptic}DatasetMapper` and detectron2's transforms), driven by the same
random decisions; plus the pipeline (batches, targets, bad-example policy, resume)."""

import random

import numpy as np
import pytest
from PIL import Image

from configs import ade20k_mask2former, ade20k_panoptic
from rankseg_jax.data import mask_former_mappers as M
from rankseg_jax.data import pipeline
from rankseg_jax.data.panoptic import id2rgb, rgb2id
from rankseg_jax.data.sources import BadExampleError
from rankseg_jax.data.synthetic_panoptic import SyntheticPanopticSource

torch = pytest.importorskip("torch")
F = torch.nn.functional

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


class ScriptedRng:
    """Stands in for np.random.Generator: returns scripted values, records the calls."""

    def __init__(self, choice=(), integers=(), uniform=(), random=()):
        self._q = {"choice": list(choice), "integers": list(integers),
                   "uniform": list(uniform), "random": list(random)}
        self.calls = []

    def _next(self, kind, args):
        self.calls.append((kind, args))
        return self._q[kind].pop(0)

    def choice(self, *args):
        return self._next("choice", args)

    def integers(self, *args):
        return self._next("integers", args)

    def uniform(self, *args):
        return self._next("uniform", args)

    def random(self):
        return self._next("random", ())

    def exhausted(self):
        return not any(self._q.values())


# --------------------------------------------------------------------------- the reference


def ref_output_shape(oldh, oldw, short, max_size):
    # detectron2 ResizeShortestEdge.get_output_shape, verbatim logic.
    h, w = oldh, oldw
    size = short * 1.0
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def ref_resize(img, newh, neww, interp):
    # detectron2 ResizeTransform.apply_image: PIL for uint8, else torch F.interpolate.
    if img.dtype == np.uint8:
        return np.asarray(Image.fromarray(img).resize((neww, newh), interp))
    t = torch.from_numpy(np.ascontiguousarray(img))
    shape = list(t.shape)
    shape_4d = shape[:2] + [1] * (4 - len(shape)) + shape[2:]
    t = t.view(shape_4d).permute(2, 3, 0, 1)
    t = F.interpolate(t, (newh, neww), mode="nearest")
    shape[:2] = (newh, neww)
    return t.permute(2, 3, 0, 1).view(shape).numpy()


class RefColorAug:
    """ColorAugSSDTransform(img_format='RGB') with Python `random` replaced by a script."""

    def __init__(self, script):
        self.script = list(script)

    def randrange(self, n):
        return self.script.pop(0)

    uniform = randint = lambda self, a, b: self.script.pop(0)

    def convert(self, img, alpha=1, beta=0):
        img = img.astype(np.float32) * alpha + beta
        img = np.clip(img, 0, 255)
        return img.astype(np.uint8)

    def __call__(self, img):
        img = img[:, :, [2, 1, 0]]
        if self.randrange(2):
            img = self.convert(img, beta=self.uniform(-32, 32))
        if self.randrange(2):
            img = self.hue(self.saturation(self.contrast(img)))
        else:
            img = self.contrast(self.hue(self.saturation(img)))
        return img[:, :, [2, 1, 0]]

    def contrast(self, img):
        if self.randrange(2):
            return self.convert(img, alpha=self.uniform(0.5, 1.5))
        return img

    def saturation(self, img):
        import cv2
        if self.randrange(2):
            img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            img[:, :, 1] = self.convert(img[:, :, 1], alpha=self.uniform(0.5, 1.5))
            return cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
        return img

    def hue(self, img):
        import cv2
        if self.randrange(2):
            img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            img[:, :, 0] = (img[:, :, 0].astype(int) + self.randint(-18, 18)) % 180
            return cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
        return img


def ref_mapper(ex, *, short, y0, x0, color, flip, crop, panoptic, max_size=2560):
    """The official mapper with given decisions (color: the ColorAugSSD script or None)."""
    image, sem = ex["image"], ex["label"].astype("double")
    pan = id2rgb(ex["panoptic"]) if panoptic else None
    newh, neww = ref_output_shape(*sem.shape, short, max_size)
    image = ref_resize(image, newh, neww, Image.BILINEAR)
    sem = ref_resize(sem, newh, neww, Image.NEAREST)
    if panoptic:
        pan = ref_resize(pan, newh, neww, Image.NEAREST)
    ch, cw = min(crop[0], newh), min(crop[1], neww)
    image, sem = image[y0:y0 + ch, x0:x0 + cw], sem[y0:y0 + ch, x0:x0 + cw]
    if panoptic:
        pan = pan[y0:y0 + ch, x0:x0 + cw]
    if color is not None:
        image = RefColorAug(color)(image)
    if flip:
        image, sem = np.flip(image, axis=1), np.flip(sem, axis=1)
        pan = np.flip(pan, axis=1) if panoptic else None
    image = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
    sem = torch.as_tensor(sem.astype("long"))
    pad = [0, crop[1] - image.shape[-1], 0, crop[0] - image.shape[-2]]
    image = F.pad(image, pad, value=128).contiguous()
    sem = F.pad(sem, pad, value=255).contiguous()
    out = {"label": sem.numpy()}
    if panoptic:
        pan = F.pad(torch.from_numpy(rgb2id(pan)), pad, value=0).numpy()
        segs = [s for s in ex["segments_info"] if not s["iscrowd"]]
        out["classes"] = np.array([s["category_id"] for s in segs], np.int64)
        out["masks"] = np.stack([pan == s["id"] for s in segs]) if segs else None
    else:
        classes = np.unique(out["label"])
        out["classes"] = classes[classes != 255]
        out["masks"] = np.stack([out["label"] == c for c in out["classes"]])
    x = image.permute(1, 2, 0).float()  # the model's normalisation
    out["image"] = ((x - torch.tensor(MEAN)) / torch.tensor(STD)).numpy()
    return out


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize("hw,short,max_size", [
    ((512, 683), 640, 2560), ((683, 512), 320, 2560), ((100, 1000), 640, 2560),
    ((375, 500), 1280, 1333), ((333, 500), 704, 2560), ((640, 640), 640, 2560)])
def test_shortest_edge_shape(hw, short, max_size):
    assert M.shortest_edge_shape(*hw, short, max_size) == ref_output_shape(*hw, short, max_size)


def test_label_resize_is_torch_nearest_on_float64():
    rng = np.random.default_rng(0)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(2, 400, 2))
        nh, nw = (int(v) for v in rng.integers(2, 900, 2))
        label = rng.integers(0, 256, (h, w)).astype(np.int32)
        np.testing.assert_array_equal(M.torch_nearest_resize(label, (nh, nw)),
                                      ref_resize(label.astype("double"), nh, nw, Image.NEAREST))


@pytest.mark.parametrize("script", [
    [1, 20.5, 1, 1, 1.3, 1, 0.7, 1, -18], [1, -31.0, 0, 1, 1.4, 1, 17, 1, 0.6],
    [0, 0, 0, 0, 0], [0, 1, 1, 0.5, 0, 1, 18]])
def test_color_aug_ssd_is_the_official_transform(script):
    image = np.random.default_rng(1).integers(0, 256, (23, 31, 3)).astype(np.uint8)
    ints = [v for v in script if isinstance(v, int)]
    unis = [v for v in script if isinstance(v, float)]
    # Our hue draw is integers(-18, 19) (numpy's exclusive end) for randint(-18, 18).
    rng = ScriptedRng(integers=ints, uniform=unis)
    np.testing.assert_array_equal(M.color_aug_ssd(image, rng), RefColorAug(script)(image))
    assert rng.exhausted()
    assert all(args in ((2,), (-18, 19)) for kind, args in rng.calls if kind == "integers")


def test_crop_with_category_area_constraint():
    label = np.zeros((40, 60), np.int32)
    label[:, 30:] = 1  # boxes at x0 >= 30 are one class
    ex = {"image": np.zeros((40, 60, 3), np.uint8), "label": label}
    # max area 1.0: one plain RandomCrop draw (y then x).
    rng = ScriptedRng(integers=[3, 40])
    out = M.random_crop(ex, rng, (20, 20))
    assert out["label"].shape == (20, 20) and rng.calls == [("integers", (21,)),
                                                           ("integers", (41,))]
    # max area 0.75: single-class boxes are redrawn; the first mixed one is kept.
    rng = ScriptedRng(integers=[0, 40, 0, 35, 5, 20])
    out = M.random_crop(ex, rng, (20, 20), single_category_max_area=0.75)
    np.testing.assert_array_equal(out["label"], label[5:25, 20:40])
    # ten failures: the last box is used (not an eleventh, unchecked one as in mmseg).
    rng = ScriptedRng(integers=[0, 40] * 9 + [7, 33])
    out = M.random_crop(ex, rng, (20, 20), single_category_max_area=0.75)
    assert rng.exhausted() and (out["label"] == 1).all()
    # a smaller image is cropped to its own size.
    small = {"image": np.zeros((10, 60, 3), np.uint8), "label": label[:10]}
    assert M.random_crop(small, ScriptedRng(integers=[0, 5]), (20, 20))["label"].shape == (
        10, 20)


# --------------------------------------------------------------------------- whole mappers


def _semantic_example(h=45, w=70, seed=0):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 6, (h // 5, w // 5)).repeat(5, 0).repeat(5, 1).astype(np.int32)
    label[:5] = 255
    return {"image": rng.integers(0, 256, (h, w, 3)).astype(np.uint8), "label": label,
            "name": "x"}


KW = dict(max_size=2560, single_category_max_area=1.0, mean=MEAN, std=STD, ignore_index=255,
          num_classes=12, max_targets=10)


@pytest.mark.parametrize("short,flip,color", [
    (64, True, [1, 20.5, 1, 1, 1.3, 1, 0.7, 1, -18]), (32, False, None),
    (48, True, [0, 0, 0, 0, 1, 1.2])])
def test_semantic_mapper_equals_official(short, flip, color):
    ex = _semantic_example()
    crop = (40, 48)
    newh, neww = ref_output_shape(45, 70, short, 2560)
    y0, x0 = max(newh - crop[0], 0) // 2, max(neww - crop[1], 0) // 3
    ints = [y0, x0] + [v for v in (color or []) if isinstance(v, int)]
    unis = [v for v in (color or []) if isinstance(v, float)]
    rng = ScriptedRng(choice=[short], integers=ints, uniform=unis,
                      random=[0.2 if flip else 0.7])
    ours = M.train_mapper(ex, rng, panoptic=False, min_sizes=(short,), crop=crop,
                          color_aug=color is not None, flip_prob=0.5, **KW)
    assert rng.exhausted()
    want = ref_mapper(ex, short=short, y0=y0, x0=x0, color=color, flip=flip, crop=crop,
                      panoptic=False)
    np.testing.assert_array_equal(ours["image"], want["image"])
    np.testing.assert_array_equal(ours["label"], want["label"])
    n = len(want["classes"])
    assert ours["target_valid"].tolist() == [True] * n + [False] * (10 - n)
    np.testing.assert_array_equal(ours["target_classes"][:n], want["classes"])
    np.testing.assert_array_equal(ours["target_masks"][:n], want["masks"])
    assert (ours["target_classes"][n:] == -1).all() and not ours["target_masks"][n:].any()
    if short == 32:  # 32 x 50 crop padded to 40 x 48: image 128 (raw), label 255, no mask
        assert (ours["label"][32:] == 255).all() and not ours["target_masks"][:, 32:].any()
        np.testing.assert_allclose(ours["image"][39, 0], (128 - np.array(MEAN)) / STD,
                                   rtol=1e-6)


@pytest.mark.parametrize("index,short,flip", [(0, 80, True), (3, 48, False), (5, 64, True)])
def test_panoptic_mapper_equals_official(index, short, flip):
    src = SyntheticPanopticSource(8, image_size=(60, 76), num_things=5, num_stuff=7,
                                  crowd_prob=0.5, seed=2)
    ex = src[index]
    crop = (48, 56)
    newh, neww = ref_output_shape(60, 76, short, 2560)
    y0, x0 = max(newh - crop[0], 0), max(neww - crop[1], 0) // 2
    rng = ScriptedRng(choice=[short], integers=[y0, x0], random=[0.1 if flip else 0.9])
    ours = M.train_mapper(ex, rng, panoptic=True, min_sizes=(short,), crop=crop,
                          color_aug=False, flip_prob=0.5, **{**KW, "max_targets": 12})
    want = ref_mapper(ex, short=short, y0=y0, x0=x0, color=None, flip=flip, crop=crop,
                      panoptic=True)
    np.testing.assert_array_equal(ours["image"], want["image"])
    np.testing.assert_array_equal(ours["label"], want["label"])
    n = len(want["classes"])
    assert ours["target_valid"].tolist() == [True] * n + [False] * (12 - n)
    np.testing.assert_array_equal(ours["target_classes"][:n], want["classes"])
    np.testing.assert_array_equal(ours["target_masks"][:n], want["masks"])


def test_panoptic_keeps_empty_targets_and_drops_crowds():
    src = SyntheticPanopticSource(40, image_size=(60, 76), num_things=5, num_stuff=7,
                                  crowd_prob=1.0, seed=4)
    ex = next(e for e in (src[i] for i in range(40)) if any(s["iscrowd"]
                                                             for s in e["segments_info"]))
    # A tiny crop: some segments lose every pixel but stay targets (official).
    rng = ScriptedRng(choice=[60], integers=[0, 0], random=[0.9])
    out = M.train_mapper(ex, rng, panoptic=True, min_sizes=(60,), crop=(8, 8),
                         color_aug=False, flip_prob=0.5, **{**KW, "max_targets": 12})
    kept = [s for s in ex["segments_info"] if not s["iscrowd"]]
    assert out["target_valid"].sum() == len(kept)
    assert out["target_classes"][:len(kept)].tolist() == [s["category_id"] for s in kept]
    assert not out["target_masks"][:len(kept)].any(axis=(1, 2)).all()


# --------------------------------------------------------------------------- pipeline


def _config(panoptic=True, **changes):
    c = (ade20k_panoptic if panoptic else ade20k_mask2former).get_config("smoke")
    c.data.synthetic.num_train = 16
    c.data.read_threads = 1
    c.train.batch_size = 4
    for key, value in changes.items():
        *parents, leaf = key.split("__")
        node = c
        for part in parents:
            node = node[part]
        node[leaf] = value
    return c


@pytest.mark.parametrize("panoptic", [True, False])
def test_batches_and_resume(panoptic):
    c = _config(panoptic)
    it = pipeline.make_train_iterator(c, process_index=0, process_count=1)
    first = next(it)
    assert first["image"].shape == (4, 64, 64, 3) and first["image"].dtype == np.float32
    assert first["label"].shape == (4, 64, 64) and first["label"].dtype == np.int32
    assert first["target_classes"].shape == (4, 10) and first["target_valid"].dtype == bool
    assert first["target_masks"].shape == (4, 10, 64, 64) and first["target_masks"].dtype == bool
    valid = first["target_valid"]
    cls = first["target_classes"]
    assert (cls[valid] >= 0).all() and (cls[~valid] == -1).all()
    if not panoptic:  # semantic targets = the classes of the label, one mask each
        for b in range(4):
            cls = first["target_classes"][b][valid[b]]
            want = np.unique(first["label"][b])
            np.testing.assert_array_equal(cls, want[want != 255])
            for t, k in enumerate(cls):
                np.testing.assert_array_equal(first["target_masks"][b, t],
                                              first["label"][b] == k)
    state = it.get_state()
    nxt = next(it)
    again = pipeline.make_train_iterator(c, process_index=0, process_count=1)
    again.set_state(state)
    for k, v in next(again).items():
        np.testing.assert_array_equal(v, nxt[k], err_msg=k)


def test_too_many_targets_fail_or_skip():
    c = _config(True, data__max_targets=4)
    with pytest.raises(BadExampleError, match="targets but data.max_targets=4"):
        next(pipeline.make_train_iterator(c, process_index=0, process_count=1))
    c.data.bad_example_policy = "skip"
    counter = pipeline.BadExampleCounter()
    batch = next(pipeline.make_train_iterator(c, process_index=0, process_count=1,
                                              counter=counter))
    assert counter.count > 0 and batch["target_valid"].sum(1).max() <= 4


def test_rng_stream_is_seeded_per_example():
    random.seed(0)  # the official ColorAugSSD's global stream plays no part here
    c = _config(True)
    a = next(pipeline.make_train_iterator(c, process_index=0, process_count=1))
    b = next(pipeline.make_train_iterator(c, process_index=0, process_count=1))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
