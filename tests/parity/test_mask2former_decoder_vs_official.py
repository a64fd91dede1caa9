"""Mask2Former pixel decoder + masked-attention transformer decoder vs the official code.

The official tiny models (`plain.pth`: linear classifier; `rankseg.pth`: cosine classifier)
are converted with `convert.tables.mask2former` (every `sem_seg_head.*` key must be used and
every parameter mapped), fed the recorded backbone outputs `forward.npz[{w}.backbone.res*]`,
and every recorded `{w}.pixdec.*` / `{w}.dec.*` array is compared: encoder inputs, encoder
memory, the 3 maps, mask features, all 5 predictions, the 4 query features and the 4
cross-attention masks (exactly). Tiny config (`configs/*.yaml`): conv/mask/hidden 32, 2
encoder layers, 8 heads, decoder FFN 64, DEC_LAYERS 5 (4 layers), 10 queries, 12 classes.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import ROOT

from rankseg_jax.convert import engine
from rankseg_jax.convert.tables import mask2former as tables
from rankseg_jax.models.heads.mask2former import (
    MSDeformAttnPixelDecoder,
    MultiScaleMaskedTransformerDecoder,
)

FIX = ROOT / "tests" / "fixtures" / "official_mask2former"
ATOL = 1e-4
ENC_LAYERS, DEC_LAYERS = 2, 4


class _Head(nnx.Module):
    def __init__(self, cosine: bool, rngs: nnx.Rngs):
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            (32, 64, 128, 256), conv_dim=32, mask_dim=32, encoder_layers=ENC_LAYERS, rngs=rngs)
        self.predictor = MultiScaleMaskedTransformerDecoder(
            in_channels=32, hidden_dim=32, num_queries=10, num_heads=8, ffn_dim=64,
            num_layers=DEC_LAYERS, num_classes=12, mask_dim=32, cosine_classifier=cosine,
            rngs=rngs)

    def __call__(self, feats):
        mask_features, maps, extras = self.pixel_decoder(feats, return_intermediates=True)
        out = self.predictor(maps, mask_features, return_attn_masks=True)
        return mask_features, maps, extras, out


@pytest.fixture(scope="module")
def forward():
    return dict(np.load(FIX / "forward.npz"))


def _nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


def _close(ours, theirs, name):
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0, atol=ATOL, err_msg=name)


@pytest.mark.torch
@pytest.mark.parametrize("weights", ["plain", "rankseg"])
def test_sem_seg_head_matches_official(forward, weights):
    torch = pytest.importorskip("torch")
    sd = torch.load(FIX / f"{weights}.pth", map_location="cpu", weights_only=True)["model"]
    sd = {k: v.numpy() for k, v in sd.items() if k.startswith("sem_seg_head.")}
    cosine = weights == "rankseg"
    assert ("sem_seg_head.predictor.class_embed.bias" in sd) != cosine
    model = nnx.eval_shape(lambda: _Head(cosine, nnx.Rngs(0)))
    rows = tables.sem_seg_head_rows(ENC_LAYERS, DEC_LAYERS, cosine_classifier=cosine)
    params, report = engine.map_state_dict(sd, rows, expected=engine.param_shapes(model))
    assert not report.unused and not report.missing
    engine.load_into(model, params)

    f = {k[len(weights) + 1:]: v for k, v in forward.items() if k.startswith(weights + ".")}
    feats = {f"res{i}": jnp.asarray(f[f"backbone.res{i}"].transpose(0, 2, 3, 1))
             for i in range(2, 6)}
    graph, state = nnx.split(model)
    # Optimisation level 0 halves the XLA:CPU compile time of this small graph (tests only).
    run = jax.jit(lambda st, x: nnx.merge(graph, st)(x),
                  compiler_options={"xla_backend_optimization_level": 0})
    mask_features, maps, extras, out = run(state, feats)

    # Pixel decoder.
    b, s = f["pixdec.enc_src_flatten"].shape[:2]
    assert [m.shape[1:3] for m in maps] == [tuple(x) for x in f["pixdec.enc_spatial_shapes"]]
    starts = np.cumsum([0] + [h * w for h, w in f["pixdec.enc_spatial_shapes"]])[:-1]
    np.testing.assert_array_equal(starts, f["pixdec.enc_level_start_index"])
    _close(extras["src_flatten"], f["pixdec.enc_src_flatten"], "enc_src_flatten")
    _close(np.broadcast_to(extras["pos_flatten"], (b, s, 32)), f["pixdec.enc_pos_flatten"],
           "enc_pos_flatten")
    _close(np.broadcast_to(extras["reference_points"], (b, s, 3, 2)),
           f["pixdec.enc_reference_points"], "enc_reference_points")
    _close(extras["memory"], f["pixdec.enc_memory"], "enc_memory")
    for lvl in range(3):
        _close(_nchw(maps[lvl]), f[f"pixdec.multi_scale_{lvl}"], f"multi_scale_{lvl}")
    _close(_nchw(mask_features), f["pixdec.mask_features"], "mask_features")

    # Transformer decoder (fed our own pixel-decoder outputs).
    assert out["class_logits"].shape == (DEC_LAYERS + 1, b, 10, 13)
    for p in range(DEC_LAYERS + 1):
        _close(out["class_logits"][p], f[f"dec.pred{p}.class_logits"], f"pred{p}.class_logits")
        _close(out["mask_logits"][p], f[f"dec.pred{p}.mask_logits"], f"pred{p}.mask_logits")
    for i in range(DEC_LAYERS):
        _close(np.asarray(out["query_features"][i]).transpose(1, 0, 2),
               f[f"dec.query_feature{i}"], f"query_feature{i}")
        theirs = f[f"dec.cross_attn_mask{i}"]  # [B, heads, Q, HW], identical over heads
        ours = np.broadcast_to(np.asarray(out["cross_attn_masks"][i])[:, None], theirs.shape)
        np.testing.assert_array_equal(ours, theirs, err_msg=f"cross_attn_mask{i}")


def _count(shapes) -> int:
    return sum(int(np.prod(s)) for s in shapes.values())


def test_full_size_param_counts_and_rows():
    """ADE20K Swin-L configs: our head has the official `sem_seg_head` parameter count
    (manifest.json, counted on the built official models) and the conversion rows map every
    parameter exactly once (modules built abstractly: nothing is allocated)."""
    counts = json.loads((FIX / "manifest.json").read_text())["official_param_counts"]
    pixel_decoder = nnx.eval_shape(
        lambda: MSDeformAttnPixelDecoder((192, 384, 768, 1536), rngs=nnx.Rngs(0)))
    pd_shapes = engine.param_shapes(pixel_decoder)
    pd_rows = tables.pixel_decoder_rows(6, ours=())
    assert sorted(map(str, pd_shapes)) == sorted(str(r.path) for r in pd_rows)
    seen = {}
    for name, entry in counts.items():
        key = (entry["num_queries"], name.endswith("-rankseg.yaml"))  # (Q, cosine)
        if key not in seen:
            predictor = nnx.eval_shape(lambda key=key: MultiScaleMaskedTransformerDecoder(
                num_queries=key[0], num_classes=150, cosine_classifier=key[1],
                rngs=nnx.Rngs(0)))
            shapes = engine.param_shapes(predictor)
            rows = tables.predictor_rows(9, cosine_classifier=key[1], ours=())
            assert sorted(map(str, shapes)) == sorted(str(r.path) for r in rows)
            seen[key] = _count(pd_shapes) + _count(shapes)
        assert seen[key] == entry["per_module"]["sem_seg_head"], name
    assert len(seen) == 4
