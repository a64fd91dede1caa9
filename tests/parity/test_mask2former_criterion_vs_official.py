"""Mask2Former matcher and criterion vs the official training forward (`train.npz`).

Six runs (semantic / panoptic x plain / RankSeg / -gt), each with 5 predictions (4 auxiliary
+ final) on a batch of 2 images. Inputs are the official ones: the logits the official
criterion received (`match.pred{p}.pred_logits`), the decoder's mask logits
(`forward.npz {w}.dec.pred{p}.mask_logits`; the training forward equals the eval forward, which
`test_recorded_inputs_are_consistent` checks against the recorded sampled logits), the
mapper's targets (`inputs.npz`), RankSeg's image logits / ranking (`forward.npz rankseg.ml.*`)
and every recorded random draw (matcher points, loss candidates and fill). Checked: the
matching costs (1e-4 relative), the assignments (exact), the importance-sampled points (exact
set), the rank remap of the target labels, num_masks, and every weighted and raw loss term
(rtol 1e-5) incl. RankSeg's loss_ml. Tiny config: 12 classes, 10 queries, 96 points.
"""

import jax
import numpy as np
import pytest
from helpers import ROOT

from rankseg_jax.train.mask2former import criterion, matching, point_sampling

FIX = ROOT / "tests" / "fixtures" / "official_mask2former"
RUNS = [f"{task}_{kind}" for task in ("sem", "pan") for kind in ("plain", "rankseg", "gt")]
NUM_CLASSES, NUM_PRED, SLOTS = 12, 5, 8  # 8 target slots > the 5 / 6 targets: padding works
CFG = criterion.CriterionConfig(num_points=96)
# One compilation per output structure (plain / RankSeg); optimisation level 0 roughly
# halves the XLA:CPU compile time of these small graphs (tests only).
_FAST = {"xla_backend_optimization_level": 0}
run_criterion = jax.jit(lambda o, tg, d: criterion.mask2former_criterion(
    o, tg, d, num_classes=NUM_CLASSES, cfg=CFG), compiler_options=_FAST)
run_matcher = jax.jit(matching.hungarian_match, compiler_options=_FAST)
sample = jax.jit(point_sampling.point_sample, compiler_options=_FAST)
importance_coords = jax.jit(point_sampling.importance_coords, static_argnums=3,
                            compiler_options=_FAST)


@pytest.fixture(scope="module")
def npz():
    return {name: dict(np.load(FIX / f"{name}.npz")) for name in ("train", "forward", "inputs")}


def _weights(run):
    return "rankseg" if run.endswith("rankseg") else "plain"


def _targets(npz, run):
    """Padded Targets (original class ids) and the per-image target counts."""
    inputs = npz["inputs"]
    labels = np.zeros((2, SLOTS), np.int32)
    masks = np.zeros((2, SLOTS, 64, 96), bool)  # the batch's padded input size
    counts = []
    for b in range(2):
        lab = inputs[f"targets.{run[:3]}.img{b}.labels"]
        m = inputs[f"targets.{run[:3]}.img{b}.masks"]
        labels[b, :len(lab)] = lab
        masks[b, :len(lab), :m.shape[1], :m.shape[2]] = m
        counts.append(len(lab))
    valid = np.arange(SLOTS)[None] < np.array(counts)[:, None]
    return criterion.Targets(labels, masks, valid), counts


def _inputs(npz, run):
    """(outputs dict, Targets, PointDraws, per-image counts) of a run."""
    t, f = npz["train"], npz["forward"]
    w = _weights(run)
    targets, counts = _targets(npz, run)
    outputs = {
        "class_logits": np.stack([t[f"{run}.match.pred{p}.pred_logits"] for p in range(NUM_PRED)]),
        "mask_logits": np.stack([f[f"{w}.dec.pred{p}.mask_logits"] for p in range(NUM_PRED)])}
    if w == "rankseg":
        outputs["image_logits"] = f["rankseg.ml.img_pred"]
        outputs["topk_index"] = f["rankseg.ml.topk_index"]  # [B, 13]: no-object appended
    # The recorded loss draws are per matched pair, batch-major in matcher order: image b's
    # j-th pair is slot j of image b.
    cand = np.zeros((NUM_PRED, 2, SLOTS, 288, 2), np.float32)
    fill = np.zeros((NUM_PRED, 2, SLOTS, 24, 2), np.float32)
    for p in range(NUM_PRED):
        c, r = t[f"{run}.points.pred{p}.candidates"], t[f"{run}.points.pred{p}.random_fill"]
        start = 0
        for b, n in enumerate(counts):
            cand[p, b, :n], fill[p, b, :n] = c[start:start + n], r[start:start + n]
            start += n
    points = np.stack([np.stack([t[f"{run}.match.pred{p}.img{b}.point_coords"] for b in range(2)])
                       for p in range(NUM_PRED)])
    return outputs, targets, point_sampling.PointDraws(points, cand, fill), counts


