"""Mask2Former criterion: loss formulas, importance sampling, padding and batch invariance,
RankSeg remap and multi-label loss, random draws, gradients (tiny shapes, CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankseg_jax.train.mask2former import criterion, matching, point_sampling

_FAST = {"xla_backend_optimization_level": 0}
B, Q, T, C, NPRED = 3, 6, 4, 5, 2  # C classes + no-object
NPTS = 16  # 12 importance-sampled of 48 candidates + 4 fill
CFG = criterion.CriterionConfig(num_points=NPTS)


def _problem(seed=0, slots=T, counts=(2, 4, 0)):
    """Random outputs, targets (image b has counts[b] valid targets) and draws."""
    rng = np.random.default_rng(seed)
    class_logits = rng.normal(size=(NPRED, B, Q, C + 1)).astype(np.float32) * 2
    mask_logits = rng.normal(size=(NPRED, B, Q, 8, 10)).astype(np.float32) * 3
    labels = rng.integers(0, C, (B, slots)).astype(np.int32)
    masks = rng.uniform(size=(B, slots, 32, 40)) > 0.5
    valid = np.arange(slots)[None] < np.array(counts)[:, None]
    draws = point_sampling.draw_points(jax.random.key(seed), NPRED, B, slots, num_points=NPTS)
    return class_logits, mask_logits, criterion.Targets(labels, masks, valid), draws


run_set_criterion = jax.jit(criterion.set_criterion, static_argnames="cfg",
                            compiler_options=_FAST)
sample = jax.jit(point_sampling.point_sample, compiler_options=_FAST)
importance_coords = jax.jit(point_sampling.importance_coords, static_argnums=3,
                            compiler_options=_FAST)


def test_classification_loss_is_the_weighted_mean():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(B, Q, C + 1)).astype(np.float32)
    labels = np.array([[1, 4, 0, 0], [2, 2, 3, 0], [0, 0, 0, 0]], np.int32)
    m = matching.Matching(src=np.array([[1, 4, 0, 2], [0, 3, 5, 1], [0, 1, 2, 3]], np.int32),
                          tgt=np.array([[1, 0, 2, 3], [2, 0, 1, 3], [0, 1, 2, 3]], np.int32),
                          valid=np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], bool))
    ours = float(criterion.classification_loss(logits, m, labels, 0.1))
    target = np.full((B, Q), C)
    target[0, 1], target[0, 4] = labels[0, 1], labels[0, 0]
    target[1, 0], target[1, 3], target[1, 5] = labels[1, 2], labels[1, 0], labels[1, 1]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, target[..., None], -1)[..., 0]
    w = np.where(target == C, 0.1, 1.0)
    np.testing.assert_allclose(ours, (w * nll).sum() / w.sum(), rtol=1e-6)


def test_importance_coords_keep_the_most_uncertain_candidates():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 8, 10)).astype(np.float32)
    cand = rng.uniform(size=(3, 48, 2)).astype(np.float32)
    fill = rng.uniform(size=(3, 4, 2)).astype(np.float32)
    coords = np.asarray(point_sampling.importance_coords(logits, cand, fill, 12))
    assert coords.shape == (3, 16, 2)
    unc = -np.abs(np.asarray(point_sampling.point_sample(logits, cand)))
    for n in range(3):
        best = np.argsort(-unc[n], kind="stable")[:12]
        assert sorted(map(tuple, coords[n, :12])) == sorted(map(tuple, cand[n, best]))
        np.testing.assert_array_equal(coords[n, 12:], fill[n])
    assert point_sampling.num_importance_points(12544, 0.75) == 9408


def test_mask_losses_match_per_pair_formulas():
    """loss_mask / loss_dice = sums over valid pairs of the per-pair point BCE mean and dice,
    divided by num_masks; pair (b, t) uses query src, target tgt and the slot's draws."""
    cl, ml, targets, draws = _problem(3)
    out = run_set_criterion(cl, ml, targets, draws, 4.0, cfg=CFG)
    for p in range(NPRED):
        m = jax.tree.map(lambda x, p=p: np.asarray(x[p]), out.matchings)
        bce_sum = dice_sum = 0.0
        for b in range(B):
            for t in range(T):
                if not m.valid[b, t]:
                    continue
                pred = ml[p, b, m.src[b, t]]
                coords = importance_coords(
                    pred[None], draws.candidates[p, b, t][None], draws.random_fill[p, b, t][None],
                    12)[0]
                x = np.asarray(sample(pred, coords), np.float64)
                y = np.asarray(sample(
                    targets.masks[b, m.tgt[b, t]].astype(np.float32), coords), np.float64)
                s = 1 / (1 + np.exp(-x))
                bce_sum += np.mean(-(y * np.log(s) + (1 - y) * np.log(1 - s)))
                dice_sum += 1 - (2 * (s * y).sum() + 1) / (s.sum() + y.sum() + 1)
        suffix = "" if p == NPRED - 1 else f"_{p}"
        np.testing.assert_allclose(out.raw["loss_mask" + suffix], bce_sum / 4.0, rtol=1e-5)
        np.testing.assert_allclose(out.raw["loss_dice" + suffix], dice_sum / 4.0, rtol=1e-5)
        for name, w in CFG.weights.items():
            np.testing.assert_allclose(out.weighted[name + suffix],
                                       w * out.raw[name + suffix], rtol=1e-7)


