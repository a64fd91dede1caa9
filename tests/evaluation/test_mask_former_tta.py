"""Mask2Former's multi-scale + flip test-time augmentation (`test.aug_min_sizes`, the official
`SemanticSegmentorWithTTA` with detectron2's `DatasetMapperTTA`): the views (sizes, order,
pixels) against detectron2's rules computed here with Pillow directly, the averaged `sem_seg`
against a composition of the unbucketed reference functions of `mask_former.py` run on the
model's own outputs, and the config rules around it.

Model: the official tiny semantic fixture (`sem_rankseg`, K = 12), converted from its `.pth`.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from helpers import M2F_FIXTURES, mask2former_fixture_config
from PIL import Image

import rankseg_jax
from rankseg_jax.config import ConfigError, validate
from rankseg_jax.evaluation import mask_former, mask_former_evaluate
from rankseg_jax.evaluation import mask_former_engine as E

pytest.importorskip("torch")  # the fixture weights are torch files
JIT_OPTS = {"xla_backend_optimization_level": 0}  # faster XLA:CPU compiles (tests only)
AUG = (32, 48, 80)  # short sides of the views (the fixture config tests at short side 64)
AUG_MAX = 120


def _config(run: str = "sem_rankseg", **test):
    c = mask2former_fixture_config(run)
    c.test.max_images = 0
    c.test.update(test)
    return c


@functools.cache
def _engine(flip: bool = True) -> tuple:
    c = _config(aug_min_sizes=AUG, aug_max_size=AUG_MAX, flip=flip)
    validate(c, num_devices=1, process_count=1, check_files=False)
    _, model = rankseg_jax.load_model(M2F_FIXTURES / "rankseg.pth", c)
    return c, model, E.MaskFormerInferencer(c, model, compiler_options=JIT_OPTS)


def _image(h: int = 50, w: int = 70, seed: int = 0) -> np.ndarray:
    """A smooth random uint8 RGB image (blobs, so that resizing changes little locally)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 5 + 1, w // 5 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))


