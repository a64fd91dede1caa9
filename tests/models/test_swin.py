"""Swin backbone: size, batching, jit, stochastic depth, remat; its checkpoint conversion
(errors, detectron2 `.pkl` reader, ImageNet-release layout, window resize, export)."""

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import ROOT

from rankseg_jax.convert import detectron2, engine
from rankseg_jax.convert.engine import CheckpointMismatch
from rankseg_jax.convert.tables import swin as swin_table
from rankseg_jax.models.backbones import swin

FIX = ROOT / "tests" / "fixtures" / "official_mask2former"
TINY = dict(embed_dim=8, depths=(2, 2), num_heads=(1, 2), window_size=3)
_forward = nnx.jit(lambda model, x, rng=None: model(x, rng))


def _random_model(seed: int = 0, **kwargs) -> swin.SwinTransformer:
    """A Swin with random (numpy) params: built abstractly, then filled (fast on CPU)."""
    kw = {**TINY, **kwargs}
    model = nnx.eval_shape(lambda: swin.SwinTransformer(**kw, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    params = {}
    for path, shape in engine.param_shapes(model).items():
        base = 1.0 if path[-1] == "scale" else 0.0
        params[path] = base + rng.normal(0.0, 1.0 / np.sqrt(shape[0]) if len(shape) > 1
                                         else 0.2, shape)
    engine.load_into(model, params)
    return model


def _images(n: int, h: int, w: int, seed: int = 1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, h, w, 3)), jnp.float32)


def _n_params(model) -> int:
    return sum(int(np.prod(s)) for s in engine.param_shapes(model).values())


# ------------------------------------------------------------------------------- model

def test_swin_large_window12_has_the_official_parameter_count():
    model = nnx.eval_shape(lambda: swin.swin_from_preset("large", window_size=12,
                                                         rngs=nnx.Rngs(0)))
    assert _n_params(model) == 195_201_204  # official D2SwinTransformer, parameters()
    table = model.layers[3].blocks[1].attn.relative_position_bias_table
    assert table.shape == (23 * 23, 48)
    assert model.norm3.scale.shape == (1536,)


def test_absolute_position_embedding_is_refused():
    with pytest.raises(ValueError, match="ape"):
        swin.SwinTransformer(**TINY, ape=True, rngs=nnx.Rngs(0))


def test_outputs_shapes_and_out_indices():
    model = _random_model(out_indices=(1,))
    out = _forward(model, _images(1, 26, 38))
    # 26x38 -> patches 7x10 (padded from 26/4, 38/4) -> merged 4x5
    assert list(out) == ["res3"] and out["res3"].shape == (1, 4, 5, 16)
    assert not hasattr(model, "norm0")


def test_batch_invariance_with_padding():
    model = _random_model()
    x = _images(3, 26, 38)  # 7x10 tokens -> windows pad to 9x12; 4x5 -> 6x6 + odd merging
    batched = _forward(model, x)
    for i in range(3):
        single = _forward(model, x[i:i + 1])
        for k in batched:
            np.testing.assert_allclose(batched[k][i:i + 1], single[k], atol=1e-5, rtol=0)


def test_jit_matches_eager():
    model = _random_model(depths=(2,), num_heads=(2,))
    x = _images(2, 12, 16)
    jitted, eager = _forward(model, x), model(x)
    np.testing.assert_allclose(jitted["res2"], eager["res2"], atol=1e-5, rtol=0)


def test_bfloat16_compute_keeps_float32_params_and_tracks_float32():
    one_stage = dict(depths=(2,), num_heads=(2,))
    x = _images(1, 12, 16)
    ref = _forward(_random_model(**one_stage), x)["res2"]
    model = _random_model(dtype=jnp.bfloat16, **one_stage)
    assert all(v.dtype == jnp.float32 for v in engine.model_params(model).values())
    out = _forward(model, x)["res2"]
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.1, rtol=0)


def test_drop_path_needs_a_key():
    one_stage = dict(depths=(2,), num_heads=(1,))  # rates linspace(0, 0.5, 2) = [0, 0.5]
    model = _random_model(drop_path_rate=0.5, **one_stage)
    x = _images(4, 12, 12)
    a, b = _forward(model, x)["res2"], _forward(model, x)["res2"]
    np.testing.assert_array_equal(a, b)  # rng=None: deterministic eval
    k1 = _forward(model, x, jax.random.key(1))["res2"]
    k2 = _forward(model, x, jax.random.key(2))["res2"]
    np.testing.assert_array_equal(k1, _forward(model, x, jax.random.key(1))["res2"])
    assert not np.allclose(k1, a, atol=1e-3)
    assert not np.allclose(k1, k2, atol=1e-3)
    # Without drop path a key changes nothing (the backbone has no other randomness).
    plain = _random_model(**one_stage)
    np.testing.assert_array_equal(_forward(plain, x)["res2"],
                                  _forward(plain, x, jax.random.key(1))["res2"])


