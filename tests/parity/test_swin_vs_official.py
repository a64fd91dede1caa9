"""Our Swin backbone with converted official weights reproduces the official Mask2Former Swin.

Fixtures: `tests/fixtures/official_mask2former/` (outputs of the official PyTorch
`D2SwinTransformer` on tiny random models): `forward.npz` `{w}.backbone.res*` on the padded
64x96 batch, `standalone.npz` `swin.w4.*` / `swin.w7.*` on a 50x70 input that needs padding
everywhere (patch embed, every window stage, odd-size patch merging).
"""

import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx
from helpers import ROOT

from rankseg_jax.convert import detectron2, engine
from rankseg_jax.convert.tables import swin as swin_table
from rankseg_jax.models.backbones import swin

pytest.importorskip("torch")
pytestmark = pytest.mark.torch

FIX = ROOT / "tests" / "fixtures" / "official_mask2former"
ATOL = 1e-4
_forward = nnx.jit(lambda model, x: model(x))


def _fixture_swin_config() -> dict:
    """MODEL.SWIN of the fixture configs (all six share the backbone)."""
    cfg = yaml.safe_load((FIX / "configs" / "sem_plain.yaml").read_text())["MODEL"]["SWIN"]
    assert not cfg["APE"] and cfg["PATCH_NORM"] and cfg["QKV_BIAS"]
    return dict(embed_dim=cfg["EMBED_DIM"], depths=tuple(cfg["DEPTHS"]),
                num_heads=tuple(cfg["NUM_HEADS"]), window_size=cfg["WINDOW_SIZE"],
                mlp_ratio=cfg["MLP_RATIO"], patch_size=cfg["PATCH_SIZE"])


def _load(name: str, **kwargs):
    """(model with `name`'s backbone, Report); the model is built abstractly, then filled."""
    sd = detectron2.read_detectron2_checkpoint(FIX / name)
    model = nnx.eval_shape(lambda: swin.SwinTransformer(**kwargs, rngs=nnx.Rngs(0)))
    shapes = engine.param_shapes(model)
    params, report = swin_table.convert_swin_state_dict(
        sd, shapes, depths=kwargs["depths"], window_size=kwargs["window_size"], our_prefix=(),
        source=name)
    engine.load_into(model, params)
    assert len(report.loaded) == len(shapes)
    assert not (report.missing or report.unused or report.warnings or report.resized)
    return model, report


def _compare(out: dict, ref: dict, prefix: str):
    assert list(out) == ["res2", "res3", "res4", "res5"]
    for name, value in out.items():
        want = ref[f"{prefix}.{name}"]
        got = np.asarray(value).transpose(0, 3, 1, 2)  # NHWC -> official NCHW
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=name)


@pytest.mark.parametrize("weights", ["plain", "rankseg"])
def test_backbone_on_the_model_input(weights):
    model, _ = _load(f"{weights}.pth", **_fixture_swin_config())
    images = np.load(FIX / "inputs.npz")["images_normalized_padded"].transpose(0, 2, 3, 1)
    _compare(_forward(model, jnp.asarray(images)), np.load(FIX / "forward.npz"),
             f"{weights}.backbone")


def test_padding_paths_window4():
    model, _ = _load("plain.pth", **_fixture_swin_config())
    ref = np.load(FIX / "standalone.npz")
    out = _forward(model, jnp.asarray(ref["swin.input"].transpose(0, 2, 3, 1)))
    assert [v.shape[1:3] for v in out.values()] == [(13, 18), (7, 9), (4, 5), (2, 3)]
    _compare(out, ref, "swin.w4")


def test_padding_paths_window7():
    sd = detectron2.read_detectron2_checkpoint(FIX / "swin_w7.pth")
    depths = swin_table.swin_depths(sd)
    tables = [sd[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"]
              for i in range(len(depths))]
    heads = tuple(t.shape[1] for t in tables)
    window = (int(round(tables[0].shape[0] ** 0.5)) + 1) // 2
    embed = sd["backbone.patch_embed.proj.weight"].shape[0]
    assert (embed, heads, window) == (16, (1, 2, 4, 8), 7)
    model, _ = _load("swin_w7.pth", embed_dim=embed, depths=depths, num_heads=heads,
                     window_size=window)
    ref = np.load(FIX / "standalone.npz")
    _compare(_forward(model, jnp.asarray(ref["swin.input"].transpose(0, 2, 3, 1))), ref,
             "swin.w7")
