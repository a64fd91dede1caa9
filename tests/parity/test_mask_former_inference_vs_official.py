"""Mask2Former inference (rankseg_jax/evaluation/mask_former.py, mask_former_inputs.py) vs the
official fixtures (tests/fixtures/official_mask2former) and vs the independent float64 NumPy
reference (tests/reference/mask2former_numpy.py) on random inputs the fixtures do not cover.

Fixtures: the recorded class logits handed to the official inference (`eval.npz
{run}.mask_cls.img{b}`: raw, RankSeg-scattered or GT-masked) and the final mask logits
(`forward.npz {w}.dec.pred4.mask_logits`), sizes from `inputs.npz` (both images ran in one
64x96 padded batch; image 1 is 56x80 inside it and is upscaled to 70x100). sem_seg within
1e-4 (the pan_* runs give the sem_* sem_seg), panoptic maps and segments exactly, except that
pixels whose top-1/top-2 panoptic probability gap is below 1e-5 may flip (the fixture records
2 such pixels in pan_rankseg img0). Run with -s to see the measured differences.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import numpy as np
import pytest

from rankseg_jax.evaluation import mask_former, mask_former_inputs
from tests.reference import mask2former_numpy as M

FIX = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "official_mask2former"
THING_IDS = (7, 8, 10)  # ADE20K panoptic things among classes 0..11: bed, windowpane, cabinet
RUNS = ("sem_plain", "sem_rankseg", "sem_gt", "pan_plain", "pan_rankseg", "pan_gt")
SEM_ATOL = 1e-4
THRESHOLD = 0.8  # OBJECT_MASK_THRESHOLD and OVERLAP_THRESHOLD of the official configs
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


@functools.cache
def _npz(name: str) -> dict:
    with np.load(FIX / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def _segments(info: list) -> np.ndarray:
    return np.asarray([[s["id"], s["category_id"], int(s["isthing"])] for s in info],
                      np.int64).reshape(-1, 3)


def _check_panoptic(name, seg, info, want_seg, want_info, gap, gap_tol, max_flips):
    """Segments exactly; map pixels may differ only where the reference's top-1/top-2 gap of
    the panoptic probability is below gap_tol (at most max_flips of them)."""
    want_info = np.asarray(want_info).reshape(-1, 3)
    np.testing.assert_array_equal(_segments(info), want_info, err_msg=name)
    assert seg.dtype == np.int32 and seg.shape == want_seg.shape
    diff = seg != want_seg
    n = int(diff.sum())
    print(f"{name}: {len(info)} segments, {n} panoptic pixel mismatches")
    if n:
        assert gap is not None and (gap[diff] < gap_tol).all(), name
    assert n <= max_flips, f"{name}: {n} panoptic pixels differ"


def _fixture_args(run: str, b: int):
    w = "rankseg" if run.endswith("rankseg") else "plain"
    inputs = _npz("inputs")
    mask_logits = _npz("forward")[f"{w}.dec.pred4.mask_logits"][b]
    return (_npz("eval")[f"{run}.mask_cls.img{b}"], mask_logits, tuple(inputs["image_sizes"][b]),
            inputs["images_normalized_padded"].shape[2:], tuple(inputs["out_sizes"][b]))


@pytest.mark.parametrize("run", RUNS)
def test_inference_from_official_logits(run):
    for b in range(2):
        args = _fixture_args(run, b)
        sem = np.asarray(mask_former.semantic_inference(*args))
        want = _npz("eval")[f"sem_{run.split('_')[1]}.sem_seg.img{b}"]
        assert sem.shape == want.shape and sem.dtype == np.float32
        err = float(np.abs(sem - want).max())
        print(f"{run}.img{b}: sem_seg max|diff| {err:.2e}")
        assert err <= SEM_ATOL
        if run.startswith("pan"):
            seg, info = mask_former.panoptic_inference(
                *args, object_mask_threshold=THRESHOLD, overlap_threshold=THRESHOLD,
                thing_ids=THING_IDS)
            gap = M.panoptic_inference(*args, THING_IDS)["argmax_gap"]
            _check_panoptic(f"{run}.img{b}", seg, info, _npz("eval")[f"{run}.panoptic_seg.img{b}"],
                            _npz("eval")[f"{run}.segments.img{b}"], gap, 1e-5, 2)


def test_normalize_and_pad_matches_official_model_input():
    """The fixture images are the mapper output; the model normalises them in float32 and
    zero-pads to multiples of 32 (both become 64x96): bit-exact."""
    inputs = _npz("inputs")
    for b in range(2):
        img = np.ascontiguousarray(inputs[f"image.img{b}"].transpose(1, 2, 0))
        x, padded = mask_former_inputs.normalize_and_pad(img, MEAN, STD, 32)
        assert padded == (64, 96)
        np.testing.assert_array_equal(x.transpose(2, 0, 1), inputs["images_normalized_padded"][b])


# --------------------------------------------------------------------------------------------------
# vs the NumPy reference on random inputs
# --------------------------------------------------------------------------------------------------
def _random_case(seed: int, num_queries: int, num_classes: int, mask_hw, image, padded, out):
    """Blob-shaped mask logits and mostly confident class logits over few classes, so that
    stuff classes repeat (merges), blobs overlap (rejections) and thing classes repeat."""
    rng = np.random.default_rng(seed)
    h, w = mask_hw
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    masks = np.empty((num_queries, h, w), np.float32)
    for q in range(num_queries):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.05, 0.25) * h, rng.uniform(0.05, 0.25) * w
        d2 = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        masks[q] = rng.uniform(3, 8) * (1 - d2) + rng.normal(0, 0.3, (h, w))
    mask_cls = rng.normal(0, 1.0, (num_queries, num_classes + 1)).astype(np.float32)
    labels = rng.integers(0, num_classes + 1, num_queries)  # num_classes = no-object
    confident = rng.random(num_queries) < 0.7
    mask_cls[np.arange(num_queries), labels] += np.where(confident, 9.0, 1.0)
    return mask_cls, masks, image, padded, out


CASES = {  # Q, K, mask size, image, padded, output
    "downscale": (0, 25, 6, (12, 20), (45, 70), (48, 80), (30, 50)),
    "upscale": (1, 40, 8, (10, 14), (33, 56), (40, 56), (77, 101)),
    "identity": (2, 16, 5, (8, 8), (32, 32), (32, 32), (32, 32)),
    "many_queries": (3, 60, 4, (16, 16), (64, 50), (64, 64), (41, 33)),
}
THINGS_RANDOM = (1, 2)


def _branch_counts(args) -> tuple[int, int, int]:
    """(stuff merges, overlap rejections, repeated thing-class segments) of one case."""
    maps = jax.device_get(mask_former.panoptic_maps(*args, THRESHOLD))
    keep, area, orig, fg = maps["keep"], maps["area"], maps["orig_area"], maps["fg_area"]
    lut, info = mask_former.panoptic_segments(keep, maps["labels"], area, orig, fg,
                                              THINGS_RANDOM, THRESHOLD)
    valid = keep & (area > 0) & (orig > 0) & (fg > 0)
    rejected = int((valid & (area < THRESHOLD * np.maximum(orig, 1))).sum())
    merged = int((lut > 0).sum()) - len(info)  # queries mapped onto an earlier segment
    things = [s["category_id"] for s in info if s["isthing"]]
    return merged, rejected, len(things) - len(set(things))


@pytest.mark.parametrize("case", sorted(CASES))
def test_inference_vs_numpy_reference(case):
    seed, *rest = CASES[case]
    args = _random_case(seed, *rest)
    sem = np.asarray(mask_former.semantic_inference(*args))
    want = M.semantic_inference(*args)
    err = float(np.abs(sem - want).max())
    print(f"{case}: sem_seg max|diff| {err:.2e}")
    assert err <= SEM_ATOL

    seg, info = mask_former.panoptic_inference(
        *args, object_mask_threshold=THRESHOLD, overlap_threshold=THRESHOLD,
        thing_ids=THINGS_RANDOM)
    ref = M.panoptic_inference(*args, THINGS_RANDOM, THRESHOLD, THRESHOLD)
    assert info == ref["segments_info"]
    # float32 vs float64: only pixels with a near-tied argmax may flip
    _check_panoptic(case, seg, info, ref["panoptic_seg"], ref["segments"], ref["argmax_gap"],
                    1e-4, 3)
    print(f"{case}: (merged, rejected, repeated things) = {_branch_counts(args)}")


def test_random_cases_cover_merges_rejections_and_repeated_things():
    counts = {case: _branch_counts(_random_case(*CASES[case])) for case in CASES}
    merged, rejected, repeated = (sum(v[i] for v in counts.values()) for i in range(3))
    assert merged >= 4 and rejected >= 4 and repeated >= 4, counts
