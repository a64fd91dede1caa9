"""Unit tests of the Mask2Former inference (rankseg_jax/evaluation/mask_former.py) and its COCO
panoptic output format (panoptic_io.py), by definition on hand-made inputs.

The bookkeeping tests use equal mask / padded / image / output sizes, so every resize is the
identity and the expected maps follow by hand from the block masks.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from rankseg_jax import resize
from rankseg_jax.evaluation import mask_former, panoptic_io

K = 5  # classes 0..4, column 5 = no-object
THINGS = (1, 2)
SIZE = (8, 8)
SIZES = (SIZE, SIZE, SIZE)  # image, padded, output: no resizing


def _cls(rows) -> np.ndarray:
    """[(class or K for no-object, logit)] -> mask_cls [Q, K+1] (that column = logit, others 0)."""
    out = np.zeros((len(rows), K + 1), np.float32)
    for q, (c, logit) in enumerate(rows):
        out[q, c] = logit
    return out


def _masks(*regions) -> np.ndarray:
    """One [8, 8] mask per (row slice, col slice): +10 inside, -10 outside."""
    out = np.full((len(regions), *SIZE), -10.0, np.float32)
    for q, (rs, cs) in enumerate(regions):
        out[q, rs, cs] = 10.0
    return out


def _panoptic(mask_cls, masks, sizes=SIZES):
    return mask_former.panoptic_inference(mask_cls, masks, *sizes, object_mask_threshold=0.8,
                                          overlap_threshold=0.8, thing_ids=THINGS)


ALL = slice(None)
LEFT, RIGHT = (ALL, slice(0, 4)), (ALL, slice(4, 8))


def test_no_query_kept_is_all_void():
    # no-object wins, or a class wins with softmax score e^1 / (e^1 + 5) < 0.8
    seg, info = _panoptic(_cls([(K, 10.0), (3, 1.0), (1, 1.5)]), _masks(LEFT, RIGHT, LEFT))
    assert info == []
    assert seg.dtype == np.int32 and seg.shape == SIZE and not seg.any()


def test_all_masks_below_half_give_no_segment():
    masks = np.full((2, *SIZE), -3.0, np.float32)
    seg, info = _panoptic(_cls([(3, 10.0), (1, 10.0)]), masks)
    assert info == [] and not seg.any()


def test_repeated_thing_class_gives_separate_segments():
    seg, info = _panoptic(_cls([(1, 10.0), (1, 10.0)]), _masks(LEFT, RIGHT))
    assert info == [{"id": 1, "isthing": True, "category_id": 1},
                    {"id": 2, "isthing": True, "category_id": 1}]
    want = np.zeros(SIZE, np.int32)
    want[:, :4], want[:, 4:] = 1, 2
    np.testing.assert_array_equal(seg, want)


def test_repeated_stuff_class_is_merged_into_its_first_segment():
    # query order: stuff 3 (top), thing 2 (bottom-left), stuff 3 again (bottom-right)
    top, bl, br = (slice(0, 4), ALL), (slice(4, 8), slice(0, 4)), (slice(4, 8), slice(4, 8))
    seg, info = _panoptic(_cls([(3, 10.0), (2, 10.0), (3, 10.0)]), _masks(top, bl, br))
    assert info == [{"id": 1, "isthing": False, "category_id": 3},
                    {"id": 2, "isthing": True, "category_id": 2}]
    want = np.ones(SIZE, np.int32)
    want[4:, :4] = 2
    np.testing.assert_array_equal(seg, want)


def test_overlap_rejection_and_unkept_queries():
    # q0 (score higher) owns columns 0-3; q1's mask covers columns 0-5, it wins only 4-5:
    # area 16 / original 48 < 0.8 -> rejected, its pixels stay void. q2 is no-object with the
    # largest mask and never takes part; q3 (stuff 4) owns rows 6-7 of columns 6-7.
    rows = [(3, 10.0), (4, 9.0), (K, 20.0), (4, 10.0)]
    masks = _masks(LEFT, (ALL, slice(0, 6)), (ALL, ALL), (slice(6, 8), slice(6, 8)))
    seg, info = _panoptic(_cls(rows), masks)
    assert info == [{"id": 1, "isthing": False, "category_id": 3},
                    {"id": 2, "isthing": False, "category_id": 4}]
    want = np.zeros(SIZE, np.int32)
    want[:, :4], want[6:, 6:] = 1, 2
    np.testing.assert_array_equal(seg, want)
    maps = mask_former.panoptic_maps(_cls(rows), masks, *SIZES, 0.8)
    np.testing.assert_array_equal(maps["keep"], [True, True, False, True])
    np.testing.assert_array_equal(maps["orig_area"], [32, 48, 64, 4])
    np.testing.assert_array_equal(np.asarray(maps["fg_area"])[[0, 1, 3]], [32, 16, 4])


def test_score_threshold_is_strict():
    # official: scores > threshold; a score equal to the threshold is not kept
    mask_cls, masks = _cls([(3, 3.0)]), _masks(LEFT)
    score = float(mask_former.panoptic_maps(mask_cls, masks, *SIZES, 0.5)["scores"][0])
    for threshold, kept in ((score, False), (float(np.nextafter(np.float32(score), 0)), True)):
        maps = mask_former.panoptic_maps(mask_cls, masks, *SIZES, threshold)
        assert bool(maps["keep"][0]) == kept


def test_semantic_inference_by_definition_and_batched():
    rng = np.random.default_rng(0)
    mask_cls = rng.normal(size=(2, 6, K + 1)).astype(np.float32) * 3
    masks = rng.normal(size=(2, 6, *SIZE)).astype(np.float32) * 3
    got = np.asarray(mask_former.semantic_inference(mask_cls, masks, *SIZES))
    p = np.exp(mask_cls.astype(np.float64))
    p /= p.sum(-1, keepdims=True)
    want = np.einsum("bqc,bqhw->bchw", p[..., :K], 1 / (1 + np.exp(-masks.astype(np.float64))))
    assert got.shape == (2, K, *SIZE) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)
    for b in range(2):  # the batch version is the per-image one
        np.testing.assert_array_equal(
            got[b], mask_former.semantic_inference(mask_cls[b], masks[b], *SIZES))


def test_postprocess_masks_equals_resize_crop_resize():
    """The crop folded into the padded resize gives the same logits as resizing to the padded
    size, cropping, then resizing (torch float32 weights in both)."""
    x = np.random.default_rng(1).normal(size=(3, 6, 9)).astype(np.float32) * 5
    image, padded, out = (19, 30), (24, 36), (13, 41)
    m = resize.bilinear_matrix_f32
    full = resize.apply_separable(jnp.asarray(x), m(6, 24), m(9, 36))[:, :19, :30]
    want = resize.apply_separable(full, m(19, 13), m(30, 41))
    got = mask_former.postprocess_masks(x, image, padded, out)
    assert got.shape == (3, *out)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("n_in,n_out", [(56, 70), (96, 80), (160, 640), (513, 1000), (37, 7)])
def test_bilinear_matrix_f32_matches_torch(n_in, n_out):
    """torch computes the bilinear source index in float32 (fused multiply-add); the float32
    matrix reproduces it to rounding, the exact-arithmetic matrix does not."""
    torch = pytest.importorskip("torch")
    x = np.cumsum(np.random.default_rng(2).normal(size=(1, 2, n_in, 3)), axis=2)
    x = x.astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), size=(n_out, 3),
                                           mode="bilinear", align_corners=False).numpy()
    got = np.einsum("oh,bchw->bcow", resize.bilinear_matrix_f32(n_in, n_out), x)
    exact = np.einsum("oh,bchw->bcow", resize.bilinear_matrix(n_in, n_out), x)
    ulp = np.spacing(np.abs(want).max())
    err, err_exact = np.abs(got - want).max(), np.abs(exact - want).max()
    print(f"{n_in}->{n_out}: f32 matrix {err:.2e}, exact matrix {err_exact:.2e}")
    assert err <= 4 * ulp
    assert err <= err_exact


# --------------------------------------------------------------------------------------------------
# COCO panoptic format
# --------------------------------------------------------------------------------------------------
def test_panoptic_png_round_trip_and_json(tmp_path):
    seg = np.zeros((5, 7), np.int32)
    seg[1:3, 2:6] = 1
    seg[3:, :3] = 2
    seg[0, 6] = 70000  # needs all three bytes: 70000 = 112 + 17 * 256 + 1 * 256^2
    info = [{"id": 1, "isthing": True, "category_id": 7},
            {"id": 2, "isthing": False, "category_id": 0},
            {"id": 70000, "isthing": False, "category_id": 3}]
    category_map = {0: 101, 3: 104, 7: 108}
    ann = panoptic_io.write_panoptic_prediction(tmp_path / "pred", "ADE_val_1", "ADE_val_1",
                                                seg, info, category_map)
    assert ann == {"image_id": "ADE_val_1", "file_name": "ADE_val_1.png",
                   "segments_info": [{"id": 1, "category_id": 108},
                                     {"id": 2, "category_id": 101},
                                     {"id": 70000, "category_id": 104}]}
    data = (tmp_path / "pred" / "ADE_val_1.png").read_bytes()
    np.testing.assert_array_equal(panoptic_io.decode_png(data), seg)
    rgb = panoptic_io.id2rgb(seg)
    np.testing.assert_array_equal(rgb[0, 6], [112, 17, 1])
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    ids = r + 256 * g + 65536 * b
    np.testing.assert_array_equal(ids, seg)
    # a sequence works as the map too (index = contiguous id)
    assert panoptic_io.coco_segments(info[:1], list(range(100, 107)) + [555]) == [
        {"id": 1, "category_id": 555}]
    panoptic_io.write_predictions_json(tmp_path / "predictions.json", [ann],
                                       categories=[{"id": 108}])
    loaded = json.loads((tmp_path / "predictions.json").read_text())
    assert loaded["annotations"] == [ann] and loaded["categories"] == [{"id": 108}]
    with pytest.raises(ValueError):
        panoptic_io.id2rgb(np.array([[256**3]]))
