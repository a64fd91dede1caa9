"""Mask2Former matcher: point sampling, pairwise costs and the jittable exact assignment.

References are independent: a per-point NumPy bilinear sampler written from grid_sample's
definition (and torch's `grid_sample` itself when installed), per-pair loops for the costs,
and `scipy.optimize.linear_sum_assignment` for the assignment.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from rankseg_jax.train.mask2former import matching, point_sampling

# Few compilations, at optimisation level 0 (about half the XLA:CPU compile time; tests only).
_FAST = {"xla_backend_optimization_level": 0}
sample = jax.jit(point_sampling.point_sample, compiler_options=_FAST)
assign = jax.jit(matching.assign, compiler_options=_FAST)
pairwise = jax.jit(matching.pairwise_mask_costs, compiler_options=_FAST)


def _np_taps(shape, x, y):
    """The in-map bilinear taps (row, column, weight) of normalised point (x, y) on a map of
    `shape` [H, W], from grid_sample's definition (align_corners=False, zeros outside)."""
    h, w = shape
    px, py = float(x) * w - 0.5, float(y) * h - 0.5
    x0, y0 = int(np.floor(px)), int(np.floor(py))
    return [(cy, cx, (1 - abs(px - cx)) * (1 - abs(py - cy)))
            for cy in (y0, y0 + 1) for cx in (x0, x0 + 1) if 0 <= cx < w and 0 <= cy < h]


def _np_point_sample(m, pts):
    """grid_sample(bilinear, zeros, align_corners=False) of one map [H, W] at points [P, 2]."""
    return np.array([sum(wt * m[cy, cx] for cy, cx, wt in _np_taps(m.shape, x, y))
                     for x, y in pts.astype(np.float64)])


def _points(rng, n):
    """Random points incl. exact corners/edges, pixel centres and points outside [0, 1]."""
    pts = rng.uniform(-0.1, 1.1, (n, 2)).astype(np.float32)
    pts[:4] = [[0, 0], [1, 1], [0, 1], [0.5 / 6, 0.5 / 5]]
    return pts


def test_point_sample_matches_numpy_reference():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)  # [B, Q, H, W]
    shared = np.stack([_points(rng, 40) for _ in range(3)])  # [B, P, 2]
    per_map = np.stack([np.stack([_points(rng, 40) for _ in range(4)]) for _ in range(3)])
    ours_shared = np.asarray(sample(maps, shared))
    ours_per_map = np.asarray(sample(maps, per_map))
    assert ours_shared.shape == ours_per_map.shape == (3, 4, 40)
    for b in range(3):
        for q in range(4):
            np.testing.assert_allclose(ours_shared[b, q], _np_point_sample(maps[b, q], shared[b]),
                                       atol=2e-6)
            np.testing.assert_allclose(ours_per_map[b, q],
                                       _np_point_sample(maps[b, q], per_map[b, q]), atol=2e-6)
    # One flat [N, H, W] call with per-map points equals the [B, Q] layout.
    flat = sample(maps.reshape(12, 5, 6), per_map.reshape(12, 40, 2))
    np.testing.assert_array_equal(np.asarray(flat).reshape(3, 4, 40), ours_per_map)
    with pytest.raises(ValueError, match="do not index"):
        point_sampling.point_sample(maps, shared[:2])


def _np_point_sample_grad(shape, pts, cot):
    """d(sum_i cot[i] * sample(m, pts)[i]) / dm for one map of `shape` [H, W] (the sampler is
    linear in m: each tap scatters its bilinear weight times the cotangent)."""
    g = np.zeros(shape)
    for (x, y), c in zip(pts.astype(np.float64), cot, strict=True):
        for cy, cx, wt in _np_taps(shape, x, y):
            g[cy, cx] += wt * c
    return g


def test_point_sample_gradient_matches_numpy_reference():
    """The maps' gradient, for points per map (one gather per corner) and points shared by
    the maps of an image (row gathers), against the adjoint of the NumPy sampler."""
    rng = np.random.default_rng(3)
    maps = rng.normal(size=(2, 3, 5, 6)).astype(np.float32)  # [B, Q, H, W]
    shared = np.stack([_points(rng, 30) for _ in range(2)])  # [B, P, 2]
    per_map = np.stack([np.stack([_points(rng, 30) for _ in range(3)]) for _ in range(2)])
    cot = rng.normal(size=(2, 3, 30)).astype(np.float32)
    grad = jax.jit(jax.grad(lambda m, p: jnp.sum(point_sampling.point_sample(m, p) * cot)),
                   compiler_options=_FAST)
    for pts in (shared, per_map):
        ours = np.asarray(grad(maps, pts))
        for b in range(2):
            for q in range(3):
                p = pts[b] if pts.ndim == 3 else pts[b, q]
                np.testing.assert_allclose(ours[b, q], _np_point_sample_grad((5, 6), p, cot[b, q]),
                                           atol=1e-5)


