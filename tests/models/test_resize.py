"""rankseg_jax.resize against torch `F.interpolate` (align_corners=False) and AdaptiveAvgPool.

The weights are torch's float32 weights: bilinear bit for bit, bicubic within float32 rounding
(torch's weights are read off by resizing an identity image, whose other axis keeps its size,
so every output value is one weight or a float32 sum of clamped border taps). The resized
values differ only by the summation order (matmul vs torch's nested multiply-adds).
"""

from fractions import Fraction

import jax.numpy as jnp
import numpy as np
import pytest

from rankseg_jax import resize
from rankseg_jax.convert import engine
from rankseg_jax.models.backbones import vit

torch = pytest.importorskip("torch")
F = torch.nn.functional

EPS = 2.0 ** -23  # float32 machine epsilon
# Up and down, odd sizes, exact and inexact ratios, 1-pixel sides (incl. the 683->96).
PAIRS = [(683, 96), (512, 375), (96, 683), (375, 512), (683, 500), (24, 32), (32, 24),
         (512, 2048), (7, 3), (3, 7), (5, 11), (11, 5), (1, 5), (5, 1), (2, 3), (33, 17),
         (17, 33), (97, 61), (61, 97), (999, 1000), (1000, 999), (640, 427), (30, 8)]
PAIRS += [tuple(int(v) for v in p) for p in np.random.default_rng(0).integers(1, 700, (16, 2))]


def _torch_weights(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """torch's [n_out, n_in] weights of one axis: resize eye(n_in) along its last axis only."""
    eye = torch.eye(n_in, dtype=torch.float32)[None, None]
    out = F.interpolate(eye, size=(n_in, n_out), mode=mode, align_corners=False)
    return out[0, 0].numpy().T


@pytest.mark.parametrize("n_in,n_out", PAIRS)
def test_weights_are_torchs(n_in, n_out):
    np.testing.assert_array_equal(resize.bilinear_matrix(n_in, n_out),
                                  _torch_weights(n_in, n_out, "bilinear"))
    # Bicubic: torch's float32 polynomial evaluation (measured bit-equal with torch 2.13 CPU).
    np.testing.assert_allclose(resize.bicubic_matrix(n_in, n_out),
                               _torch_weights(n_in, n_out, "bicubic"), rtol=0, atol=EPS)
    assert resize.bilinear_matrix(n_in, n_out).dtype == np.float32


def test_float64_coordinates_would_differ():
    """The float32 source coordinate matters (the test above can fail): 683 -> 96 moves the
    weights by ~5e-5 when src is computed exactly instead."""
    exact = (np.arange(96) + 0.5) * 683 / 96 - 0.5
    t = exact - np.floor(exact)
    got = resize.bilinear_matrix(683, 96)[np.arange(96), np.floor(exact).astype(int) + 1]
    assert np.abs(got - t).max() > 1e-5


@pytest.mark.parametrize("shape,size", [((512, 683), (375, 500)), ((683, 512), (96, 96)),
                                        ((37, 53), (101, 29)), ((24, 24), (32, 45)),
                                        ((9, 5), (4, 13))])
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_resize_matches_torch(shape, size, mode):
    x = (np.random.default_rng(1).normal(size=(1, 3, *shape)) * 5.4).astype(np.float32)
    want = F.interpolate(torch.from_numpy(x), size=size, mode=mode, align_corners=False)
    fn = resize.resize_bilinear if mode == "bilinear" else resize.resize_bicubic
    got = np.asarray(fn(jnp.asarray(x), size))
    # Summation-order rounding only: a few ulp of the largest input (exact-coordinate weights
    # are off by up to ~1e-3 here).
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=4 * EPS * np.abs(x).max())
    # The same on a channels-last layout (the model's).
    nhwc = np.asarray(fn(jnp.asarray(x.transpose(0, 2, 3, 1)), size, axes=(1, 2)))
    np.testing.assert_array_equal(nhwc, got.transpose(0, 2, 3, 1))


def test_position_embedding_paths_match_torch():
    """The model's run-time resize and the converter's resample, against mmseg's
    `resize_pos_embed` (torch bicubic on the [1, D, g, g] grid, cls entry kept)."""
    g, d, grid = 24, 8, (37, 29)
    pos = np.random.default_rng(2).normal(size=(1, 1 + g * g, d)).astype(np.float32) * 0.02
    grid_t = torch.from_numpy(pos[:, 1:]).reshape(1, g, g, d).permute(0, 3, 1, 2)
    want = F.interpolate(grid_t, size=grid, mode="bicubic", align_corners=False)
    want = np.concatenate([pos[:, :1], want.permute(0, 2, 3, 1).reshape(1, -1, d).numpy()], 1)
    atol = 4 * EPS * np.abs(pos).max()
    np.testing.assert_allclose(vit.resize_pos_embed(jnp.asarray(pos), (g, g), grid), want,
                               rtol=0, atol=atol)
    table, src_grid = engine.resample_pos_embed(pos, grid)
    assert src_grid == (g, g) and table.dtype == np.float32
    np.testing.assert_allclose(table, want, rtol=0, atol=atol)


def test_adaptive_pool_matches_torch():
    x = np.random.default_rng(3).normal(size=(2, 3, 30, 17)).astype(np.float32)
    for size in ((8, 5), (30, 17), (7, 3)):
        want = F.adaptive_avg_pool2d(torch.from_numpy(x), size)
        np.testing.assert_allclose(resize.adaptive_avg_pool(jnp.asarray(x), size),
                                   want.numpy(), rtol=0, atol=4 * EPS * np.abs(x).max())


def _round_f32(q: Fraction) -> np.float32:
    """Correctly rounded (to nearest, ties to even) float32 of an exact rational."""
    x = np.float32(float(q))
    cands = [np.nextafter(x, np.float32(-np.inf)), x, np.nextafter(x, np.float32(np.inf))]
    return min(cands, key=lambda c: (abs(Fraction(float(c)) - q),
                                     int(np.float32(c).view(np.uint32)) & 1))


def test_fma32_is_correctly_rounded():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(2, 300)).astype(np.float32)
    c = (rng.normal(size=300) * np.exp2(rng.integers(-40, 40, 300))).astype(np.float32)
    # Products on a float32 midpoint (1 + 2^-11 + 2^-24) with a tiny addend either side:
    # rounding a float64 sum to float32 would be wrong for one of them.
    h = np.float32(1 + 2 ** -12)
    a = np.concatenate([a, [h, h, h]]).astype(np.float32)
    b = np.concatenate([b, [h, h, h]]).astype(np.float32)
    c = np.concatenate([c, [2 ** -60, -(2 ** -60), 0.0]]).astype(np.float32)
    got = resize.fma32(a, b, c)
    want = [_round_f32(Fraction(float(p)) * Fraction(float(q)) + Fraction(float(r)))
            for p, q, r in zip(a, b, c, strict=True)]
    np.testing.assert_array_equal(got, np.array(want, np.float32))
    assert got[-3] != got[-2]