def test_batch_size_invariance_of_the_per_image_parts():
    """Each image alone gives the batch's matching and (with the same num_masks) its share of
    loss_mask / loss_dice; loss_ce is the batch's weighted mean of the per-image ones."""
    cl, ml, targets, draws = _problem(4)
    batch = run_set_criterion(cl, ml, targets, draws, 6.0, cfg=CFG)
    sums = {k: 0.0 for k in batch.raw}
    ce_num = {k: 0.0 for k in batch.raw if k.startswith("loss_ce")}
    ce_den = dict.fromkeys(ce_num, 0.0)
    for b in range(B):
        one = run_set_criterion(cl[:, b:b + 1], ml[:, b:b + 1],
                                jax.tree.map(lambda x, b=b: x[b:b + 1], targets),
                                jax.tree.map(lambda x, b=b: x[:, b:b + 1], draws), 6.0, cfg=CFG)
        for field in ("src", "tgt", "valid"):
            np.testing.assert_array_equal(getattr(one.matchings, field)[:, 0],
                                          getattr(batch.matchings, field)[:, b])
        np.testing.assert_allclose(one.costs[:, 0], batch.costs[:, b], rtol=1e-6, atol=1e-6)
        for k in batch.raw:
            sums[k] += float(one.raw[k])
        for k in ce_num:
            n = int(targets.valid[b].sum())
            weight = n + 0.1 * (Q - n)
            ce_num[k] += float(one.raw[k]) * weight
            ce_den[k] += weight
    for k in batch.raw:
        expected = ce_num[k] / ce_den[k] if k in ce_num else sums[k]
        np.testing.assert_allclose(batch.raw[k], expected, rtol=2e-6, err_msg=k)


def test_padding_slots_do_not_change_anything():
    """More (invalid) target slots: same matchings of the valid targets and same losses."""
    cl, ml, targets, draws = _problem(5)
    wide = criterion.Targets(np.pad(targets.labels, ((0, 0), (0, 2))),
                             np.pad(targets.masks, ((0, 0), (0, 2), (0, 0), (0, 0))),
                             np.pad(targets.valid, ((0, 0), (0, 2))))
    pad = ((0, 0), (0, 0), (0, 2), (0, 0), (0, 0))
    wide_draws = point_sampling.PointDraws(draws.matcher, np.pad(draws.candidates, pad),
                                           np.pad(draws.random_fill, pad))
    a = run_set_criterion(cl, ml, targets, draws, None, cfg=CFG)
    b = run_set_criterion(cl, ml, wide, wide_draws, None, cfg=CFG)
    for k in a.raw:
        np.testing.assert_allclose(a.raw[k], b.raw[k], rtol=1e-6, err_msg=k)
    valid = np.asarray(a.matchings.valid)
    np.testing.assert_array_equal(np.asarray(b.matchings.valid)[..., :T], valid)
    np.testing.assert_array_equal(np.asarray(b.matchings.src)[..., :T][valid],
                                  np.asarray(a.matchings.src)[valid])
    np.testing.assert_array_equal(np.asarray(b.matchings.tgt)[..., :T][valid],
                                  np.asarray(a.matchings.tgt)[valid])


def test_num_masks_default_and_clamp():
    cl, ml, targets, draws = _problem(6)
    local = run_set_criterion(cl, ml, targets, draws, None, cfg=CFG)
    given = run_set_criterion(cl, ml, targets, draws, 6.0, cfg=CFG)  # 2 + 4 + 0 targets
    assert float(criterion.count_masks(targets)) == 6.0
    for k in local.raw:
        np.testing.assert_allclose(local.raw[k], given.raw[k], rtol=1e-7)
    empty = criterion.Targets(targets.labels, targets.masks, np.zeros_like(targets.valid))
    out = run_set_criterion(cl, ml, empty, draws, 0.0, cfg=CFG)  # clamped to 1, no pairs
    assert float(out.raw["loss_mask"]) == float(out.raw["loss_dice"]) == 0.0
    assert np.isfinite(float(out.raw["loss_ce"]))


def test_rank_remap_drops_classes_outside_the_top_kappa():
    labels = np.array([[3, 0, 4, 1], [2, 2, 0, 0]], np.int32)
    valid = np.array([[1, 1, 1, 0], [1, 1, 1, 0]], bool)
    targets = criterion.Targets(labels, np.zeros((2, 4, 2, 2), bool), valid)
    topk = np.array([[4, 3, 1], [0, 2, 1]], np.int32)  # kappa 3 of K 5
    ranked = criterion.rank_targets(targets, topk, 5)
    np.testing.assert_array_equal(ranked.valid, [[1, 0, 1, 0], [1, 1, 1, 0]])
    np.testing.assert_array_equal(np.where(ranked.valid, ranked.labels, -1),
                                  [[1, -1, 0, -1], [1, 1, 0, -1]])
    np.testing.assert_array_equal(criterion.class_presence(targets, 5),
                                  [[1, 0, 0, 1, 1], [1, 0, 1, 0, 0]])