@pytest.mark.parametrize("run", RUNS)
def test_recorded_inputs_are_consistent(npz, run):
    """The fixture chain our inputs rely on: the matcher's logits are the decoder's (ranked
    and normalised for RankSeg, -100 on absent classes of the final prediction for -gt), and
    the recorded sampled logits / labels are the forward.npz masks / the padded targets
    sampled at the recorded points (so the training forward's masks are the eval ones)."""
    t, f = npz["train"], npz["forward"]
    w = _weights(run)
    targets, counts = _targets(npz, run)
    for p in range(NUM_PRED):
        logits = t[f"{run}.match.pred{p}.pred_logits"]
        if w == "rankseg":
            expected = f[f"rankseg.ml.pred{p}.rank_ln_logits"]
        else:
            expected = f[f"plain.dec.pred{p}.class_logits"].copy()
            if run.endswith("gt") and p == NUM_PRED - 1:
                present = np.asarray(criterion.class_presence(targets, NUM_CLASSES)) > 0
                absent = np.concatenate([~present, np.zeros((2, 1), bool)], 1)
                expected[np.broadcast_to(absent[:, None], expected.shape)] = -100.0
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5, err_msg=f"pred{p}")

        src = np.concatenate([t[f"{run}.match.pred{p}.img{b}.src_idx"] for b in range(2)])
        tgt = np.concatenate([t[f"{run}.match.pred{p}.img{b}.tgt_idx"] for b in range(2)])
        img = np.repeat([0, 1], counts)
        pred_masks = f[f"{w}.dec.pred{p}.mask_logits"][img, src]
        ours = sample(pred_masks, t[f"{run}.points.pred{p}.candidates"])
        np.testing.assert_allclose(ours, t[f"{run}.points.pred{p}.candidate_logits"], rtol=0,
                                   atol=1e-5, err_msg=f"pred{p} candidate_logits")
        coords = t[f"{run}.points.pred{p}.coords"]
        np.testing.assert_allclose(sample(pred_masks, coords),
                                   t[f"{run}.points.pred{p}.point_logits"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(
            sample(targets.masks[img, tgt].astype(np.float32), coords),
            t[f"{run}.points.pred{p}.point_labels"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("run", RUNS)
def test_matcher_costs_and_assignments(npz, run):
    """Per prediction and image: our cost matrix equals the one handed to scipy (1e-4
    relative to its largest entry) and the jitted assignment equals scipy's indices."""
    t = npz["train"]
    outputs, targets, draws, counts = _inputs(npz, run)
    labels = np.stack([np.pad(t[f"{run}.match.target_labels.img{b}"], (0, SLOTS - counts[b]))
                       for b in range(2)])
    worst = 0.0
    for p in range(NUM_PRED):
        m, cost = run_matcher(outputs["class_logits"][p], outputs["mask_logits"][p], labels,
                        targets.masks, targets.valid, draws.matcher[p])
        for b, n in enumerate(counts):
            key = f"{run}.match.pred{p}.img{b}"
            ref = t[f"{key}.cost"]
            rel = np.abs(np.asarray(cost[b, :, :n]) - ref).max() / np.abs(ref).max()
            assert rel < 1e-4, (key, rel)
            worst = max(worst, rel)
            assert np.asarray(m.valid[b]).tolist() == [True] * n + [False] * (SLOTS - n)
            np.testing.assert_array_equal(m.src[b, :n], t[f"{key}.src_idx"], err_msg=key)
            np.testing.assert_array_equal(m.tgt[b, :n], t[f"{key}.tgt_idx"], err_msg=key)
            # Padding slots are assigned to the remaining queries: a full partial permutation.
            assert sorted(np.asarray(m.tgt[b]).tolist()) == list(range(SLOTS))
            assert len(set(np.asarray(m.src[b]).tolist())) == SLOTS
    print(f"{run}: max relative cost difference {worst:.2e}")


@pytest.mark.parametrize("run", RUNS)
def test_importance_sampled_points(npz, run):
    """Given the recorded candidates and fill, the most uncertain candidates are the official
    ones (as a set: top_k order does not matter) and the fill follows them."""
    t, f = npz["train"], npz["forward"]
    _, counts = _targets(npz, run)
    img = np.repeat([0, 1], counts)
    k = point_sampling.num_importance_points(96, 0.75)
    assert k == 72
    for p in range(NUM_PRED):
        src = np.concatenate([t[f"{run}.match.pred{p}.img{b}.src_idx"] for b in range(2)])
        pred_masks = f[f"{_weights(run)}.dec.pred{p}.mask_logits"][img, src]
        ours = np.asarray(importance_coords(
            pred_masks, t[f"{run}.points.pred{p}.candidates"],
            t[f"{run}.points.pred{p}.random_fill"], k))
        theirs = t[f"{run}.points.pred{p}.coords"]
        np.testing.assert_array_equal(ours[:, k:], theirs[:, k:])
        for n in range(len(src)):
            assert sorted(map(tuple, ours[n, :k])) == sorted(map(tuple, theirs[n, :k])), (p, n)


@pytest.mark.parametrize("run", RUNS)
def test_losses(npz, run):
    """Every weighted (`loss.*`) and raw (`loss_raw.*`) term of the official criterion, final
    and auxiliary, and RankSeg's loss_ml, from the recorded draws, through the jitted
    top-level criterion (rank remap, num_masks, matching included)."""
    t, f = npz["train"], npz["forward"]
    outputs, targets, draws, counts = _inputs(npz, run)
    assert float(criterion.count_masks(targets)) == t[f"{run}.match.num_masks"]
    if _weights(run) == "rankseg":
        ranked = criterion.rank_targets(targets, f["rankseg.ml.topk_index"][:, :NUM_CLASSES],
                                        NUM_CLASSES)
        np.testing.assert_array_equal(ranked.valid, targets.valid)
        for b, n in enumerate(counts):
            np.testing.assert_array_equal(ranked.labels[b, :n],
                                          t[f"{run}.match.target_labels.img{b}"])
        np.testing.assert_array_equal(criterion.class_presence(targets, NUM_CLASSES),
                                      t[f"{run}.loss_ml_target"])
    else:
        for b, n in enumerate(counts):
            np.testing.assert_array_equal(targets.labels[b, :n],
                                          t[f"{run}.match.target_labels.img{b}"])
    out = run_criterion(outputs, targets, draws)

    prefix = f"{run}.loss."
    expected = {k[len(prefix):] for k in t if k.startswith(prefix)}
    assert set(out.weighted) == expected
    assert ("loss_ml" in expected) == (_weights(run) == "rankseg")
    assert set(out.raw) == {k[len(f"{run}.loss_raw."):] for k in t
                            if k.startswith(f"{run}.loss_raw.")}
    worst = 0.0
    for group, ours in (("loss", out.weighted), ("loss_raw", out.raw)):
        for name, value in ours.items():
            ref = t[f"{run}.{group}.{name}"]
            np.testing.assert_allclose(float(value), ref, rtol=1e-5, atol=0,
                                       err_msg=f"{group}.{name}")
            worst = max(worst, abs(float(value) - ref) / abs(ref))
    for p in range(NUM_PRED):
        for b, n in enumerate(counts):
            key = f"{run}.match.pred{p}.img{b}"
            np.testing.assert_array_equal(out.matchings.src[p, b, :n], t[f"{key}.src_idx"])
            np.testing.assert_array_equal(out.matchings.tgt[p, b, :n], t[f"{key}.tgt_idx"])
    print(f"{run}: max relative loss difference {worst:.2e}")