def test_point_sample_xy_is_point_sample_with_split_coordinates():
    rng = np.random.default_rng(4)
    maps = rng.normal(size=(2, 3, 5, 6)).astype(np.float32)
    pts = np.stack([_points(rng, 20) for _ in range(2)])  # [B, P, 2]
    xy = jax.jit(point_sampling.point_sample_xy, compiler_options=_FAST)
    np.testing.assert_array_equal(np.asarray(xy(maps, pts[..., 0], pts[..., 1])),
                                  np.asarray(sample(maps, pts)))
    with pytest.raises(ValueError, match=r"x \(2, 20\) and y \(2, 19\) do not index"):
        point_sampling.point_sample_xy(maps, pts[..., 0], pts[:, 1:, 1])
    with pytest.raises(ValueError, match="do not index"):
        point_sampling.point_sample(maps, pts[..., :1])


@pytest.mark.torch
def test_point_sample_matches_torch_grid_sample():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(5, 7, 9)).astype(np.float32)
    pts = np.stack([_points(rng, 64) for _ in range(5)])
    theirs = torch.nn.functional.grid_sample(
        torch.from_numpy(maps)[:, None], 2.0 * torch.from_numpy(pts)[:, :, None] - 1.0,
        mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0, :, 0].numpy()
    np.testing.assert_allclose(sample(maps, pts), theirs, atol=1e-6)


def test_pairwise_costs_match_per_pair_loops():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 30)).astype(np.float32) * 3
    y = (rng.uniform(size=(4, 30)) > 0.5).astype(np.float32)
    y[0] = rng.uniform(size=30)  # fractional targets (boundaries) too
    bce, dice = map(np.asarray, pairwise(x, y))
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    s = 1 / (1 + np.exp(-x64))
    for q in range(6):
        for t in range(4):
            ref_bce = np.mean(-(y64[t] * np.log(s[q]) + (1 - y64[t]) * np.log(1 - s[q])))
            ref_dice = 1 - (2 * (s[q] * y64[t]).sum() + 1) / (s[q].sum() + y64[t].sum() + 1)
            np.testing.assert_allclose(bce[q, t], ref_bce, rtol=1e-5)
            np.testing.assert_allclose(dice[q, t], ref_dice, rtol=1e-5)


def test_match_cost_combines_class_and_mask_costs():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 5, 4)).astype(np.float32)
    masks = rng.normal(size=(2, 5, 6, 8)).astype(np.float32)
    labels = np.array([[0, 2, 1], [3, 1, 1]], np.int32)  # 3 = no-object column, as a label
    tmasks = rng.uniform(size=(2, 3, 12, 16)) > 0.5
    pts = rng.uniform(size=(2, 50, 2)).astype(np.float32)
    cost = np.asarray(jax.jit(matching.match_cost, compiler_options=_FAST)(
        logits, masks, labels, tmasks, pts))
    prob = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for b in range(2):
        bce, dice = pairwise(sample(masks[b], pts[b]), sample(tmasks[b].astype(np.float32), pts[b]))
        ref = 5 * np.asarray(bce) + 2 * -prob[b][:, labels[b]] + 5 * np.asarray(dice)
        np.testing.assert_allclose(cost[b], ref, rtol=1e-6, atol=1e-6)


def _random_costs(rng, q, t):
    """Continuous random costs (unique optimum almost surely), in the matcher's range."""
    return rng.uniform(-2.0, 12.0, (q, t)).astype(np.float32)


def _scipy_pairs(cost):
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    return rows, cols


@pytest.mark.parametrize("q,t", [(1, 1), (4, 4), (9, 9), (10, 3), (17, 11), (30, 1), (100, 60)])
def test_assignment_equals_scipy(q, t):
    rng = np.random.default_rng(q * 100 + t)
    for _ in range(4):
        cost = _random_costs(rng, q, t)
        m = assign(cost, np.ones(t, bool))
        rows, cols = _scipy_pairs(cost)
        np.testing.assert_array_equal(m.src, rows)
        np.testing.assert_array_equal(m.tgt, cols)
        assert np.asarray(m.valid).all()


