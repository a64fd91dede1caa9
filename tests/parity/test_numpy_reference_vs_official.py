"""Validate the independent NumPy float64 reference (tests/reference) against official fixtures.

Other parity tests compare rankseg_jax with this reference on configurations the fixtures do not
cover, so here it must reproduce every array of ``io.npz`` (official PyTorch outputs) and the
scalar test vectors of the official losses. The resize/attention primitives are also cross-checked
against torch on shapes the fixtures do not exercise, and the random official-format state dicts
are sanity-checked.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys

import numpy as np
import pytest

_ROOT = str(pathlib.Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # plain `pytest` does not put the repo root on sys.path
    sys.path.insert(0, _ROOT)

from tests.reference import numpy_ref as R  # noqa: E402
from tests.reference.random_official_sd import KINDS, config_for_kind, make_state_dict  # noqa: E402

FIX = pathlib.Path(__file__).parents[1] / "fixtures" / "official"
KEYS = FIX / "state_dict_keys.json"  # the official models' ordered state_dict keys and shapes
ATOL = 1e-4
GAP = 1e-3

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def io():
    return dict(np.load(FIX / "io.npz"))


@pytest.fixture(scope="module")
def run(io):
    """Reference outputs for both fixture models (computed once)."""
    images = io["images"].astype(np.float64)
    out = {}
    for kind in ("baseline", "rankseg"):
        sd = R.state_dict_from_pth(FIX / f"{kind}.pth")
        cfg = R.fixture_config(kind)
        bb = R.vit_forward(sd, images, cfg)
        slide, crops = R.slide_inference(sd, images, cfg, crop=(48, 48), stride=(32, 32),
                                         return_crops=True)
        whole = R.whole_inference(sd, images, cfg)
        o = dict(sd=sd, cfg=cfg, bb=bb, whole=whole, slide=slide, crops=crops)
        if kind == "baseline":
            o["head"] = R.segmenter_head(sd, bb["feat"], cfg)
        else:
            o["head"] = R.rankseg_head(sd, bb["feat"], cfg)
        out[kind] = o
    return out


def close(a, b, atol=ATOL):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=0, atol=atol)


def assert_pred(pred, logits_ref, pred_ref):
    """argmax equality where the reference top-1/top-2 gap exceeds GAP."""
    s = np.sort(np.asarray(logits_ref, np.float64), axis=1)
    ok = (s[:, -1] - s[:, -2]) > GAP
    assert ok.mean() > 0.95
    np.testing.assert_array_equal(np.asarray(pred)[ok], np.asarray(pred_ref)[ok])


# --------------------------------------------------------------------------------------------------
# Fixture parity
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["baseline", "rankseg"])
def test_backbone_and_pos_embed(run, io, kind):
    o = run[kind]
    close(o["bb"]["outs"][0], io[f"{kind}.backbone_out0"])
    close(o["bb"]["outs"][1], io[f"{kind}.backbone_out1"])
    close(o["bb"]["feat"], io[f"{kind}.backbone_out1"])
    pe = R.resize_pos_embed(o["sd"]["backbone.pos_embed"], (3, 3), (4, 4))
    close(pe, io[f"{kind}.pos_embed_resized_3x3"])


@pytest.mark.parametrize("kind", ["baseline", "rankseg"])
def test_whole_and_slide(run, io, kind):
    o = run[kind]
    for mode in ("whole", "slide"):
        logits = o[mode]
        close(logits, io[f"{kind}.{mode}_logits"])
        probs = R.softmax(logits, axis=1)  # rescale to ori_shape is the identity here
        close(probs, io[f"{kind}.{mode}_probs"])
        assert_pred(np.argmax(logits, axis=1), io[f"{kind}.{mode}_logits"],
                    io[f"{kind}.{mode}_pred"])


def test_baseline_head_and_loss(run, io):
    o = run["baseline"]
    close(o["head"], io["baseline.head_eval_masks"])
    close(o["head"], io["baseline.head_train_masks"])
    L = R.segmenter_losses(o["head"], io["labels"])
    close(L["loss_seg"], io["baseline.loss_seg"])
    close(L["acc_seg"], io["baseline.acc_seg"], atol=1e-3)
    for b in range(2):
        Lb = R.segmenter_losses(o["head"][b:b + 1], io["labels"][b:b + 1])
        close(Lb["loss_seg"], io["baseline.loss_seg_per_image"][b])


def test_rankseg_head(run, io):
    h = run["rankseg"]["head"]
    close(h["img_pred"], io["rankseg.head_train_img_pred"])
    np.testing.assert_array_equal(h["topk"], io["rankseg.head_train_topk_index"])  # order matters
    close(h["masks"], io["rankseg.head_train_masks"])
    close(h["full"], io["rankseg.head_eval_full_masks"])
    close(h["pooled_tokens"], io["rankseg.head_pooled_tokens"])
    close(h["pixel_tokens"], io["rankseg.head_pixel_tokens"])
    close(h["cls_ml_feat"], io["rankseg.head_cls_ml_feat"])


def test_rankseg_slide_crops(run, io):
    crops = run["rankseg"]["crops"]
    boxes = np.array([c["box"] for c in crops])
    np.testing.assert_array_equal(boxes, io["rankseg.slide_crop_boxes"])
    close(np.stack([c["img_pred"] for c in crops], axis=1), io["rankseg.slide_crop_img_pred"])


def test_rankseg_losses(run, io):
    o = run["rankseg"]
    h, labels = o["head"], io["labels"]
    L = R.rankseg_losses_cfg(h, labels, o["cfg"])
    close(L["img_target"], io["rankseg.img_target"])
    np.testing.assert_array_equal(L["topk_label"], io["rankseg.topk_label"])
    close(L["loss_img"], io["rankseg.loss_img_batch_mean"])
    close(L["loss_seg"], io["rankseg.loss_seg_batch_mean"])
    # explicit-argument form == cfg form
    L2 = R.rankseg_losses(h, labels[:, None], img_loss_weight=10, loss_img="asl", gamma_neg=2,
                          gamma_pos=0)
    assert L2["loss_img"] == L["loss_img"] and L2["loss_seg"] == L["loss_seg"]
    for b in range(2):
        Lb = R.rankseg_losses_cfg({k: v[b:b + 1] for k, v in h.items()}, labels[b:b + 1], o["cfg"])
        for k in ("loss_img", "loss_seg", "acc_pix", "acc_img", "acc_img_accuracy"):
            close(Lb[k], io[f"rankseg.{k}_per_image"][b])
        close(Lb["acc_seg"], io["rankseg.acc_seg_per_image"][b], atol=1e-3)


# --------------------------------------------------------------------------------------------------
# Scalar test vectors of the official losses (cross-entropy, AsymmetricLoss, BCE)
# --------------------------------------------------------------------------------------------------
X = np.array([[2, -1, 0.5, -3, 0, 4]], np.float64)
Y = np.array([[1, 0, 0, 1, 0, 1]], np.float64)


def test_cross_entropy_vector():
    logits = np.array([[1.0, 0.0, 0.5], [3.0, -2.0, 0.1]])  # (P, C)
    label = np.array([0, 255])
    assert abs(R.mmseg_cross_entropy(logits, label) - 0.3401348) < 1e-7
    assert abs(R.mmseg_cross_entropy(logits, label, average="valid_pixels") - 0.6802697) < 1e-7
    # NCHW form gives the same
    nchw = R.mmseg_cross_entropy(logits.T[None, :, :, None], label[None, :, None])
    assert abs(nchw - 0.3401348) < 1e-7


def test_asl_and_bce_vectors():
    assert abs(R.asymmetric_loss(X, Y, 2, 0) - 0.60083818) < 1e-7
    assert abs(R.asymmetric_loss(X, Y, 0, 0) - 0.81471890) < 1e-7
    assert abs(R.asymmetric_loss(X, Y, 4, 1) - 0.50596637) < 1e-7
    xb, yb = np.concatenate([X, -X]), np.concatenate([Y, 1 - Y])
    assert abs(R.asymmetric_loss(xb, yb, 2, 0) - 0.62357336) < 1e-7
    assert abs(R.bce_with_logits(X, Y) - 0.86235857) < 1e-7
    # gradient of ASL(2,0) (focusing weight not detached), central differences
    g = np.zeros(6)
    for i in range(6):
        e = np.zeros_like(X)
        e[0, i] = 1e-6
        g[i] = (R.asymmetric_loss(X + e, Y, 2, 0) - R.asymmetric_loss(X - e, Y, 2, 0)) / 2e-6
    close(g, [-0.019867, 0.005557, 0.068125, -0.158762, 0.037760, -0.002998], atol=2e-6)


# --------------------------------------------------------------------------------------------------
# Primitives vs torch on shapes the fixtures do not cover
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw_in,hw_out", [((4, 4), (3, 5)), ((32, 32), (30, 30)),
                                          ((24, 24), (40, 32)), ((5, 7), (64, 48)),
                                          ((7, 3), (2, 9))])
def test_resize_vs_torch(hw_in, hw_out):
    F = torch.nn.functional
    x = np.random.default_rng(0).normal(size=(2, 3) + hw_in)
    t = torch.from_numpy(x)
    for mode, fn in (("bicubic", R.torch_bicubic_resize), ("bilinear", R.torch_bilinear_resize)):
        ref = F.interpolate(t, size=hw_out, mode=mode, align_corners=False).numpy()
        close(fn(x, *hw_out), ref, atol=1e-10)


@pytest.mark.parametrize("hw,out", [((30, 30), 8), ((3, 3), 2), ((5, 7), (2, 3)), ((4, 6), 16),
                                    ((32, 32), 8)])
def test_adaptive_pool_vs_torch(hw, out):
    x = np.random.default_rng(1).normal(size=(2, 3) + hw)
    ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), out).numpy()
    close(R.adaptive_avg_pool2d(x, out), ref, atol=1e-12)


def test_mha_and_gelu_vs_torch():
    rng = np.random.default_rng(2)
    D, heads = 16, 4
    mha = torch.nn.MultiheadAttention(D, heads, dtype=torch.float64).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    sd = {"m." + k: v.detach().numpy() for k, v in mha.state_dict().items()}
    q, k, v = rng.normal(size=(3, 5, D)), rng.normal(size=(3, 9, D)), rng.normal(size=(3, 9, D))
    tq, tk, tv = (torch.from_numpy(a).transpose(0, 1) for a in (q, k, v))  # sequence-first
    ref = mha(tq, tk, tv, need_weights=False)[0].transpose(0, 1).detach().numpy()
    close(R.torch_mha(sd, "m.", q, k, v, heads), ref, atol=1e-12)
    x = rng.normal(size=100) * 3
    close(R.gelu(x), torch.nn.functional.gelu(torch.from_numpy(x)).numpy(), atol=1e-12)


def test_slide_windows():
    windows = R.slide_windows(512, 683, (512, 512), (512, 512))
    assert windows == [(0, 512, 0, 512), (0, 512, 171, 683)]
    assert R.slide_windows(300, 200, (512, 512), (512, 512)) == [(0, 300, 0, 200)]


def test_sine_position_buffer():
    pe = R.sine_position_buffer(768, 16)
    assert pe.shape == (1, 768, 16, 16)
    emb = 1 / (16 + 1e-6) * 2 * math.pi  # i = j = 0 -> embed 1
    close(pe[0, 0, 0, 0], math.sin(emb), 1e-12)
    close(pe[0, 1, 0, 0], math.cos(emb), 1e-12)
    close(pe[0, 384 + 2, 3, 5], math.sin(6 * emb / 10000 ** (2 / 384)), 1e-12)  # x-part, j = 5


# --------------------------------------------------------------------------------------------------
# Random official-format state dicts
# --------------------------------------------------------------------------------------------------
def _official_keys(kind):
    name = {"baseline": "segmenter-ori_vit-b16_512x512_160k_ade20k",
            "rankseg": "segmenter-ori_rankseg_vit-b16_512x512_160k_ade20k"}[kind]
    return [(k, tuple(shape)) for k, shape in json.loads(KEYS.read_text())["models"][name]]


@pytest.mark.parametrize("kind,n_keys", [("baseline", 183), ("rankseg", 199), ("rankseg_oce", 199),
                                         ("baseline_oce", 183), ("tran_dec", 214),
                                         ("gap_linear", 187)])
def test_random_sd_key_counts(kind, n_keys):
    """Key counts of the official state dicts for the ViT-B layer/block counts (small widths)."""
    n_blocks = 3 if kind.startswith("rankseg") else 2
    cfg = R.RefConfig(embed_dim=8, num_layers=12, d_model=8, d_ff=16, n_layers=n_blocks, n_cls=171,
                      topk=50, tran_dec_ff=16)
    sd = make_state_dict(cfg, np.random.default_rng(0), kind)
    assert len(sd) == n_keys
    assert all(v.dtype == np.float64 for v in sd.values())
    assert ("backbone.cls_emb" in sd) == kind.endswith("_oce")
    assert ("decode_head.cls_emb" in sd) != kind.endswith("_oce")


@pytest.mark.parametrize("kind", ["baseline", "rankseg"])
def test_random_sd_matches_official_key_order(kind):
    """Exact key order and shapes of the official ViT-B/16 ADE20K models (shapes only)."""
    rows = _official_keys(kind)
    cfg = R.RefConfig(embed_dim=768, num_layers=12, num_heads=12, d_model=768, d_ff=3072,
                      n_layers=3 if kind == "rankseg" else 2, n_cls=150, topk=50)

    class ShapeRng:  # avoid materialising ~110M random doubles: shapes only
        def normal(self, loc, scale, size):
            return np.broadcast_to(np.float64(loc), size)

    sd = make_state_dict(cfg, ShapeRng(), kind, pos_grid=32)
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == rows


def _small_cfg(kind, **kw):
    base = R.RefConfig(embed_dim=32, num_layers=3, num_heads=4, d_model=32, head_heads=2, d_ff=64,
                       n_cls=11, topk=5, downsample=3, pos_grid=4, out_indices=(1, 2),
                       tran_dec_heads=4, tran_dec_ff=48, tran_dec_pe_size=4)
    n_blocks = 3 if kind in ("rankseg", "rankseg_oce") else 2
    if kind in ("tran_dec", "gap_linear"):
        kw.setdefault("downsample", 4)  # pooled grid must equal the position buffer size
    return config_for_kind(base.replace(n_layers=n_blocks, **kw), kind)


@pytest.mark.parametrize("kind", KINDS)
def test_random_models_batch_consistency(kind):
    """Non-square input with bottom/right padding (70×100 -> 5×7 grid, pos-embed 4×4 resized),
    overlapping
    adaptive pooling bins, batch 3: batched outputs equal per-image runs (per-sample top-K
    gather)."""
    cfg = _small_cfg(kind)
    rng = np.random.default_rng(7)
    sd = make_state_dict(cfg, rng, kind)
    images = rng.normal(size=(3, 3, 70, 100))
    fw = R.model_forward(sd, images, cfg)
    assert fw["backbone"]["grid"] == (5, 7)
    assert fw["backbone"]["pos_embed"].shape == (1, 36, 32)
    assert fw["logits"].shape == (3, 11, 5, 7)
    if cfg.oce:
        assert fw["backbone"]["cls_tokens"].shape == (3, 11, 32)
    for b in range(3):
        fb = R.model_forward(sd, images[b:b + 1], cfg)
        close(fb["logits"][0], fw["logits"][b], atol=1e-10)
        if cfg.head == "rankseg":
            np.testing.assert_array_equal(fb["head"]["topk"][0], fw["head"]["topk"][b])
    if cfg.head == "rankseg":
        h = fw["head"]
        assert h["topk"].shape == (3, 5)
        assert np.all(np.diff(np.take_along_axis(h["img_pred"], h["topk"], 1), axis=1) <= 0)
        assert np.all((h["full"] == -100).sum(1) == 11 - 5)
        L = R.rankseg_losses_cfg(h, rng.integers(0, 11, size=(3, 70, 100)), cfg)
        assert np.isfinite(L["loss_img"]) and np.isfinite(L["loss_seg"])
    logits = R.whole_inference(sd, images, cfg)
    assert logits.shape == (3, 11, 70, 100)
    sl = R.slide_inference(sd, images[:1], cfg, crop=(48, 48), stride=(32, 32))
    assert sl.shape == (1, 11, 70, 100) and np.isfinite(sl).all()


def test_padding_is_zero_in_normalized_space():
    """Patch embedding: a 70×100 input equals the explicitly zero-padded 80×112 input."""
    cfg = _small_cfg("baseline")
    rng = np.random.default_rng(3)
    sd = make_state_dict(cfg, rng, "baseline")
    x = rng.normal(size=(1, 3, 70, 100))
    xp = np.pad(x, ((0, 0), (0, 0), (0, 10), (0, 12)))
    close(R.vit_forward(sd, x, cfg)["feat"], R.vit_forward(sd, xp, cfg)["feat"], atol=1e-12)


def test_rankseg_without_downsample_runs():
    """RankSeg head: downsample=None -> blocks[0] on [Px; E], its pixel outputs continue."""
    cfg = _small_cfg("rankseg", downsample=None)
    rng = np.random.default_rng(5)
    sd = make_state_dict(cfg, rng, "rankseg")
    fw = R.model_forward(sd, rng.normal(size=(2, 3, 48, 64)), cfg)
    assert fw["logits"].shape == (2, 11, 3, 4) and np.isfinite(fw["head"]["masks"]).all()