def _d2_short_edge(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2 ResizeShortestEdge.get_output_shape, written out again for the test."""
    scale = short / min(h, w)
    nh, nw = (short, scale * w) if h < w else (scale * h, short)
    if max(nh, nw) > max_size:
        s = max_size / max(nh, nw)
        nh, nw = nh * s, nw * s
    return int(nh + 0.5), int(nw + 0.5)


def _pil(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize(hw[::-1], Image.Resampling.BILINEAR))


def test_views_follow_detectron2_dataset_mapper_tta():
    """Order (size, unflipped / flipped), the re-resize of the already resized test image,
    the flip, normalisation and padding, and the original output size."""
    c, _, eng = _engine()
    image = _image()
    views = eng.tta_views(image)
    assert [f for _, f in views] == [False, True] * len(AUG)
    base_hw = _d2_short_edge(50, 70, min(c.data.test_scale), max(c.data.test_scale))
    assert base_hw == (64, 90)
    base = _pil(image, base_hw)
    mean, std = np.float32(c.data.mean), np.float32(c.data.std)
    for i, short in enumerate(AUG):
        hw = _d2_short_edge(*base_hw, short, AUG_MAX)
        want = (_pil(base, hw).astype(np.float32) - mean) / std
        for flipped in (False, True):
            prep, _ = views[2 * i + flipped]
            assert prep.image_size == hw and prep.output_size == (50, 70)
            assert prep.padded_size == tuple(-(-v // 32) * 32 for v in hw)
            assert prep.image.shape == (*prep.padded_size, 3)
            np.testing.assert_array_equal(prep.image[:hw[0], :hw[1]],
                                          want[:, ::-1] if flipped else want)
            assert not prep.image[hw[0]:].any() and not prep.image[:, hw[1]:].any()
    # 80 -> 80 x 112.5 -> 113 (half up) under the cap of 120.
    assert [v[0].image_size for v in views[::2]] == [(32, 45), (48, 68), (80, 113)]
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\] image, got float32"):
        eng.tta_views(image.astype(np.float32))


def test_tta_prediction_is_the_average_of_the_views_like_the_official_wrapper():
    """engine.predict under TTA = argmax of (sum over views in order of sem_seg at the original
    size, flipped views flipped back) / number of views, with `sem_seg` from the model's
    outputs through `mask_former.semantic_inference` (the unbucketed official resize chain).
    The forward is the engine's compiled one (its parity with the official model is tested in
    test_mask_former_evaluate.py); what is checked here is everything after it."""
    _, _, eng = _engine()
    image = _image(seed=1)
    res = eng.predict(image)
    assert res.panoptic is None and res.topk is None and res.image_logits is None
    maps, total = [], None
    for prep, flipped in eng.tta_views(image):
        mask_cls, mask_logits, _, _ = eng._forward(prep, None)
        sem = np.asarray(mask_former.semantic_inference(
            mask_cls, mask_logits, prep.image_size, prep.padded_size, prep.output_size))
        maps.append(sem)
        sem = sem[:, :, ::-1] if flipped else sem
        total = sem.copy() if total is None else total + sem
    total /= np.float32(len(maps))
    top2 = np.sort(total, axis=0)[-2:]
    sure = top2[1] - top2[0] > 1e-4
    assert res.sem.shape == (50, 70) and res.sem.dtype == np.int32
    assert sure.mean() > 0.9
    np.testing.assert_array_equal(res.sem[sure], total.argmax(0)[sure])
    # The comparison can tell: skipping the flip-back, or taking one view, changes the answer.
    unflipped = sum(maps) / np.float32(len(maps))
    assert (unflipped.argmax(0) != total.argmax(0))[sure].any()
    assert (maps[2].argmax(0) != total.argmax(0))[sure].any()


def test_tta_without_flip_uses_one_view_per_size():
    _, _, eng = _engine(flip=False)
    views = eng.tta_views(_image())
    assert [f for _, f in views] == [False] * len(AUG)
    assert eng.predict(_image()).sem.shape == (50, 70)


def test_evaluate_under_tta_reports_no_ranking_metrics(monkeypatch, tmp_path):
    """The evaluation loop predicts through the TTA; RankSeg's multi-label metrics are not
    reported (the official TTA wrapper returns `sem_seg` only) and the report records the
    augmentation."""
    from rankseg_jax.data.synthetic import SyntheticSource

    c, model, eng = _engine()
    monkeypatch.setattr(mask_former_evaluate, "MaskFormerInferencer",
                        lambda config, model, thing_ids=(): eng)
    source = SyntheticSource(c.model.num_classes, 2, image_size=(50, 70), split="val")
    out = mask_former_evaluate.evaluate(c, model, str(tmp_path), source=source)
    assert out["num_images"] == 2 and np.isfinite(out["mIoU"])
    assert not {"img_AP", "img_recall", "pixel_recall"} & set(out)
    import json

    record = json.loads((tmp_path / "eval_val.json").read_text())
    test = record["extra"]["test"]
    assert test["aug_min_sizes"] == list(AUG) and test["flip"] is True


def test_predict_under_tta_writes_the_tta_labels(monkeypatch, tmp_path):
    """predict goes through the TTA too: its label PNG is the TTA argmax; no ranking chart."""
    from rankseg_jax.evaluation import mask_former_predict

    c, model, eng = _engine()
    monkeypatch.setattr(mask_former_predict, "MaskFormerInferencer",
                        lambda config, model, thing_ids=(): eng)
    src = tmp_path / "in"
    src.mkdir()
    image = _image(seed=2)
    Image.fromarray(image).save(src / "a.png")
    mask_former_predict.predict(c, model, src, tmp_path / "out")
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"a_labels.png", "a_panel.png"} <= names and "a_scores.png" not in names
    labels = np.asarray(Image.open(tmp_path / "out" / "a_labels.png"))
    np.testing.assert_array_equal(labels, eng.predict(image).sem)


# ------------------------------------------------------------------ config


def _invalid(c, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        validate(c, num_devices=1, process_count=1, check_files=False)


def test_tta_options_validated():
    _invalid(_config(flip=True), "test.flip=True: Mask2Former flips only inside")
    _invalid(_config("pan_plain", aug_min_sizes=(320,)), "semantic only")
    _invalid(_config(aug_min_sizes=(320, 0)), r"test.aug_min_sizes=\(320, 0\) must be positive")
    _invalid(_config(aug_min_sizes=(320.5,)), "must be positive integers")
    _invalid(_config(aug_min_sizes=(320,), aug_max_size=0), "test.aug_max_size=0")
    from configs import ade20k

    seg = ade20k.get_config("smoke")
    seg.test.aug_min_sizes = (320,)
    _invalid(seg, "is Mask2Former's test-time augmentation; model.arch='segmenter'")


def test_tta_variant_sets_the_official_test_aug():
    from configs import ade20k_mask2former

    c = ade20k_mask2former.get_config("rankseg,tta")
    assert tuple(c.test.aug_min_sizes) == (320, 480, 640, 800, 960, 1120)
    assert c.test.aug_max_size == 4480 and c.test.flip
    assert ade20k_mask2former.get_config("rankseg").test.aug_min_sizes == ()
    smoke = ade20k_mask2former.get_config("tta,smoke")  # shrunk with the test scale
    assert tuple(smoke.test.aug_min_sizes) == (32, 48, 64, 80, 96, 112)
    assert smoke.test.aug_max_size == 448 and smoke.test.flip
    validate(smoke, num_devices=1, process_count=1, check_files=False)
