"""predict(): files written for a folder (with a corrupt file), labels, 16-bit maps."""

import numpy as np
import pytest
from helpers import tiny_config
from PIL import Image

from rankseg_jax import models
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
    return d, labels


def test_predict_folder(folder, tmp_path, capsys):
    images, labels = folder
    config = _config()
    written = predict.predict(config, models.build_model(config), images, tmp_path,
                              label_dir=labels)
    expected = {f"{s}_{kind}.png" for s in "abc" for kind in ("labels", "overlay", "scores")}
    assert {p.split("/")[-1] for p in written} == expected
    assert "broken.jpg" in capsys.readouterr().out
    for stem, shape in (("a", (40, 60)), ("b", (50, 30)), ("c", (30, 30))):
        lab = np.asarray(Image.open(tmp_path / f"{stem}_labels.png"))
        assert lab.shape == shape and lab.dtype == np.uint8 and lab.max() < 20
        Image.open(tmp_path / f"{stem}_overlay.png").verify()
        chart = Image.open(tmp_path / f"{stem}_scores.png")
        assert chart.size[0] > 100 and chart.size[1] > 100


def test_predict_single_unreadable_file_raises(folder, tmp_path):
    images, _ = folder
    config = _config()
    with pytest.raises(ValueError, match="broken.jpg"):
        predict.predict(config, models.build_model(config), images / "broken.jpg", tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        predict.predict(config, models.build_model(config), images / "missing.png", tmp_path)


def test_predict_16bit_labels_for_large_k(folder, tmp_path):
    images, _ = folder
    config = _config(num_classes=300)
    written = predict.predict(config, models.build_model(config), images / "a.jpg", tmp_path)
    assert len(written) == 3
    lab = np.asarray(Image.open(tmp_path / "a_labels.png"))
    assert lab.dtype == np.uint16 and lab.shape == (40, 60) and lab.max() < 300