def test_remat_gives_the_same_values_and_gradients():
    x = _images(1, 16, 16)

    def loss(model):
        return sum(jnp.sum(v ** 2) for v in model(x).values())

    grads = []
    for remat in (False, True):
        model = _random_model(depths=(2,), num_heads=(1,), remat=remat)
        value, grad = nnx.jit(nnx.value_and_grad(loss))(model)
        grads.append((value, jax.tree.leaves(nnx.state(grad, nnx.Param))))
    np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-6)
    # Two programs, two float32 summation orders (XLA fuses them differently): the
    # tolerance is rounding at the scale of each gradient, not of its smallest entries.
    for g0, g1 in zip(grads[0][1], grads[1][1], strict=True):
        np.testing.assert_allclose(g0, g1, rtol=1e-5,
                                   atol=max(1e-6, 2e-6 * float(np.abs(g0).max())))


def test_relative_position_index_and_shift_mask():
    idx = swin.relative_position_index(2)
    # tokens (0,0),(0,1),(1,0),(1,1): index = (dy + 1) * 3 + (dx + 1)
    np.testing.assert_array_equal(idx, [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3],
                                        [8, 7, 5, 4]])
    mask = swin.shift_window_mask(4, 4, 2, 1)
    assert mask.shape == (4, 4, 4) and set(np.unique(mask)) == {0.0, -100.0}
    assert not mask[0].any()  # the top-left window is one region
    # bottom-right window: all four tokens in different regions -> only the diagonal is 0
    np.testing.assert_array_equal(mask[3] == 0, np.eye(4, dtype=bool))


# ------------------------------------------------------------------------- conversion

def _export(model, **kwargs):
    kw = {**TINY, **kwargs}
    return swin_table.export_swin_state_dict(
        engine.model_params(model), depths=kw["depths"], window_size=kw["window_size"],
        our_prefix=())


def _convert(sd, model, **kwargs):
    kw = {"depths": TINY["depths"], "window_size": TINY["window_size"], **kwargs}
    return swin_table.convert_swin_state_dict(sd, engine.param_shapes(model), our_prefix=(),
                                              **kw)


def test_round_trip_ours_official_ours():
    model = _random_model()
    sd = _export(model)
    assert "backbone.layers.0.blocks.1.attn.qkv.weight" in sd
    assert sd["backbone.layers.1.blocks.0.attn.relative_position_index"].dtype == np.int64
    params, report = _convert(sd, model)
    assert not (report.missing or report.unused or report.warnings)
    ours = engine.model_params(model)
    assert set(params) == set(ours)
    for path, value in ours.items():
        np.testing.assert_array_equal(params[path], value)


@pytest.mark.torch
def test_export_reproduces_the_official_checkpoint():
    pytest.importorskip("torch")
    sd = detectron2.read_detectron2_checkpoint(FIX / "plain.pth")
    official_sd = {k: v for k, v in sd.items() if k.startswith("backbone.")}
    kw = dict(depths=(2, 2, 2, 2), window_size=4)
    params, _ = swin_table.convert_swin_state_dict(sd, None, **kw)
    exported = swin_table.export_swin_state_dict(params, **kw)
    assert list(exported) == list(official_sd)  # names and order of state_dict()
    for key, value in official_sd.items():
        assert exported[key].dtype == value.dtype, key
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


@pytest.mark.parametrize("problem", ["missing", "extra", "shape"])
def test_conversion_errors_name_the_key(problem):
    model = _random_model()
    sd = _export(model)
    key = "backbone.layers.1.blocks.1.mlp.fc1.weight"
    if problem == "missing":
        del sd[key]
    elif problem == "extra":
        key = "backbone.layers.1.blocks.1.mlp.fc3.weight"
        sd[key] = np.zeros((2, 2), np.float32)
    else:
        sd[key] = sd[key][:, :-1]
    with pytest.raises(CheckpointMismatch, match=key.replace(".", r"\.")):
        _convert(sd, model)


