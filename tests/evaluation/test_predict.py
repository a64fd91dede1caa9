"""predict(): files written for a folder (with a corrupt file), ground truth, output names,
EXIF orientation, 16-bit maps, the summary; the CLI's --labels flag."""

import io

import numpy as np
import pytest
from helpers import tiny_config
from PIL import Image

from rankseg_jax import models
from rankseg_jax.data import pipeline
from rankseg_jax.evaluation import predict


def _config(num_classes=20):
    config = tiny_config("rankseg", num_classes=num_classes)
    config.data.test_scale, config.test.mode, config.test.stride = (128, 48), "slide", (32, 32)
    return config


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(d / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (50, 30, 3), dtype=np.uint8)).save(d / "b.png")
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(d / "c.bmp")  # gray
    (d / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    labels = tmp_path_factory.mktemp("labels")
    Image.fromarray(rng.integers(0, 5, (40, 60), dtype=np.uint8)).save(labels / "a.png")
    Image.fromarray(np.zeros((7, 7), np.uint8)).save(labels / "b.png")  # wrong size
    return d, labels


@pytest.fixture(scope="module")
def model20():
    config = _config()
    return config, models.build_model(config)


def test_predict_folder_with_labels(folder, model20, tmp_path, capsys):
    images, labels = folder
    config, model = model20
    written = predict.predict(config, model, images, tmp_path, label_dir=labels)
    expected = {f"{s}_{kind}.png" for s in "abc" for kind in ("labels", "panel", "scores")}
    assert {p.split("/")[-1] for p in written} == expected
    out = capsys.readouterr().out
    # The summary: counts, paths, ground truth used, problems named.
    assert "predict: 3 image(s)" in out and "broken.jpg" in out
    assert "3 panels (image | prediction | ground truth)" in out
    assert "ground truth used for 1 of 3 image(s)" in out
    assert "b.png: label size (7, 7) != image size (50, 30)" in out
    assert "c: no label" in out
    palette = pipeline.dataset_info(config).palette
    for stem, shape in (("a", (40, 60)), ("b", (50, 30)), ("c", (30, 30))):
        lab = Image.open(tmp_path / f"{stem}_labels.png")
        assert lab.mode == "P"
        ids = np.asarray(lab)
        assert ids.shape == shape and ids.max() < 20
        np.testing.assert_array_equal(
            np.array(lab.getpalette(), np.uint8).reshape(-1, 3)[:20], palette)
        for kind in ("panel", "scores"):
            im = Image.open(tmp_path / f"{stem}_{kind}.png")
            assert im.size[0] > 500 and im.size[1] > 300
    # a's panel shows its ground truth as a third view; c has none, so two views.
    assert (Image.open(tmp_path / "a_panel.png").size[0]
            > 1.4 * Image.open(tmp_path / "c_panel.png").size[0])


def test_same_stem_inputs_get_distinct_names_and_exif_is_applied(tmp_path, model20):
    config, model = model20
    rng = np.random.default_rng(1)
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(d / "same.jpg")
    Image.fromarray(rng.integers(0, 255, (40, 24, 3), dtype=np.uint8)).save(d / "same.png")
    # A phone photo stored sideways with EXIF orientation 6 (display: rotate 90 deg clockwise).
    upright = rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(buf, "JPEG",
                                                                     exif=exif.tobytes())
    (d / "phone.jpg").write_bytes(buf.getvalue())
    written = predict.predict(config, model, d, tmp_path / "out")
    names = sorted(p.split("/")[-1] for p in written)
    assert "same_jpg_labels.png" in names and "same_png_labels.png" in names
    assert "phone_labels.png" in names and len(names) == len(set(names)) == 9
    out = tmp_path / "out"
    assert np.asarray(Image.open(out / "same_jpg_labels.png")).shape == (24, 40)
    assert np.asarray(Image.open(out / "same_png_labels.png")).shape == (40, 24)
    assert np.asarray(Image.open(out / "phone_labels.png")).shape == (24, 40)  # upright


def test_output_name_clash_is_refused_before_any_work(tmp_path):
    p = tmp_path
    assert predict.output_stems([p / "a.jpg", p / "b.png"]) == ["a", "b"]
    assert predict.output_stems([p / "x.jpg", p / "X.png"]) == ["x_jpg", "X_png"]
    with pytest.raises(ValueError, match="same.jpg, same_jpg.png"):
        predict.output_stems([p / "same.jpg", p / "same.png", p / "same_jpg.png"])


def test_predict_single_unreadable_file_raises(folder, model20, tmp_path):
    images, _ = folder
    config, model = model20
    with pytest.raises(ValueError, match="broken.jpg"):
        predict.predict(config, model, images / "broken.jpg", tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        predict.predict(config, model, images / "missing.png", tmp_path)


def test_predict_16bit_labels_for_large_k(folder, tmp_path):
    images, _ = folder
    config = _config(num_classes=300)
    written = predict.predict(config, models.build_model(config), images / "a.jpg", tmp_path)
    assert [p.split("/")[-1] for p in written] == [
        "a_labels.png", "a_labels_color.png", "a_panel.png", "a_scores.png"]
    lab = np.asarray(Image.open(tmp_path / "a_labels.png"))
    assert lab.dtype == np.uint16 and lab.shape == (40, 60) and lab.max() < 300
    colour = np.asarray(Image.open(tmp_path / "a_labels_color.png"))
    np.testing.assert_array_equal(colour, pipeline.dataset_info(config).palette[lab])


def test_cli_labels_flag(tmp_path):
    from absl import app

    from rankseg_jax import cli

    argv = ["main.py", "--mode=predict", f"--checkpoint={tmp_path}", f"--input={tmp_path}",
            f"--output={tmp_path / 'out'}", f"--labels={tmp_path / 'nope'}"]
    cli.FLAGS(argv)
    try:
        assert cli.FLAGS.labels == str(tmp_path / "nope")
        with pytest.raises(app.UsageError, match="--labels=.*nope.* is not a folder"):
            cli.main([])  # refused before any model is loaded
    finally:
        cli.FLAGS.unparse_flags()
