"""Pictures of predictions: palette PNGs, panels and the Fig. 1 chart, checked through their
files and the figures' artists; palettes people can tell apart."""

import matplotlib.colors as mcolors
import numpy as np
import pytest
from PIL import Image

from rankseg_jax.data import palettes, registry
from rankseg_jax.evaluation import visualize as vis


def _info(k=48):
    return registry.get_dataset_info("synthetic", num_classes=k)


# --------------------------------------------------------------------------- palettes


@pytest.mark.parametrize("name", registry.DATASETS)
def test_registry_palettes_are_distinct(name):
    info = registry.get_dataset_info(
        name, num_classes=48 if name in registry.SYNTHETIC_DATASETS else None)
    k, pal = info.num_classes, info.palette
    assert pal.shape == (k, 3) and pal.dtype == np.uint8
    assert len({tuple(c) for c in pal}) == k
    # Neighbouring ids (which often co-occur) are clearly different; any two are noticeably so.
    assert palettes.neighbour_delta_e(pal).min() >= (14 if k <= 200 else 8)
    assert palettes.min_pair_delta_e(pal) >= (2.3 if k <= 200 else 1.0)


def test_generated_palette_properties():
    for k in (2, 48, 150, 1284):
        pal = palettes.generated_palette(k)
        lab = palettes.srgb_to_lab(pal)
        assert ((lab[:, 0] >= 30) & (lab[:, 0] <= 90)).all()  # no near-black/white class
        assert not pal.flags.writeable
        np.testing.assert_array_equal(pal[:2], palettes.generated_palette(2))  # a prefix
    assert palettes.min_pair_delta_e(palettes.generated_palette(150)) > 16
    # The black ignore colour is far from every class colour.
    assert palettes.delta_e(palettes.generated_palette(1284), np.zeros(3, np.uint8)).min() > 25


def test_ade20k_palette_repair_keeps_mmseg_colours_where_distinct():
    official = np.array(registry.ADE20K_PALETTE, np.uint8)
    raw_nb = palettes.neighbour_delta_e(official)
    assert raw_nb.min() < 1 and palettes.min_pair_delta_e(official) == 0  # why it is repaired
    pal, replaced = palettes.repaired_palette(registry.ADE20K_PALETTE)
    assert 0 < len(replaced) <= 25
    keep = np.setdiff1d(np.arange(150), replaced)
    np.testing.assert_array_equal(pal[keep], official[keep])
    np.testing.assert_array_equal(registry.get_dataset_info("ade20k").palette, pal)
    assert 48 in replaced  # 'skyscraper' shares (140, 140, 140) with 'road' (6)


# --------------------------------------------------------------------------- label PNGs


def test_palette_label_png(tmp_path):
    info = _info()
    pred = np.random.default_rng(0).integers(0, 48, (30, 50))
    written = vis.write_label_pngs(str(tmp_path / "a"), pred, info.palette)
    assert written == [str(tmp_path / "a_labels.png")]
    im = Image.open(written[0])
    assert im.mode == "P"
    np.testing.assert_array_equal(np.asarray(im), pred)
    pal = np.array(im.getpalette(), np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(pal[:48], info.palette)
    np.testing.assert_array_equal(np.asarray(im.convert("RGB")),
                                  vis.colourize(pred, info.palette))


def test_16bit_label_png_and_colour_png(tmp_path):
    pal = palettes.generated_palette(300)
    pred = np.random.default_rng(1).integers(0, 300, (20, 30))
    written = vis.write_label_pngs(str(tmp_path / "b"), pred, pal)
    assert [p.split("/")[-1] for p in written] == ["b_labels.png", "b_labels_color.png"]
    ids = np.asarray(Image.open(written[0]))
    assert ids.dtype == np.uint16
    np.testing.assert_array_equal(ids, pred)
    np.testing.assert_array_equal(np.asarray(Image.open(written[1])), pal[pred])


# --------------------------------------------------------------------------- panel


def test_panel_with_and_without_ground_truth(tmp_path):
    info = _info()
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (36, 60, 3), dtype=np.uint8)
    pred = np.zeros((36, 60), int)
    pred[:, 30:] = 5  # classes 0 (both) and 5 (prediction only)
    gt = np.zeros((36, 60), int)
    gt[20:, :] = 9  # class 9: missed
    gt[0, 0] = 255  # ignore
    entries = vis.legend_entries(pred, gt, 48)
    assert dict(entries) == {0: "both", 5: "pred", 9: "gt"}
    fig = vis.panel_figure(image, pred, info.palette, info.class_names, gt, "a.png")
    assert [ax.get_title() for ax in fig.axes] == ["image", "prediction", "ground truth"]
    texts = {t.get_text(): t.get_color() for t in fig.legends[0].get_texts()}
    names = info.class_names
    assert texts[names[0]] == "black"
    assert texts[f"{names[5]}  (not in GT)"] == vis.FP_RED
    assert f"{names[9]}  (missed)" in texts
    vis.save(fig, str(tmp_path / "p.png"))
    assert Image.open(tmp_path / "p.png").size[0] > 900
    fig = vis.panel_figure(image, pred, info.palette, info.class_names)
    assert [ax.get_title() for ax in fig.axes] == ["image", "prediction"]
    assert all(t.get_color() == "black" for t in fig.legends[0].get_texts())
    # Overlay: class colour over the image, ignore darkened, never a class colour.
    ov = vis.overlay(image, gt, info.palette)
    assert (ov[0, 0] <= 0.36 * image[0, 0] + 1).all()