def test_assignment_with_invalid_slots_equals_scipy_on_valid_columns():
    """Padding: the valid slots (anywhere, not only first) are matched as scipy matches the
    valid columns alone; the invalid slots follow, assigned to distinct other queries."""
    rng = np.random.default_rng(5)
    q, t = 12, 7
    for n_valid in (0, 1, 3, 7):
        valid = np.zeros(t, bool)
        valid[rng.permutation(t)[:n_valid]] = True
        cost = _random_costs(rng, q, t)
        cost[:, ~valid] = rng.uniform(-1e3, 1e3, (q, t - n_valid))  # junk that must not matter
        m = assign(cost, valid)
        rows, cols = _scipy_pairs(cost[:, valid])
        np.testing.assert_array_equal(m.valid, np.arange(t) < n_valid)
        np.testing.assert_array_equal(m.src[:n_valid], rows)
        np.testing.assert_array_equal(m.tgt[:n_valid], np.flatnonzero(valid)[cols])
        assert sorted(np.asarray(m.tgt).tolist()) == list(range(t))
        assert len(set(np.asarray(m.src).tolist())) == t
        assert np.all(np.diff(np.asarray(m.src[n_valid:])) > 0)


def test_assignment_jit_and_vmap_over_a_batch():
    rng = np.random.default_rng(6)
    b, q, t = 6, 10, 6
    cost = np.stack([_random_costs(rng, q, t) for _ in range(b)])
    valid = np.arange(t)[None] < rng.integers(0, t + 1, b)[:, None]
    m = jax.jit(jax.vmap(matching.assign), compiler_options=_FAST)(cost, valid)
    assert m.src.shape == m.tgt.shape == m.valid.shape == (b, t)
    assert m.src.dtype == m.tgt.dtype == jnp.int32
    for i in range(b):
        n = int(valid[i].sum())
        rows, cols = _scipy_pairs(cost[i, :, :n])
        np.testing.assert_array_equal(m.src[i, :n], rows)
        np.testing.assert_array_equal(m.tgt[i, :n], cols)
        # Each image alone gives the same assignment (no cross-image mixing).
        single = assign(cost[i], valid[i])
        np.testing.assert_array_equal(single.src, m.src[i])
        np.testing.assert_array_equal(single.tgt, m.tgt[i])


def test_assignment_of_non_finite_costs_ends_with_a_valid_assignment():
    """A diverged model must not hang the step: NaN / inf costs still give distinct pairs."""
    rng = np.random.default_rng(8)
    for bad in (np.nan, np.inf, -np.inf):
        cost = _random_costs(rng, 10, 6)
        cost[2, 1] = cost[4] = bad
        m = assign(cost, np.ones(6, bool))
        assert sorted(np.asarray(m.tgt).tolist()) == list(range(6))
        assert len(set(np.asarray(m.src).tolist())) == 6


def test_assignment_rejects_more_slots_than_queries():
    with pytest.raises(ValueError, match="max targets <= num queries"):
        matching.assign(jnp.zeros((3, 4)), jnp.ones(4, bool))


def test_hungarian_match_is_per_image_and_ignores_gradients():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(3, 8, 5)).astype(np.float32)
    masks = rng.normal(size=(3, 8, 4, 6)).astype(np.float32)
    labels = rng.integers(0, 4, (3, 5)).astype(np.int32)
    tmasks = rng.uniform(size=(3, 5, 16, 24)) > 0.6
    valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
    pts = rng.uniform(size=(3, 32, 2)).astype(np.float32)
    run = jax.jit(matching.hungarian_match, compiler_options=_FAST)
    m, cost = run(logits, masks, labels, tmasks, valid, pts)
    for i in range(3):
        mi, ci = run(logits[i:i + 1], masks[i:i + 1], labels[i:i + 1], tmasks[i:i + 1],
                     valid[i:i + 1], pts[i:i + 1])
        np.testing.assert_array_equal(mi.src[0], m.src[i])
        np.testing.assert_array_equal(mi.tgt[0], m.tgt[i])
        np.testing.assert_allclose(ci[0], cost[i], rtol=1e-6, atol=1e-6)
        n = int(valid[i].sum())
        rows, cols = _scipy_pairs(np.asarray(cost[i])[:, valid[i]])
        np.testing.assert_array_equal(m.src[i, :n], rows)
    grads = jax.jit(jax.grad(
        lambda lg, mk: matching.match_cost(lg, mk, labels, tmasks, pts).sum(), argnums=(0, 1)),
        compiler_options=_FAST)(logits, masks)
    assert not any(np.asarray(g).any() for g in grads)
