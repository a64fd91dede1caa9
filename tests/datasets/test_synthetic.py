"""The procedural dataset: determinism, class ranges, scene structure, local ambiguity, cost."""

import time

import numpy as np
import pytest

from rankseg_jax.data.synthetic import SyntheticSource


@pytest.mark.parametrize("k", [150, 1284])
def test_labels_valid_and_deterministic(k):
    a = SyntheticSource(k, 50, (96, 128), seed=3)
    b = SyntheticSource(k, 50, (96, 128), seed=3)
    counts = []
    for i in range(12):
        ea, eb = a[i], b[i]
        np.testing.assert_array_equal(ea["image"], eb["image"])
        np.testing.assert_array_equal(ea["label"], eb["label"])
        assert ea["image"].shape == (96, 128, 3) and ea["image"].dtype == np.uint8
        assert ea["label"].shape == (96, 128) and ea["label"].dtype == np.int32
        lab = ea["label"]
        assert ((lab >= 0) & (lab < k) | (lab == 255)).all()
        counts.append(len(np.unique(lab[lab != 255])))
    assert max(counts) <= 8 and np.mean([c >= 2 for c in counts]) >= 0.9
    assert not np.array_equal(a[0]["label"], a[1]["label"])
    assert not np.array_equal(a[0]["image"], SyntheticSource(k, 50, (96, 128), seed=4)[0]["image"])
    val = SyntheticSource(k, 50, (96, 128), seed=3, split="val")
    assert not np.array_equal(a[0]["image"], val[0]["image"])


def test_some_ignore_pixels_and_all_classes_reachable():
    src = SyntheticSource(150, 400, (64, 64), seed=0)
    seen, ignore = set(), []
    for i in range(400):
        lab = src[i]["label"]
        ignore.append((lab == 255).mean())
        seen |= set(np.unique(lab[lab != 255]).tolist())
    assert 0.001 < np.mean(ignore) < 0.15
    assert len(seen) > 100  # long-tailed, but most classes do occur


def test_classes_depend_on_scene():
    # Class c belongs to scene c % S; most classes of an image share one scene.
    src = SyntheticSource(150, 200, (64, 64), num_scenes=8, seed=1)
    fractions = []
    for i in range(200):
        lab = src[i]["label"]
        cls = np.unique(lab[lab != 255])
        if len(cls) >= 2:
            fractions.append(np.bincount(cls % 8).max() / len(cls))
    # Uniformly drawn classes would give ~0.35 for 4-5 classes over 8 scenes.
    assert np.mean(fractions) > 0.7


def test_partner_classes_look_alike_locally():
    # Classes 2j and 2j+1 share colour and texture: mean colours differ only by the scene tint
    # and brightness (|shift| <~ 50), while unrelated classes differ far more on average.
    src = SyntheticSource(16, 600, (64, 64), num_scenes=4, seed=2)
    sums = np.zeros((16, 3))
    n = np.zeros(16)
    for i in range(600):
        ex = src[i]
        for c in np.unique(ex["label"][ex["label"] != 255]):
            m = ex["label"] == c
            sums[c] += ex["image"][m].mean(0)
            n[c] += 1
    mean = sums / np.maximum(n, 1)[:, None]
    partner = np.mean([np.abs(mean[2 * j] - mean[2 * j + 1]).mean() for j in range(8)])
    others = np.mean([np.abs(mean[a] - mean[b]).mean() for a in range(0, 16, 2)
                      for b in range(0, 16, 2) if a != b])
    assert partner < 0.5 * others


def test_cost_of_a_512_sample():
    src = SyntheticSource(1284, 100)
    src[0]
    t = time.perf_counter()
    for i in range(10):
        src[i]
    per = (time.perf_counter() - t) / 10
    assert per < 0.05, f"{per * 1e3:.1f} ms per 512x512 sample"  # ~4 ms on an idle core


def test_class_names_follow_the_scenes():
    from rankseg_jax.config import base_config
    from rankseg_jax.data import registry, synthetic
    from rankseg_jax.data.pipeline import dataset_info

    names = synthetic.class_names(48, 8)
    assert len(set(names)) == 48 and names == synthetic.class_names(48, 8)
    pools = dict(synthetic.SCENE_NAMES)
    scenes = [scene for scene, _ in synthetic.SCENE_NAMES]
    for c, name in enumerate(names):  # class c is the (c // 8)-th class of scene c % 8
        assert name == pools[scenes[c % 8]][c // 8]
    big = synthetic.class_names(1284, 8)
    assert len(set(big)) == 1284 and big[1280] == "parasol 14"  # rank 160 = 13 * 12 + 4
    assert len(set(synthetic.class_names(40, 20))) == 40  # more scenes than themes
    # The config's scene count reaches the dataset info, and K < S clamps as the data do.
    c = base_config()
    c.model.num_classes = 30
    c.data.synthetic.num_scenes = 3
    assert dataset_info(c).class_names == synthetic.class_names(30, 3)
    assert registry.get_dataset_info("synthetic", num_classes=2).class_names == ("sand", "tree")
