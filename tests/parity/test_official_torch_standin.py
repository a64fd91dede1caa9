"""The PyTorch stand-in of the official step (benchmarks/official_torch.py) reproduces the
official fixtures: checkpoints load strictly, and every backbone/head output, loss, logged
accuracy and whole/slide inference array of io.npz matches.

Tolerance: both sides are float32 PyTorch (the fixtures were made with the same torch 2.13,
manifest.json) running the same operations; what differs is the machine, hence the CPU
kernels' accumulation order. Observed: max |diff| 1.3e-6 on the O(1) backbone features and
<= 3.4e-6 on head logits, while both sides are 3.8e-6 away from a float64 run of the same
weights, i.e. pure float32 rounding. rtol = atol = 1e-5 leaves headroom for that and still
catches a real deviation (a wrong eps, a missing norm or a swapped axis moves values by
>= 1e-3). Top-k indices, remapped labels and argmax maps (away from near-ties) are exact.
"""

import copy
import json
import pathlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks import official_torch as ot  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "official"
TOL = dict(rtol=1e-5, atol=1e-5)
# The fixtures' tiny models (manifest.json "configs"): 64x64 input, embed 64, 2 layers,
# 2 heads, 20 classes, RankSeg top-k 8 on a 2x2 pooled grid, no dropout / drop path.
TINY = dict(embed_dims=64, depth=2, heads=2, img_size=64, num_classes=20, topk=8,
            downsample=2, drop_path_rate=0.0, dropout=0.0, out_indices=(0, 1))
_SLIDE = json.loads((FIXTURES / "manifest.json").read_text())["configs"]["slide_test_cfg"]
CROP, STRIDE = tuple(_SLIDE["crop_size"]), tuple(_SLIDE["stride"])  # (48, 48), (32, 32)


def assert_close(actual, expected, **tol):
    actual = actual.detach().numpy() if isinstance(actual, torch.Tensor) else actual
    np.testing.assert_allclose(actual, expected, **(tol or TOL))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Deterministic reductions (and a quiet neighbour on a shared CPU).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def io():
    return dict(np.load(FIXTURES / "io.npz"))


