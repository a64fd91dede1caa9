"""JAX model == independent NumPy float64 reference on configurations the fixtures lack.

Random official-format state dicts (tests/reference/random_official_sd.py) are converted with
the official mapping table and run through both implementations: non-square inputs whose patch
grid differs from the stored position embedding (so it is resized), inputs that are not a
multiple of the patch size (zero padding), adaptive-pooling grids with overlapping windows,
other kappa and K, kappa = K ("sort only"), batches of 3, OCE, and the tran_dec / gap_linear
multi-label encoders.
"""

import dataclasses

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankseg_jax import models
from rankseg_jax.convert import engine
from rankseg_jax.convert.tables import mmseg
from rankseg_jax.evaluation import full_logits
from rankseg_jax.train import losses
from tests.reference import numpy_ref, random_official_sd

ATOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Case:
    kind: str
    num_classes: int
    topk: int
    downsample: int
    size: tuple  # input (H, W)
    batch: int
    pos_grid: int = 4
    seed: int = 0


CASES = [
    # 70x100 pads to a 5x7 grid (stored 4x4): bicubic resize + overlapping 5->2, 7->2 bins.
    Case("rankseg", 20, 8, 2, (70, 100), 3),
    # kappa = K ("sort only"), 6x5 grid pooled to 3x3 -> overlapping 5->3 bins.
    Case("rankseg", 13, 13, 3, (96, 80), 2, seed=1),
    # Downsampling the stored 6x6 table to a 4x7 grid; 7->4 overlapping bins.
    Case("rankseg", 31, 5, 4, (64, 112), 3, pos_grid=6, seed=2),
    Case("baseline", 15, 0, 0, (80, 48), 3, seed=3),
    Case("rankseg_oce", 10, 4, 2, (48, 80), 3, seed=4),
    Case("baseline_oce", 9, 0, 0, (64, 48), 2, seed=5),
    Case("tran_dec", 17, 6, 4, (80, 64), 3, seed=6),
    Case("gap_linear", 17, 6, 3, (80, 96), 3, seed=7),
]


def _configs(case: Case):
    ref = numpy_ref.RefConfig(
        n_cls=case.num_classes, topk=max(case.topk, 1), downsample=case.downsample or None,
        pos_grid=case.pos_grid, n_layers=3 if case.kind in ("rankseg", "rankseg_oce") else 2,
        tran_dec_ff=96, tran_dec_layers=2, tran_dec_pe_size=case.downsample or 16)
    ref = random_official_sd.config_for_kind(ref, case.kind)
    base = "baseline" if case.kind.startswith("baseline") else "rankseg"
    cfg = helpers.tiny_config(base, num_classes=case.num_classes, topk=max(case.topk, 1),
                              downsample=case.downsample or 2,
                              img_size=(16 * case.pos_grid, 16 * case.pos_grid))
    h = cfg.model.head
    h.n_layers = ref.n_layers
    cfg.model.vit.oce = ref.oce
    if case.kind in ("tran_dec", "gap_linear"):
        r = cfg.model.rankseg
        r.ml_encoder = case.kind
        r.dec_d_ff, r.dec_layers, r.dec_num_heads = 96, 2, 8
    return ref, cfg


def _build(case: Case):
    ref_cfg, cfg = _configs(case)
    sd = random_official_sd.make_state_dict(ref_cfg, np.random.default_rng(case.seed),
                                            case.kind)
    model = models.build_model(cfg)
    params = mmseg.convert_state_dict(
        {k: v.astype(np.float32) for k, v in sd.items()}, cfg, engine.param_shapes(model))
    engine.load_into(model, params)
    return sd, ref_cfg, cfg, model


def _images(case: Case, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(100 + seed)
    return rng.normal(size=(case.batch, 3) + tuple(case.size))  # NCHW float64


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.kind}-K{c.num_classes}-{c.size}")
def test_forward_matches_reference(case):
    sd, ref_cfg, cfg, model = _build(case)
    images = _images(case, case.seed)
    ref = numpy_ref.model_forward(sd, images, ref_cfg)
    out = model(jnp.asarray(images.transpose(0, 2, 3, 1), jnp.float32), full_logits=True)
    np.testing.assert_allclose(out["patch_grid"].transpose(0, 3, 1, 2), ref["backbone"]["feat"],
                               atol=ATOL)
    if not isinstance(ref["head"], dict):
        np.testing.assert_allclose(out["mask_logits"], ref["head"], atol=ATOL)
        return
    head = ref["head"]
    np.testing.assert_allclose(out["image_logits"], head["img_pred"], atol=ATOL)
    gaps = -np.diff(np.sort(head["img_pred"], axis=1)[:, ::-1][:, :case.topk + 1], axis=1)
    assert gaps.min() > 1e-4, "near-tie in the reference ranking; pick another seed"
    np.testing.assert_array_equal(out["topk_index"], head["topk"])
    np.testing.assert_allclose(out["mask_logits"], head["masks"], atol=ATOL)
    np.testing.assert_allclose(out["full_logits"], head["full"], atol=ATOL)


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[6]], ids=lambda c: c.kind)
def test_losses_match_reference(case):
    sd, ref_cfg, cfg, model = _build(case)
    images = _images(case, case.seed)
    rng = np.random.default_rng(7)
    labels = rng.integers(0, case.num_classes, size=(case.batch,) + case.size)
    labels[:, :5] = 255
    ref_head = numpy_ref.model_forward(sd, images, ref_cfg)["head"]
    out = model(jnp.asarray(images.transpose(0, 2, 3, 1), jnp.float32), train=True)
    terms = losses.segmentation_losses(out, jnp.asarray(labels), cfg.loss, case.num_classes,
                                       255)
    if case.kind == "baseline":
        ref = numpy_ref.segmenter_losses(ref_head, labels)
    else:
        ref = numpy_ref.rankseg_losses_cfg(ref_head, labels, ref_cfg)
        np.testing.assert_allclose(terms["loss_img"], ref["loss_img"], rtol=1e-5, atol=ATOL)
    np.testing.assert_allclose(terms["loss_seg"], ref["loss_seg"], rtol=1e-5, atol=ATOL)


@pytest.mark.parametrize("case", [CASES[0], CASES[4]], ids=lambda c: c.kind)
def test_slide_and_whole_match_reference(case):
    sd, ref_cfg, cfg, model = _build(case)
    images = _images(case, 11)
    x = jnp.asarray(images.transpose(0, 2, 3, 1), jnp.float32)
    whole = full_logits.inference_logits(model, x, mode="whole")
    np.testing.assert_allclose(whole, numpy_ref.whole_inference(sd, images, ref_cfg), atol=ATOL)
    slide = full_logits.inference_logits(model, x, mode="slide", crop=(48, 48), stride=(32, 32))
    ref = numpy_ref.slide_inference(sd, images, ref_cfg, crop=(48, 48), stride=(32, 32))
    np.testing.assert_allclose(slide, ref, atol=ATOL)


def test_batch_size_invariance_with_random_init():
    cfg = helpers.tiny_config("rankseg", num_classes=37, topk=11, downsample=3)
    model = models.build_model(cfg)
    x = jax.random.normal(jax.random.key(0), (3, 80, 112, 3))
    full = model(x, full_logits=True)
    for i in range(3):
        one = model(x[i:i + 1], full_logits=True)
        for key in ("image_logits", "mask_logits", "full_logits", "patch_grid"):
            np.testing.assert_allclose(full[key][i:i + 1], one[key], atol=1e-5, err_msg=key)
        np.testing.assert_array_equal(full["topk_index"][i:i + 1], one["topk_index"])
