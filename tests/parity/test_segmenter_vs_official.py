"""Converted official checkpoints reproduce every array of the official fixtures (io.npz)."""

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FIXTURES, tiny_config

from rankseg_jax import models
from rankseg_jax.convert import engine, torch_io
from rankseg_jax.convert.tables import mmseg
from rankseg_jax.evaluation import full_logits, windows
from rankseg_jax.models.backbones import vit
from rankseg_jax.rankseg import ranking
from rankseg_jax.train import losses

pytest.importorskip("torch")
ATOL = 1e-4


@pytest.fixture(scope="module")
def io():
    return dict(np.load(FIXTURES / "io.npz"))


@pytest.fixture(scope="module", params=["baseline", "rankseg"])
def loaded(request):
    kind = request.param
    config = tiny_config(kind)
    model = models.build_model(config)
    mmseg.load_official_checkpoint(model, FIXTURES / f"{kind}.pth", config)
    return kind, config, model


def _images(io):
    return jnp.asarray(io["images"]).transpose(0, 2, 3, 1)  # NCHW -> NHWC


def test_backbone_and_pos_embed(loaded, io):
    kind, _, model = loaded
    grid, _ = model.backbone(_images(io))
    np.testing.assert_allclose(grid.transpose(0, 3, 1, 2), io[f"{kind}.backbone_out1"],
                               atol=ATOL)
    pos = vit.resize_pos_embed(model.backbone.pos_embed[...], (4, 4), (3, 3))
    np.testing.assert_allclose(pos, io[f"{kind}.pos_embed_resized_3x3"], atol=ATOL)


def test_head_outputs(loaded, io):
    kind, _, model = loaded
    out = model(_images(io), train=True, full_logits=True)
    if kind == "baseline":
        np.testing.assert_allclose(out["mask_logits"], io["baseline.head_train_masks"],
                                   atol=ATOL)
        np.testing.assert_allclose(out["full_logits"], io["baseline.head_eval_masks"],
                                   atol=ATOL)
        return
    np.testing.assert_allclose(out["image_logits"], io["rankseg.head_train_img_pred"], atol=ATOL)
    np.testing.assert_array_equal(out["topk_index"], io["rankseg.head_train_topk_index"])
    np.testing.assert_allclose(out["mask_logits"], io["rankseg.head_train_masks"], atol=ATOL)
    np.testing.assert_allclose(out["full_logits"], io["rankseg.head_eval_full_masks"],
                               atol=ATOL)
    np.testing.assert_allclose(out["class_features"], io["rankseg.head_cls_ml_feat"], atol=ATOL)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_inference_logits_probs_pred(loaded, io, mode):
    kind, config, model = loaded
    logits = full_logits.inference_logits(model, _images(io), mode=mode, crop=(48, 48),
                                        stride=(32, 32))
    np.testing.assert_allclose(logits, io[f"{kind}.{mode}_logits"], atol=ATOL)
    probs = np.array(jnp.exp(logits - logits.max(1, keepdims=True)))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, io[f"{kind}.{mode}_probs"], atol=ATOL)
    ref = io[f"{kind}.{mode}_logits"]
    top2 = np.sort(ref, axis=1)[:, -2:]
    sure = (top2[:, 1] - top2[:, 0]) > 1e-3  # skip official near-ties (README)
    pred = np.asarray(logits.argmax(1))
    np.testing.assert_array_equal(pred[sure], io[f"{kind}.{mode}_pred"][sure])


def test_slide_crops_choose_their_own_topk(io):
    config = tiny_config("rankseg")
    model = models.build_model(config)
    mmseg.load_official_checkpoint(model, FIXTURES / "rankseg.pth", config)
    boxes = windows.slide_windows(64, 64, (48, 48), (32, 32))
    np.testing.assert_array_equal(np.array(boxes), io["rankseg.slide_crop_boxes"])
    images = _images(io)
    for n, (y1, y2, x1, x2) in enumerate(boxes):
        out = model(images[:, y1:y2, x1:x2])
        np.testing.assert_allclose(out["image_logits"], io["rankseg.slide_crop_img_pred"][:, n],
                                   atol=ATOL)


def test_losses(loaded, io):
    kind, config, model = loaded
    labels = jnp.asarray(io["labels"])
    out = model(_images(io), train=True)
    terms = losses.segmentation_losses(out, labels, config.loss, config.model.num_classes,
                                       config.data.ignore_index)
    if kind == "baseline":
        np.testing.assert_allclose(terms["loss_seg"], io["baseline.loss_seg"], atol=ATOL)
        np.testing.assert_allclose(terms["acc_seg"], io["baseline.acc_seg"], atol=1e-3)
        return
    np.testing.assert_allclose(terms["loss_seg"], io["rankseg.loss_seg_batch_mean"], atol=ATOL)
    np.testing.assert_allclose(terms["loss_img"], io["rankseg.loss_img_batch_mean"], atol=ATOL)
    np.testing.assert_allclose(ranking.class_presence(labels, 20), io["rankseg.img_target"])
    np.testing.assert_array_equal(
        ranking.remap_labels(labels, out["topk_index"], 20, 255), io["rankseg.topk_label"])
    for i in range(2):  # per image (the official runs used batch 1)
        one = model(_images(io)[i:i + 1], train=True)
        t = losses.segmentation_losses(one, labels[i:i + 1], config.loss, 20, 255)
        np.testing.assert_allclose(t["loss_seg"], io["rankseg.loss_seg_per_image"][i], atol=ATOL)
        np.testing.assert_allclose(t["loss_img"], io["rankseg.loss_img_per_image"][i], atol=ATOL)
        np.testing.assert_allclose(t["acc_seg"], io["rankseg.acc_seg_per_image"][i], atol=1e-3)


def test_strict_loading_reports_every_bad_key():
    config = tiny_config("rankseg")
    model = models.build_model(config)
    sd = torch_io.read_pth(FIXTURES / "rankseg.pth")
    sd.pop("decode_head.ml_fc.W")
    sd["decode_head.extra.weight"] = np.zeros(3, np.float32)
    sd["decode_head.mask_norm.weight"] = np.zeros(5, np.float32)
    with pytest.raises(engine.CheckpointMismatch) as err:
        mmseg.convert_state_dict(sd, config, engine.param_shapes(model), source="x.pth")
    msg = str(err.value)
    assert "decode_head.ml_fc.W" in msg and "decode_head.extra.weight" in msg
    assert "decode_head.mask_norm.weight" in msg and "x.pth" in msg
    # Loading the baseline checkpoint into a RankSeg model is refused as well. The message
    # shows each kind's count and first keys; `details` lists every key.
    with pytest.raises(engine.CheckpointMismatch, match="missing keys") as err:
        mmseg.load_official_checkpoint(model, FIXTURES / "baseline.pth", config)
    missing = " ".join(err.value.details["missing keys"])
    assert "decoder_norm2" in missing and "baseline.pth" in str(err.value)