@pytest.fixture(scope="module", params=["baseline", "rankseg"])
def loaded(request):
    kind = request.param
    model = ot.build(kind, **TINY)
    result = ot.load_checkpoint(model, FIXTURES / f"{kind}.pth", strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return kind, model


def _images(io, sl=slice(None)):
    return torch.from_numpy(io["images"][sl])


def _labels(io, sl=slice(None)):
    return torch.from_numpy(io["labels"][sl])


def test_fixture_config_is_the_tiny_one():
    configs = json.loads((FIXTURES / "manifest.json").read_text())["configs"]
    for kind in ("baseline", "rankseg"):
        bb, head = configs[kind]["backbone"], configs[kind]["decode_head"]
        assert (bb["embed_dims"], bb["num_layers"], bb["num_heads"]) == (64, 2, 2)
        assert tuple(bb["out_indices"]) == TINY["out_indices"]
        assert head["n_cls"] == TINY["num_classes"] and head["dropout"] == 0.0
    assert configs["rankseg"]["decode_head"]["topk_cls"] == TINY["topk"]
    assert configs["rankseg"]["decode_head"]["downsample"] == TINY["downsample"]
    assert configs["rankseg"]["decode_head"]["img_loss_weight"] == ot.IMG_LOSS_WEIGHT


def test_full_size_state_dicts_match_the_official_key_order():
    """ViT-B/16 ADE20K baseline (183 tensors) and RankSeg K=50 (199): names, order, shapes."""
    official = json.loads((FIXTURES / "state_dict_keys.json").read_text())["models"]
    with torch.device("meta"):  # shapes only, no memory
        for name, kind in (("segmenter-ori_vit-b16_512x512_160k_ade20k", "baseline"),
                           ("segmenter-ori_rankseg_vit-b16_512x512_160k_ade20k", "rankseg")):
            model = ot.build_preset("b16", kind, 512, 150)
            got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
            assert got == official[name]


def test_backbone_and_pos_embed(loaded, io):
    kind, model = loaded
    model.eval()
    with torch.no_grad():
        outs = model.backbone(_images(io))
        pos = ot.resize_pos_embed(model.backbone.pos_embed, (3, 3), (4, 4))
    assert len(outs) == 2
    assert_close(outs[0], io[f"{kind}.backbone_out0"])
    assert_close(outs[1], io[f"{kind}.backbone_out1"])
    assert_close(pos, io[f"{kind}.pos_embed_resized_3x3"])


def test_head_outputs(loaded, io):
    kind, model = loaded
    with torch.no_grad():
        feat = model.eval().extract_feat(_images(io))
        eval_out = model.decode_head(feat)
        train_out = model.train().decode_head(feat)
    model.eval()
    if kind == "baseline":
        assert_close(train_out, io["baseline.head_train_masks"])
        assert_close(eval_out, io["baseline.head_eval_masks"])
        return
    img_pred, topk, masks = train_out
    assert_close(img_pred, io["rankseg.head_train_img_pred"])
    np.testing.assert_array_equal(topk.numpy(), io["rankseg.head_train_topk_index"])
    assert_close(masks, io["rankseg.head_train_masks"])
    assert_close(eval_out, io["rankseg.head_eval_full_masks"])
    with torch.no_grad():
        pixels, pooled, cls_ml_feat, _, _ = model.decode_head.multi_label(feat)
    assert_close(pixels, io["rankseg.head_pixel_tokens"])
    assert_close(pooled, io["rankseg.head_pooled_tokens"])
    assert_close(cls_ml_feat, io["rankseg.head_cls_ml_feat"])


def _per_image_losses(model, io, i):
    with torch.no_grad():
        return model.train().forward_train(_images(io, slice(i, i + 1)),
                                           _labels(io, slice(i, i + 1))[:, None])


def test_losses_and_logged_metrics(loaded, io):
    """Per image (the official runs use one image per GPU) and over the batch of 2."""
    kind, model = loaded
    with torch.no_grad():
        losses = model.train().forward_train(_images(io), _labels(io)[:, None])
    model.eval()
    if kind == "baseline":
        assert_close(losses["decode.loss_seg"], io["baseline.loss_seg"])
        assert_close(losses["decode.acc_seg"], io["baseline.acc_seg"][None])
        for i in range(2):
            one = _per_image_losses(model, io, i)
            assert_close(one["decode.loss_seg"], io["baseline.loss_seg_per_image"][i])
        return
    head = model.decode_head
    hist = head.class_histogram(_labels(io)[:, None])
    assert_close((hist > 0).float(), io["rankseg.img_target"], rtol=0, atol=0)
    topk = torch.from_numpy(io["rankseg.head_train_topk_index"])
    np.testing.assert_array_equal(head.topk_label(_labels(io), topk).numpy(),
                                  io["rankseg.topk_label"])
    assert_close(losses["decode.loss_img"], io["rankseg.loss_img_batch_mean"])
    assert_close(losses["decode.loss_seg"], io["rankseg.loss_seg_batch_mean"])
    for i in range(2):
        one = _per_image_losses(model, io, i)
        for name in ("loss_img", "loss_seg", "acc_seg", "acc_pix", "acc_img",
                     "acc_img_accuracy"):
            assert_close(one[f"decode.{name}"].reshape(()), io[f"rankseg.{name}_per_image"][i])
    # The logged batch accuracies are the means of the per-image ones (equal-size images).
    for name in ("acc_seg", "acc_pix", "acc_img", "acc_img_accuracy"):
        assert_close(losses[f"decode.{name}"].reshape(()),
                     io[f"rankseg.{name}_per_image"].mean())


def test_train_step_logs_the_official_losses_and_updates(loaded, io):
    """train_step: poly lr set, log vars = the official losses as floats (computed before
    the update), total = sum of the 'loss' entries, parameters move."""
    kind, model = loaded
    model = copy.deepcopy(model)
    optimizer = ot.make_optimizer(model)
    before = model.decode_head.proj_dec.weight.detach().clone()
    log = ot.train_step(model, optimizer, _images(io), _labels(io), it=10, max_iters=100)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(ot.poly_lr(10, 100))
    assert all(isinstance(v, float) for v in log.values())
    if kind == "baseline":
        assert log["loss"] == pytest.approx(float(io["baseline.loss_seg"]), rel=1e-5)
        assert log["decode.acc_seg"] == pytest.approx(float(io["baseline.acc_seg"]), rel=1e-5)
    else:
        expected = io["rankseg.loss_img_batch_mean"] + io["rankseg.loss_seg_batch_mean"]
        assert log["loss"] == pytest.approx(float(expected), rel=1e-5)
        assert set(log) == {"decode.loss_img", "decode.loss_seg", "decode.acc_seg",
                            "decode.acc_pix", "decode.acc_img", "decode.acc_img_accuracy",
                            "loss"}
    assert not torch.equal(before, model.decode_head.proj_dec.weight)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_inference_logits_probs_pred(loaded, io, mode):
    kind, model = loaded
    model.eval()
    with torch.no_grad():
        if mode == "whole":
            logits = ot.whole_inference(model, _images(io))
            probs = ot.inference(model, _images(io))
        else:
            logits = ot.slide_inference(model, _images(io), CROP, STRIDE)
            probs = ot.inference(model, _images(io), "slide", CROP, STRIDE)
    assert_close(logits, io[f"{kind}.{mode}_logits"])
    assert_close(probs, io[f"{kind}.{mode}_probs"])
    if mode == "whole":
        pred = ot.infer_whole(model, _images(io))
    else:
        pred = probs.argmax(1).numpy()
    ref = io[f"{kind}.{mode}_logits"]
    top2 = np.sort(ref, axis=1)[:, -2:]
    sure = (top2[:, 1] - top2[:, 0]) > 1e-4  # exact-argmax check away from float32 near-ties
    assert sure.mean() > 0.99
    np.testing.assert_array_equal(pred[sure], io[f"{kind}.{mode}_pred"][sure])


def test_slide_crops_choose_their_own_topk(io):
    model = ot.build("rankseg", **TINY)
    ot.load_checkpoint(model, FIXTURES / "rankseg.pth")
    model.eval()
    boxes = io["rankseg.slide_crop_boxes"]
    with torch.no_grad():
        for n, (y1, y2, x1, x2) in enumerate(boxes):
            feat = model.extract_feat(_images(io)[:, :, y1:y2, x1:x2])
            img_pred = model.decode_head.multi_label(feat)[3]
            assert_close(img_pred, io["rankseg.slide_crop_img_pred"][:, n])


def test_drop_path_and_dropout_are_live_in_train_mode_only():
    torch.manual_seed(0)
    drop = ot.DropPath(0.5).train()
    y = drop(torch.ones(4000, 3))
    assert set(torch.unique(y).tolist()) == {0.0, 2.0}  # whole samples dropped, rest / keep
    assert abs((y[:, 0] == 0).float().mean().item() - 0.5) < 0.05
    assert torch.equal(drop.eval()(torch.ones(5, 3)), torch.ones(5, 3))
    model = ot.build("rankseg", **{**TINY, "drop_path_rate": 0.1, "dropout": 0.1})
    assert [layer.attn.dropout_layer.drop_prob for layer in model.backbone.layers] == \
        pytest.approx([0.0, 0.1])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = (model.train().decode_head(model.extract_feat(x))[2] for _ in range(2))
        c, d = (model.eval().decode_head(model.extract_feat(x)) for _ in range(2))
    assert not torch.equal(a, b) and torch.equal(c, d)
