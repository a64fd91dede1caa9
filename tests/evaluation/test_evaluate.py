"""Evaluation and memory-light inference: official fixtures, full-K equivalence, TTA, e2e."""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FIXTURES, tiny_config

from rankseg_jax import models, resize
from rankseg_jax.evaluation import evaluate, full_logits, inference, metrics, windows

pytest.importorskip("torch")  # the official checkpoints are torch files
from rankseg_jax.convert.tables import mmseg  # noqa: E402


@pytest.fixture(scope="module")
def io():
    return dict(np.load(FIXTURES / "io.npz"))


def _images(io):
    return io["images"].transpose(0, 2, 3, 1)  # NCHW -> NHWC


def _official(kind, mode):
    config = tiny_config(kind)
    config.test.mode, config.test.stride, config.test.class_chunk = mode, (32, 32), 3
    model = models.build_model(config)
    mmseg.load_official_checkpoint(model, FIXTURES / f"{kind}.pth", config)
    return config, model


@pytest.fixture(scope="module", params=[("rankseg", "whole"), ("rankseg", "slide"),
                                        ("baseline", "slide")])
def engine(request):
    config, model = _official(*request.param)
    return request.param, config, model, inference.Inferencer(config, model)


def _naive_pred(model, config, image, ori, flip):
    """Independent full-K path: official logits, float64 resize, un-flip, argmax."""
    x = image[:, ::-1] if flip else image
    logits = np.asarray(full_logits.inference_logits(
        model, jnp.asarray(np.ascontiguousarray(x))[None], mode=config.test.mode, crop=(48, 48),
        stride=(32, 32)), np.float64)[0]
    h, w = logits.shape[1:]
    out = np.einsum("Hh,khw,Ww->kHW", resize.bilinear_matrix(h, ori[0]), logits,
                    resize.bilinear_matrix(w, ori[1]))
    return out[..., ::-1] if flip else out


def _sure(scores, gap=1e-3):
    top2 = np.sort(scores, axis=0)[-2:]
    return (top2[1] - top2[0]) > gap


def test_matches_official_fixture_predictions(engine, io):
    (kind, mode), _, _, eng = engine
    for i, image in enumerate(_images(io)):
        res = eng.predict([(image, False)], (64, 64))
        sure = _sure(io[f"{kind}.{mode}_logits"][i])
        np.testing.assert_array_equal(res.pred[sure], io[f"{kind}.{mode}_pred"][i][sure])
        if kind == "rankseg" and mode == "whole":
            np.testing.assert_array_equal(res.topk, io["rankseg.head_train_topk_index"][i])


@pytest.mark.parametrize("flip", [False, True])
def test_memory_light_equals_full_k_argmax(engine, io, flip):
    """Rescaled to another size, flipped or not: same argmax (and areas) as full K."""
    _, config, model, eng = engine
    ori = (50, 70)
    label = np.asarray(jax.image.resize(io["labels"][0].astype(np.float32), ori, "nearest"),
                       np.int64)
    image = _images(io)[0]
    view = (np.ascontiguousarray(image[:, ::-1]) if flip else image, flip)
    ref = _naive_pred(model, config, image, ori, flip)
    pred = eng.predict([view], ori).pred
    sure = _sure(ref, 1e-4)
    np.testing.assert_array_equal(pred[sure], ref.argmax(0)[sure])
    eng.memory_light = False
    try:
        naive = eng.predict([view], ori).pred
    finally:
        eng.memory_light = True
    assert (naive == pred).mean() > 0.999
    a = metrics.compute_metrics(metrics.intersect_and_union_np(pred, label, 20))
    b = metrics.compute_metrics(metrics.intersect_and_union_np(naive, label, 20))
    if (naive == pred).all():
        assert a["mIoU"] == b["mIoU"]


def test_slide_windows_choose_different_topk_union(io):
    """Overlapping windows with different top-kappa: the union path is exact, with K > union
    (K=40, kappa=3) and slot chunks smaller than the union."""
    config = tiny_config("rankseg", num_classes=40, topk=3)
    config.test.mode, config.test.stride, config.test.class_chunk = "slide", (32, 32), 2
    model = models.build_model(config)
    eng = inference.Inferencer(config, model)
    image = _images(io)[1]
    _, topk, _, _ = eng._run_view(image, None)
    assert len({tuple(t) for t in np.asarray(topk)[:, 0]}) > 1  # windows disagree
    ref = _naive_pred(model, config, image, (64, 64), False)
    pred = eng.predict([(image, False)], (64, 64)).pred
    sure = _sure(ref, 1e-4)
    assert sure.mean() > 0.95
    np.testing.assert_array_equal(pred[sure], ref.argmax(0)[sure])
    # Pixels where only the -100 averaging makes a class win are covered too: the union has
    # classes from a single window, which are (l - 100) / 2 in the overlap.
    assert set(np.unique(pred)) <= set(np.unique(np.asarray(topk)))