def _official_shift_mask(res: int, ws: int) -> np.ndarray:
    """The classification Swin's attn_mask, written independently token by token."""
    s = ws // 2

    def region(v):
        return 0 if v < res - ws else (1 if v < res - s else 2)

    n_side = res // ws
    out = np.zeros((n_side * n_side, ws * ws, ws * ws), np.float32)
    for wy in range(n_side):
        for wx in range(n_side):
            labels = [3 * region(wy * ws + i // ws) + region(wx * ws + i % ws)
                      for i in range(ws * ws)]
            for i in range(ws * ws):
                for j in range(ws * ws):
                    out[wy * n_side + wx, i, j] = 0.0 if labels[i] == labels[j] else -100.0
    return out


def test_imagenet_release_layout():
    model = _random_model()
    sd = {k[len("backbone."):]: v for k, v in _export(model).items()
          if not k.startswith("backbone.norm")}
    sd.update({"norm.weight": np.ones(16, np.float32), "norm.bias": np.zeros(16, np.float32),
               "head.weight": np.zeros((5, 16), np.float32),
               "head.bias": np.zeros(5, np.float32)})
    for i in range(2):  # shifted blocks at the pre-training resolutions 9x9, 6x6 (ws 3)
        sd[f"layers.{i}.blocks.1.attn_mask"] = _official_shift_mask((9, 6)[i], 3)
    params, report = _convert(sd, model, their_prefix="", allow_partial=True)
    assert sorted(report.ignored) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    assert report.missing == ["norm0/scale <- norm0.weight", "norm0/bias <- norm0.bias",
                              "norm1/scale <- norm1.weight", "norm1/bias <- norm1.bias"]
    kept = "4 model params not in the source keep their fresh init"
    assert not report.unused and report.warnings == [kept]
    assert ("norm0", "scale") not in params and ("layers", 0, "blocks", 0, "norm1", "scale") \
        in params
    sd["layers.0.blocks.1.attn_mask"] = -sd["layers.0.blocks.1.attn_mask"]
    _, report = _convert(sd, model, their_prefix="", allow_partial=True)
    assert report.warnings == ["buffer layers.0.blocks.1.attn_mask differs from the "
                               "recomputed constant", kept]
    with pytest.raises(CheckpointMismatch, match=r"norm0\.weight"):
        _convert(sd, model, their_prefix="")  # without allow_partial


def test_window_change_needs_resize():
    source = _random_model(window_size=3)
    target = _random_model(window_size=5)
    sd = _export(source, window_size=3)
    table = "backbone.layers.0.blocks.0.attn.relative_position_bias_table"
    with pytest.raises(CheckpointMismatch, match=table.replace(".", r"\.")):
        _convert(sd, target, window_size=5)
    params, report = _convert(sd, target, window_size=5, resize_window=True)
    assert len(report.resized) == 4 and not report.warnings
    np.testing.assert_array_equal(
        params[("layers", 0, "blocks", 0, "attn", "relative_position_bias_table")],
        swin_table.resize_relative_position_bias(sd[table], 5))


def test_resize_relative_position_bias_identity():
    table = np.random.default_rng(0).normal(size=(13 * 13, 3)).astype(np.float32)
    np.testing.assert_array_equal(swin_table.resize_relative_position_bias(table, 7), table)


@pytest.mark.torch
def test_resize_relative_position_bias_matches_torch_bicubic():
    torch = pytest.importorskip("torch")
    table = np.random.default_rng(0).normal(size=(13 * 13, 4)).astype(np.float32)
    ours = swin_table.resize_relative_position_bias(table, 12)
    # the official Swin fine-tuning loader (utils.py load_pretrained)
    t = torch.from_numpy(table).permute(1, 0).reshape(1, 4, 13, 13)
    ref = torch.nn.functional.interpolate(t, size=(23, 23), mode="bicubic",
                                          align_corners=False)
    ref = ref.reshape(4, 23 * 23).permute(1, 0).numpy()
    assert ours.shape == (529, 4)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------- .pkl reader

def test_pkl_reader_reads_the_detectron2_format(tmp_path):
    model = _random_model()
    sd = _export(model)
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": sd, "__author__": "test", "matching_heuristics": True}, f)
    read = detectron2.read_detectron2_checkpoint(path)
    assert list(read) == list(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(read[k], v)
    params, _ = _convert(read, model)
    np.testing.assert_array_equal(params[("norm1", "bias")], model.norm1.bias[...])
    old = tmp_path / "old.pkl"  # older files: arrays at top level, protocol 2
    with open(old, "wb") as f:
        pickle.dump({"w": np.arange(3.0)}, f, protocol=2)
    np.testing.assert_array_equal(detectron2.read_detectron2_checkpoint(old)["w"],
                                  np.arange(3.0))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def test_pkl_reader_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": _Evil(marker)}, "__author__": "x"}, f)
    with pytest.raises(detectron2.UnsafePickleError, match=r"evil\.pkl.*system"):
        detectron2.read_detectron2_checkpoint(path)
    assert not marker.exists()


@pytest.mark.torch
def test_pkl_reader_reads_pickled_torch_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    # what tools/convert-pretrained-swin-model-to-d2.py writes: a plain pickle of tensors
    sd = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.arange(3)}
    path = tmp_path / "swin.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": sd, "__author__": "third_party"}, f)
    read = detectron2.read_detectron2_checkpoint(path)
    np.testing.assert_array_equal(read["a"], np.arange(6.0, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(read["b"], np.arange(3))
