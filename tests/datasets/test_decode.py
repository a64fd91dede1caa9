"""The one image decoder: EXIF orientation, trailing bytes, truncation and corrupt scan data get
the same verdict in the folder source, the prepared (ArrayRecord) source, data preparation and
the predict reader."""

import io
import os
import threading

import cv2
import data_layouts as dl
import numpy as np
import pytest
from PIL import Image, ImageOps

from data.prepare import prepare
from rankseg_jax.data import decode
from rankseg_jax.data import registry as datasets
from rankseg_jax.data.pipeline import GuardedSource
from rankseg_jax.data.sources import ArrayRecordSource, BadExampleError, FolderSource

HW = (24, 40)  # the layout's label size: an image must decode to this size


def _upright(hw=HW, seed=0) -> np.ndarray:
    # A picture whose orientation shows: a horizontal ramp in R, a vertical one in G.
    h, w = hw
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(0, 250, w, dtype=np.uint8)[None]
    img[..., 1] = np.linspace(0, 250, h, dtype=np.uint8)[:, None]
    img[..., 2] = np.random.default_rng(seed).integers(0, 60, (h, w))
    return img


def _jpeg(rgb: np.ndarray, orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    kw = {"quality": 95}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation  # the EXIF Orientation tag
        kw["exif"] = exif.tobytes()
    Image.fromarray(rgb).save(buf, "JPEG", **kw)
    return buf.getvalue()


def _scan_start(data: bytes) -> int:
    return data.index(b"\xff\xda")


def _corrupt_scan(data: bytes) -> bytes:
    # The scan is cut short but the end-of-image marker kept: libjpeg warns "premature end of
    # data segment", fills the rest with grey, and cv2 returns the image without complaint.
    return data[:_scan_start(data) + 120] + b"\xff\xd9"


def _ade(tmp_path):
    root = dl.write_dataset(tmp_path / "ade", "ade20k", n_per_split=2)
    return root, datasets.get_dataset_info("ade20k")


def _every_path(tmp_path, root, info, index):
    """The image of train pair `index` as the folder source, a prepared dataset and the
    predict reader decode it (prepare must accept the whole dataset)."""
    path = root / "images/training" / f"train_{index:03d}.jpg"
    prepare("ade20k", str(root), str(tmp_path / "out"))
    return (FolderSource(root, info, "train")[index]["image"],
            ArrayRecordSource(tmp_path / "out", info, "train")[index]["image"],
            decode.read_image_file(path))


def test_exif_orientation_is_applied_on_every_path(tmp_path):
    root, info = _ade(tmp_path)
    upright = _upright()
    # Stored sideways (as a phone sensor does) with orientation 6: "rotate 90 deg clockwise".
    data = _jpeg(np.ascontiguousarray(np.rot90(upright, 1)), orientation=6)
    (root / "images/training/train_001.jpg").write_bytes(data)
    stored = cv2.imdecode(np.frombuffer(data, np.uint8),
                          cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)[..., ::-1]
    assert stored.shape[:2] == HW[::-1]
    expected = np.rot90(stored, -1)
    with Image.open(io.BytesIO(data)) as im:  # the EXIF standard, as Pillow implements it
        assert ImageOps.exif_transpose(im).size == (HW[1], HW[0])
    assert np.abs(expected.astype(int) - upright).mean() < 6  # JPEG loss only
    for got in _every_path(tmp_path, root, info, 1):
        np.testing.assert_array_equal(got, expected)
    # The label is never rotated: it matches the upright image, so the pair is valid.
    assert FolderSource(root, info, "train")[1]["label"].shape == HW


def test_bytes_after_the_end_marker_are_accepted(tmp_path):
    root, info = _ade(tmp_path)
    path = root / "images/training/train_000.jpg"
    clean = path.read_bytes()
    # 5 KiB of trailer, with a second complete JPEG inside, as phones append previews.
    trailer = _jpeg(_upright(seed=1)) + os.urandom(5000)
    path.write_bytes(clean + trailer)
    want = decode.decode_image(clean, "clean")
    for got in _every_path(tmp_path, root, info, 0):
        np.testing.assert_array_equal(got, want)
    png = io.BytesIO()
    Image.fromarray(want).save(png, "PNG")
    np.testing.assert_array_equal(decode.decode_image(png.getvalue() + b"\0" * 3000, "p"),
                                  want)


def test_truncated_files_are_refused_despite_a_thumbnail_end_marker(tmp_path):
    main = _jpeg(_upright())
    thumb = _jpeg(_upright((8, 8)))
    app1 = b"Exif\0\0" + thumb  # a thumbnail with its own end-of-image marker
    data = main[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + main[2:]
    np.testing.assert_array_equal(decode.decode_image(data, "whole"),
                                  decode.decode_image(main, "main"))
    assert decode.jpeg_end(data) == len(data)
    cut = data[:len(data) - 200]
    assert b"\xff\xd9" in cut  # the thumbnail's marker is still there
    with pytest.raises(BadExampleError, match="cut.jpg: truncated"):
        decode.decode_image(cut, "cut.jpg")
    png = io.BytesIO()
    Image.fromarray(_upright()).save(png, "PNG")
    with pytest.raises(BadExampleError, match="cut.png: truncated PNG"):
        decode.decode_image(png.getvalue()[:-30], "cut.png")


@pytest.mark.parametrize("damage", ["cut_scan", "marker_in_scan"])
def test_corrupt_scan_data_gets_one_verdict(tmp_path, damage):
    root, info = _ade(tmp_path)
    path = root / "images/training/train_001.jpg"
    good = path.read_bytes()
    s = _scan_start(good) + 60
    data = (_corrupt_scan(good) if damage == "cut_scan"
            else good[:s] + b"\xff\xd3" + good[s:])  # a stray RST3 marker inside the scan
    # cv2 alone decodes the damaged file without an error: the old, silent verdict.
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    path.write_bytes(data)
    match = r"train_001.jpg: corrupt JPEG data \(libjpeg: Corrupt JPEG data"
    with pytest.raises(BadExampleError, match=match):
        FolderSource(root, info, "train")[1]
    with pytest.raises(BadExampleError, match=match):
        decode.read_image_file(path)
    with pytest.raises(BadExampleError, match=match):
        prepare("ade20k", str(root), str(tmp_path / "out"))
    # Under the 'skip' policy training replaces and counts it.
    ex = GuardedSource(FolderSource(root, info, "train"), "skip")[1]
    assert ex["name"] == "train_000" and ex["_skipped"] == 1


def test_warning_capture_keeps_stderr_and_is_thread_safe(capfd):
    good = _jpeg(_upright())
    bad = _corrupt_scan(good)
    result, text = decode._CAPTURE.call(os.write, 2, b"not from libjpeg\n")
    assert text == "not from libjpeg\n"
    assert decode._corruption("other line\nCorrupt JPEG data: bad Huffman code\n") == (
        "Corrupt JPEG data: bad Huffman code")
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert "other line" in err and "after" in err and "Corrupt" not in err
    verdicts = {}

    def run(i):
        try:
            decode.decode_image(bad if i % 2 else good, f"img{i}")
            verdicts[i] = "ok"
        except BadExampleError:
            verdicts[i] = "bad"

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verdicts == {i: "bad" if i % 2 else "ok" for i in range(16)}
    os.write(2, b"still here\n")
    assert "still here" in capfd.readouterr().err