def test_multilabel_loss_is_the_official_asl():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 6)).astype(np.float32) * 3
    y = (rng.uniform(size=(2, 6)) > 0.5).astype(np.float32)
    p = 1 / (1 + np.exp(-x.astype(np.float64)))
    pn = np.minimum(1 - p + 0.05, 1)
    loss = y * np.log(np.maximum(p, 1e-5)) + (1 - y) * np.log(np.maximum(pn, 1e-5))
    w = (1 - p * y - pn * (1 - y)) ** (0 * y + 2 * (1 - y))
    np.testing.assert_allclose(criterion.multilabel_loss(x, y), 10 * -(loss * w).sum() / 12,
                               rtol=1e-5)


def test_rankseg_criterion_remaps_and_adds_loss_ml():
    """kappa < K: targets outside the top-kappa are dropped (and not counted in num_masks),
    the others matched in rank space; loss_ml uses all ground-truth classes."""
    cl, ml, targets, draws = _problem(8)
    kappa = 3
    image_logits = np.random.default_rng(8).normal(size=(B, C)).astype(np.float32)
    topk = np.argsort(-image_logits, axis=1)[:, :kappa].astype(np.int32)
    outputs = {"class_logits": cl[..., :kappa + 1], "mask_logits": ml,
               "image_logits": image_logits, "topk_index": topk}
    run = jax.jit(lambda o, t, d: criterion.mask2former_criterion(o, t, d, num_classes=C,
                                                                  cfg=CFG),
                  compiler_options=_FAST)
    out = run(outputs, targets, draws)
    ranked = criterion.rank_targets(targets, topk, C)
    ref = run_set_criterion(cl[..., :kappa + 1], ml, ranked, draws, None, cfg=CFG)
    for k in ref.weighted:
        np.testing.assert_allclose(out.weighted[k], ref.weighted[k], rtol=1e-6, err_msg=k)
    np.testing.assert_allclose(out.weighted["loss_ml"], criterion.multilabel_loss(
        image_logits, criterion.class_presence(targets, C)), rtol=1e-6)
    assert set(out.raw) == set(ref.raw)
    assert bool((np.asarray(ranked.valid) <= targets.valid).all())


def test_draws_have_the_official_sizes():
    d = jax.eval_shape(lambda k: point_sampling.draw_points(k, 10, 2, 50), jax.random.key(0))
    assert d.matcher.shape == (10, 2, 12544, 2)
    assert d.candidates.shape == (10, 2, 50, 37632, 2)
    assert d.random_fill.shape == (10, 2, 50, 3136, 2)
    small = point_sampling.draw_points(jax.random.key(1), 1, 1, 2, num_points=NPTS)
    for a in small:
        assert a.dtype == jnp.float32 and float(a.min()) >= 0 and float(a.max()) < 1
    bad = point_sampling.PointDraws(small.matcher, small.candidates[..., :5, :],
                                    small.random_fill)
    with pytest.raises(ValueError, match="do not give"):
        criterion.prediction_losses(
            np.zeros((1, 4, 3)), np.zeros((1, 4, 8, 8)),
            criterion.Targets(np.zeros((1, 2), np.int32), np.zeros((1, 2, 8, 8)),
                              np.ones((1, 2), bool)),
            jax.tree.map(lambda x: x[0], bad), 1.0, CFG)


def test_gradients_are_finite_under_jit_with_random_draws_and_bf16_inputs():
    cl, ml, targets, _ = _problem(9)

    def total(cl, ml, key):
        draws = point_sampling.draw_points(key, NPRED, B, T, num_points=NPTS)
        out = criterion.set_criterion(cl, ml, targets, draws, None, CFG)
        return sum(out.weighted.values())

    grad = jax.jit(jax.value_and_grad(total, argnums=(0, 1)), compiler_options=_FAST)
    value, (gc, gm) = grad(jnp.asarray(cl), jnp.asarray(ml), jax.random.key(0))
    assert np.isfinite(float(value))
    for g in (gc, gm):
        assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0
    # Every prediction gets a gradient (deep supervision).
    assert all(np.abs(np.asarray(gm[p])).sum() > 0 for p in range(NPRED))
    value16, (gc16, _) = grad(jnp.asarray(cl, jnp.bfloat16), jnp.asarray(ml, jnp.bfloat16),
                              jax.random.key(0))
    assert gc16.dtype == jnp.bfloat16 and np.isfinite(float(value16))
    np.testing.assert_allclose(float(value16), float(value), rtol=0.05)
