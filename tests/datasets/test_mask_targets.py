"""Mask-classification targets against the official mappers' targets (`inputs.npz`:
`targets.{sem,pan}.img{b}` built by MaskFormer{Semantic,Panoptic}DatasetMapper from
`sem_map` / `pan_map`), plus crowd, empty-mask, padding, jit/vmap and the RankSeg multi-hot."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankseg_jax.data import mask_targets as mt

FIX = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "official_mask2former"
K = 12
# The fixtures' segments_info (README, `inputs.npz`): segment id -> class, in segment order.
SEGMENTS = {0: {1: 0, 2: 3, 3: 7, 4: 7, 5: 10, 6: 5}, 1: {1: 1, 2: 2, 3: 8, 4: 8, 5: 7, 6: 9}}


@pytest.fixture(scope="module")
def inputs():
    return np.load(FIX / "inputs.npz")


def segments(b, crowd=()):
    return [{"id": i, "category_id": c, "iscrowd": int(i in crowd)}
            for i, c in SEGMENTS[b].items()]


@pytest.mark.parametrize("b", [0, 1])
def test_semantic_targets_equal_the_official_mapper(inputs, b):
    label = jnp.asarray(inputs[f"sem_map.img{b}"])
    cls, masks, valid, n = jax.jit(mt.semantic_targets, static_argnums=(1, 2))(label, K, 8)
    want_cls, want_masks = inputs[f"targets.sem.img{b}.labels"], inputs[f"targets.sem.img{b}.masks"]
    t = len(want_cls)
    assert int(n) == t and np.asarray(valid).tolist() == [True] * t + [False] * (8 - t)
    np.testing.assert_array_equal(np.asarray(cls)[:t], want_cls)
    np.testing.assert_array_equal(np.asarray(masks)[:t], want_masks)
    assert (np.asarray(cls)[t:] == -1).all() and not np.asarray(masks)[t:].any()


@pytest.mark.parametrize("b", [0, 1])
def test_panoptic_targets_equal_the_official_mapper(inputs, b):
    table = mt.segments_table(segments(b), 9)
    fn = jax.jit(mt.panoptic_targets, static_argnames="keep_empty")
    cls, masks, valid = fn(jnp.asarray(inputs[f"pan_map.img{b}"]), **table)
    want_cls, want_masks = inputs[f"targets.pan.img{b}.labels"], inputs[f"targets.pan.img{b}.masks"]
    t = len(want_cls)
    assert np.asarray(valid).tolist() == [True] * t + [False] * (9 - t)
    np.testing.assert_array_equal(np.asarray(cls)[:t], want_cls)
    np.testing.assert_array_equal(np.asarray(masks)[:t], want_masks)
    # RankSeg multi-hot = unique(gt_classes): repeated thing classes count once.
    hot = np.asarray(mt.target_multi_hot(cls, valid, K))
    np.testing.assert_array_equal(np.flatnonzero(hot), np.unique(want_cls))


def test_crowd_and_empty_segments(inputs):
    pan = inputs["pan_map.img0"].copy()
    pan[pan == 5] = 0  # segment 5 (class 10) cropped away: officially still a target
    table = mt.segments_table(segments(0, crowd=(3,)), 8)
    cls, masks, valid = mt.panoptic_targets(jnp.asarray(pan), **table)
    # The crowd segment 3 (class 7) is no target; the others keep their JSON order.
    assert np.asarray(cls).tolist() == [0, 3, 7, 10, 5, -1, -1, -1]
    assert not np.asarray(masks)[3].any() and bool(valid[3])
    np.testing.assert_array_equal(np.asarray(masks)[2], pan == 4)
    assert np.flatnonzero(np.asarray(mt.target_multi_hot(cls, valid, K))).tolist() == [
        0, 3, 5, 7, 10]
    cls2, masks2, valid2 = mt.panoptic_targets(jnp.asarray(pan), **table, keep_empty=False)
    assert np.asarray(cls2).tolist() == [0, 3, 7, 5, -1, -1, -1, -1]
    np.testing.assert_array_equal(np.asarray(masks2)[3], pan == 6)
    assert np.asarray(mt.target_multi_hot(cls2, valid2, K))[10] == 0


def test_batched_and_limits(inputs):
    # vmap over a batch padded to one size (0 = VOID / 255 = ignore padding, as the mappers).
    pans, sems, tables = [], [], []
    for b in (0, 1):
        p, s = inputs[f"pan_map.img{b}"], inputs[f"sem_map.img{b}"]
        pans.append(np.pad(p, ((0, 64 - p.shape[0]), (0, 96 - p.shape[1]))))
        sems.append(np.pad(s, ((0, 64 - s.shape[0]), (0, 96 - s.shape[1])),
                           constant_values=255))
        tables.append(mt.segments_table(segments(b), 7))
    stacked = {k: np.stack([t[k] for t in tables]) for k in tables[0]}
    cls, masks, valid = jax.vmap(mt.panoptic_targets)(jnp.asarray(np.stack(pans)), **stacked)
    assert cls.shape == (2, 7) and masks.shape == (2, 7, 64, 96)
    m1 = inputs["targets.pan.img1.masks"]
    np.testing.assert_array_equal(np.asarray(masks)[1, :6, :56, :80], m1)
    assert not np.asarray(masks)[1, :, 56:].any()
    hot = mt.target_multi_hot(cls, valid, K)
    assert hot.shape == (2, K) and np.flatnonzero(np.asarray(hot)[1]).tolist() == [1, 2, 7, 8, 9]
    scls, _, _, n = jax.vmap(lambda x: mt.semantic_targets(x, K, 3))(jnp.asarray(np.stack(sems)))
    assert np.asarray(n).tolist() == [5, 5]  # more classes than T = 3: the caller can tell
    assert np.asarray(scls).tolist() == [[0, 3, 5], [1, 2, 7]]
    with pytest.raises(ValueError, match="7 segments but max_segments=6"):
        mt.segments_table(segments(0) + [{"id": 9, "category_id": 1}], 6)
