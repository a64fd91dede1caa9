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


def test_difficulty_knobs():
    # `confusable` = G: classes G*j .. G*j+G-1 share colour and texture, and lie in different
    # scenes; the other knobs change what they name and are validated.
    src = SyntheticSource(16, 300, (32, 32), num_scenes=4, confusable=4, seed=2)
    assert len(src._colour) == 4 and len(set(src._scene_of[:4].tolist())) == 4
    sums, n = np.zeros((16, 3)), np.zeros(16)
    for i in range(300):
        ex = src[i]
        for c in np.unique(ex["label"][ex["label"] != 255]):
            sums[c] += ex["image"][ex["label"] == c].mean(0)
            n[c] += 1
    mean = sums / np.maximum(n, 1)[:, None]
    same = np.mean([np.abs(mean[a] - mean[b]).mean() for a in range(16) for b in range(16)
                    if a != b and a // 4 == b // 4])
    other = np.mean([np.abs(mean[a] - mean[b]).mean() for a in range(16) for b in range(16)
                     if a // 4 != b // 4])
    assert same < 0.5 * other
    assert np.allclose(np.linalg.norm(SyntheticSource(32, 1, scene_cue=7.0)._scene_tint, axis=1),
                       7.0, atol=1e-4)
    # in_scene = 1: every class of an image is from one scene.
    pure = SyntheticSource(64, 30, (48, 48), num_scenes=8, in_scene=1.0, seed=5)
    for i in range(30):
        lab = pure[i]["label"]
        assert len(np.unique(lab[lab != 255] % 8)) == 1
    # noise = 0 removes the per-pixel noise only: the same layout, a smoother image.
    a = SyntheticSource(48, 4, (64, 64), seed=1)[0]
    b = SyntheticSource(48, 4, (64, 64), seed=1, noise=0.0)[0]
    np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(a["image"], b["image"])
    for bad in (dict(confusable=0), dict(in_scene=1.5), dict(scene_cue=-1.0), dict(tail=-1.0),
                dict(noise=-1.0)):
        with pytest.raises(ValueError, match="bad synthetic settings"):
            SyntheticSource(48, 4, **bad)


def test_from_config_reads_every_option():
    from rankseg_jax.config import base_config
    from rankseg_jax.data.pipeline import make_source

    c = base_config()
    c.model.num_classes, c.seed = 40, 3
    s = c.data.synthetic
    s.num_train, s.num_val, s.image_size = 7, 5, (40, 48)
    s.min_classes, s.max_classes, s.num_scenes = 2, 3, 4
    s.confusable, s.in_scene, s.scene_cue, s.tail, s.noise = 2, 0.5, 10.0, 1.0, 2.0
    direct = SyntheticSource(40, 5, (40, 48), 2, 3, 4, seed=3, split="val", confusable=2,
                             in_scene=0.5, scene_cue=10.0, tail=1.0, noise=2.0)
    for src in (SyntheticSource.from_config(c, "val"), make_source(c, "val")):
        assert len(src) == 5
        np.testing.assert_array_equal(src[1]["image"], direct[1]["image"])
        np.testing.assert_array_equal(src[1]["label"], direct[1]["label"])
    assert len(make_source(c, "train")) == 7
    s.confusable = 4  # every knob reaches the data
    assert not np.array_equal(make_source(c, "val")[1]["image"], direct[1]["image"])