# --------------------------------------------------------------------------- Fig. 1 chart


def _chart_case(k=48, kappa=16, seed=3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=k).astype(np.float32)
    order = np.argsort(-logits, kind="stable")
    gt = np.zeros(k, bool)
    gt[order[[0, 2, 5, 30]]] = True  # three in the top-20 (ranks 1, 3, 6), one at rank 31
    return logits, order, gt


def _bars(ax):
    return [p for p in ax.patches if p.get_height() < 1]  # barh rectangles (height 0.8)


def test_chart_marks_true_and_false_positives():
    info = _info()
    logits, order, gt = _chart_case()
    fig = vis.score_chart_figure(logits, 16, info.class_names, info.palette, gt, "a.png")
    ax = fig.axes[0]
    bars = _bars(ax)
    assert len(bars) == 20
    ticks = ax.get_yticklabels()
    for r, (bar, tick) in enumerate(zip(bars, ticks, strict=True)):
        c = order[r]
        assert tick.get_text() == f"{r + 1}. {info.class_names[c]}"
        np.testing.assert_allclose(bar.get_width(), 1 / (1 + np.exp(-logits[c])), rtol=1e-6)
        if gt[c]:  # true positive: black name, its ground-truth-map colour
            assert tick.get_color() == "black"
            np.testing.assert_allclose(bar.get_facecolor()[:3], info.palette[c] / 255.0)
        else:  # false positive: red name, red hatched bar
            assert tick.get_color() == vis.FP_RED
            assert bar.get_hatch() == "///"
            np.testing.assert_allclose(bar.get_edgecolor(), mcolors.to_rgba(vis.FP_RED))
    lines = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(lines) == 1 and lines[0].get_ydata()[0] == 15.5  # between ranks 16 and 17
    header = fig.texts[0].get_text()
    assert "4 classes, 3 within κ; top-20: 3 true (black), 17 false" in header
    assert f"{info.class_names[order[30]]} (#31, beyond κ)" in header


def test_chart_without_ground_truth_marks_nothing():
    info = _info()
    logits, _, _ = _chart_case()
    fig = vis.score_chart_figure(logits, 16, info.class_names, info.palette)
    ax = fig.axes[0]
    assert {mcolors.to_hex(b.get_facecolor()) for b in _bars(ax)} == {vis.NEUTRAL}
    assert {t.get_color() for t in ax.get_yticklabels()} == {"black"}
    assert not fig.legends and "ground truth" not in fig.texts[0].get_text()


@pytest.mark.parametrize("k,kappa", [(150, 50), (847, 100)])
def test_chart_readable_at_large_kappa(tmp_path, k, kappa):
    info = registry.get_dataset_info("ade20k_full") if k == 847 else registry.get_dataset_info(
        "ade20k")
    logits, order, gt = _chart_case(k, kappa)
    fig = vis.score_chart_figure(logits, kappa, info.class_names, info.palette, gt)
    ax = fig.axes[0]
    assert len(_bars(ax)) == 20  # the top 20, not kappa bars
    cut = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert cut[0].get_ydata()[0] == 19.5  # the cut is below the chart ...
    assert ax.texts[0].get_text().startswith(f"↓ κ = {kappa}: ranks 21-{kappa} are kept")
    score = 1 / (1 + np.exp(-logits[order[kappa - 1]]))
    assert f"cut is after rank {kappa} (score {score:.2f})" in fig.texts[0].get_text()
    path = vis.save(fig, str(tmp_path / "c.png"))
    w, h = Image.open(path).size
    assert 600 <= w <= 1000 and 500 <= h <= 1000  # 20 rows of ~28 px whatever K and kappa