def test_multiscale_flip_average_of_softmax(io):
    config, model = _official("rankseg", "slide")
    eng = inference.Inferencer(config, model)
    image = _images(io)[0]
    small = np.asarray(jax.image.resize(image, (48, 56, 3), "linear"))
    views = [(image, False), (np.ascontiguousarray(image[:, ::-1]), True), (small, False),
             (np.ascontiguousarray(small[:, ::-1]), True)]
    ori = (60, 72)
    probs = []
    for img, flip in views:
        logits = _naive_pred(model, config, img[:, ::-1] if flip else img, ori, flip)
        e = np.exp(logits - logits.max(0))
        probs.append(e / e.sum(0))
    mean = np.mean(probs, axis=0)
    pred = eng.predict(views, ori).pred
    sure = _sure(mean, 1e-5)
    assert sure.mean() > 0.98
    np.testing.assert_array_equal(pred[sure], mean.argmax(0)[sure])


def test_views_scales_and_flip():
    config = tiny_config("rankseg")
    config.data.test_scale, config.test.scales, config.test.flip = (128, 64), (0.5, 1.0), True
    eng = inference.Inferencer(config, models.build_model(config))
    views = eng.views(np.zeros((30, 40, 3), np.uint8))
    assert [(v.shape[:2], f) for v, f in views] == [((32, 43), False), ((32, 43), True),
                                                   ((64, 85), False), ((64, 85), True)]


def test_window_matrices_count_is_separable():
    boxes = windows.slide_windows(70, 90, (48, 48), (32, 32))
    rows = windows.axis_counts(70, [b[:2] for b in boxes])
    cols = windows.axis_counts(90, [b[2:] for b in boxes])
    count = np.zeros((70, 90))
    for y1, y2, x1, x2 in boxes:
        count[y1:y2, x1:x2] += 1
    np.testing.assert_array_equal(count, rows[:, None] * cols[None])


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_evaluate_end_to_end_synthetic(tmp_path, mode):
    config = tiny_config("rankseg")
    config.data.synthetic.num_val, config.data.synthetic.image_size = 3, (40, 60)
    config.data.test_scale, config.data.read_threads = (128, 48), 1
    config.test.mode, config.test.stride = mode, (32, 32)
    model = models.build_model(config)
    out = evaluate.evaluate(config, model, tmp_path, step=7)
    for key in ("mIoU", "mAcc", "aAcc", "IoU", "Acc", "img_AP", "img_recall", "img_precision",
                "pixel_recall", "num_images", "images_per_s"):
        assert key in out
    assert out["num_images"] == 3 and out["IoU"].shape == (20,)
    assert int(out["area_label"].sum()) > 0
    doc = json.loads((tmp_path / "eval_val_step7.json").read_text())
    assert {"aAcc", "mIoU", "mAcc", "per_class", "extra"} <= set(doc)
    assert set(doc["extra"]["multilabel"]) == {"img_AP", "img_recall", "img_precision",
                                               "pixel_recall"}
    assert len(doc["per_class"]) == 20
    rows = list(csv.reader((tmp_path / "eval_val_step7.csv").open()))
    assert rows[0][:3] == ["class", "IoU", "Acc"] and len(rows) == 1 + 20 + 2
    if mode == "slide":  # the full-K path gives the same areas
        config.test.memory_light = False
        ref = evaluate.evaluate(config, model, None)
        np.testing.assert_array_equal(ref["area_intersect"], out["area_intersect"])
        assert ref["mIoU"] == out["mIoU"]


def test_evaluate_multiscale_flip_synthetic(tmp_path):
    config = tiny_config("baseline")
    config.data.synthetic.num_val, config.data.synthetic.image_size = 2, (40, 60)
    config.data.test_scale, config.data.read_threads = (128, 48), 1
    config.test.mode, config.test.scales, config.test.flip = "whole", (0.75, 1.0), True
    out = evaluate.evaluate(config, models.build_model(config), tmp_path)
    assert out["num_images"] == 2 and "img_AP" not in out
    assert (tmp_path / "eval_val.json").exists()


def test_allgather_sum_single_process():
    v = np.array([3, 2**40, 0], np.int64)
    np.testing.assert_array_equal(evaluate.allgather_sum(v), v)


_GATHER_WORKER = """
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[2], num_processes=2, process_id=int(sys.argv[1]))
import numpy as np
from rankseg_jax.evaluation import evaluate
pid = int(sys.argv[1])
print(evaluate.allgather_sum(np.array([3 + pid, 2**40 + pid, 7], np.int64)).tolist())
"""


def test_allgather_sum_two_processes(tmp_path):
    """Two CPU processes (jax.distributed + gloo): int64 totals are summed exactly."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(_GATHER_WORKER)
    env = {**__import__("os").environ, "PYTHONPATH": str(FIXTURES.parents[2])}
    procs = [subprocess.Popen([sys.executable, str(script), str(i), f"localhost:{port}"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env=env) for i in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for out in outs:
        assert out.strip().splitlines()[-1] == str([7, 2 * 2**40 + 1, 14])
