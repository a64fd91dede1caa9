"""Unit tests of the pure-JAX multi-scale deformable attention (no fixtures needed)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rankseg_jax.models import deformable_attention as da

SHAPES = ((3, 4), (2, 2), (1, 5))  # includes a 1-row level


def _naive_core(value, shapes, loc, weights):
    """Independent float64 loop version of grid_sample(align_corners=False, zeros)."""
    b, _, nh, dh = value.shape
    lq = loc.shape[1]
    out = np.zeros((b, lq, nh, dh))
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    for bi, q, m in itertools.product(range(b), range(lq), range(nh)):
        for lvl, (h, w) in enumerate(shapes):
            grid = value[bi, starts[lvl]:starts[lvl + 1], m].reshape(h, w, dh)
            for p in range(loc.shape[4]):
                x = loc[bi, q, m, lvl, p, 0] * w - 0.5
                y = loc[bi, q, m, lvl, p, 1] * h - 0.5
                xf, yf = int(np.floor(x)), int(np.floor(y))
                sample = np.zeros(dh)
                for yy, xx in itertools.product((yf, yf + 1), (xf, xf + 1)):
                    if 0 <= yy < h and 0 <= xx < w:
                        sample += (1 - abs(x - xx)) * (1 - abs(y - yy)) * grid[yy, xx]
                out[bi, q, m] += weights[bi, q, m, lvl, p] * sample
    return out.reshape(b, lq, nh * dh)


def _inputs(seed, b=2, lq=6, nh=2, dh=3, npt=4, lo=-0.3, hi=1.3):
    rng = np.random.default_rng(seed)
    s = sum(h * w for h, w in SHAPES)
    value = rng.normal(size=(b, s, nh, dh)).astype(np.float32)
    loc = rng.uniform(lo, hi, size=(b, lq, nh, len(SHAPES), npt, 2)).astype(np.float32)
    weights = rng.uniform(0, 1, size=(b, lq, nh, len(SHAPES), npt)).astype(np.float32)
    return value, loc, weights


def _core(value, loc, weights, shapes=SHAPES):
    return np.asarray(jax.jit(da.ms_deform_attn_core, static_argnums=1)(
        value, shapes, loc, weights))


def test_core_borders_corners_outside_vs_naive():
    value, loc, weights = _inputs(0)
    # Exact corners/borders (0, 1), pixel centres, half-way between centres, just inside and
    # just outside the half-pixel margin, and far outside.
    special = np.array([0.0, 1.0, 0.5, 1 / 8, 7 / 8, 0.25, -0.125, 1.125, -0.1, 1.1, -3.0, 4.0],
                       np.float32)
    rng = np.random.default_rng(1)
    mask = rng.uniform(size=loc.shape) < 0.6
    loc = np.where(mask, rng.choice(special, size=loc.shape), loc).astype(np.float32)
    ours = _core(value, loc, weights)
    ref = _naive_core(value.astype(np.float64), SHAPES, loc.astype(np.float64), weights)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)
    # Points entirely outside the map contribute exactly zero.
    far = np.full_like(loc, 5.0)
    assert not _core(value, far, weights).any()


def test_core_batch_size_invariant():
    value, loc, weights = _inputs(2, b=3)
    full = _core(value, loc, weights)
    for i in range(3):
        one = _core(value[i:i + 1], loc[i:i + 1], weights[i:i + 1])
        np.testing.assert_allclose(full[i:i + 1], one, rtol=0, atol=1e-6)


def test_core_jit_grad_finite_and_correct():
    # Fractional pixel parts kept in [0.2, 0.8] so finite differences cross no tap boundary.
    value, loc, weights = _inputs(3)
    for lvl, (h, w) in enumerate(SHAPES):
        for c, size in ((0, w), (1, h)):
            pix = np.floor(loc[..., lvl, :, c] * size - 0.5)
            frac = np.random.default_rng(lvl).uniform(0.2, 0.8, size=pix.shape)
            loc[..., lvl, :, c] = (pix + frac + 0.5) / size
    cot = np.random.default_rng(4).normal(size=(2, 6, 6)).astype(np.float32)

    def f(v, lc, a):
        return jnp.sum(da.ms_deform_attn_core(v, SHAPES, lc, a) * cot)

    f_jit = jax.jit(f)
    grads = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(value, loc, weights)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    rng = np.random.default_rng(5)
    for i, x in enumerate((value, loc, weights)):
        direction = rng.normal(size=x.shape).astype(np.float32)
        eps = 1e-3
        args_p = [value, loc, weights]
        args_m = [value, loc, weights]
        args_p[i] = x + eps * direction
        args_m[i] = x - eps * direction
        fd = (float(f_jit(*args_p)) - float(f_jit(*args_m))) / (2 * eps)
        an = float(np.sum(np.asarray(grads[i]) * direction))
        assert abs(fd - an) <= 2e-2 * max(1.0, abs(an)), (i, fd, an)


def test_ring_init_and_padding_mask():
    m = da.MSDeformAttn(8, n_levels=3, n_heads=4, n_points=2, rngs=nnx.Rngs(0))
    bias = np.asarray(m.sampling_offsets.bias[...]).reshape(4, 3, 2, 2)
    for head in range(4):
        theta = 2 * np.pi * head / 4
        d = np.array([np.cos(theta), np.sin(theta)])
        d = d / np.abs(d).max()
        for p in range(2):
            np.testing.assert_allclose(bias[head, :, p], np.tile(d * (p + 1), (3, 1)),
                                       atol=1e-6)
    assert not np.asarray(m.sampling_offsets.kernel[...]).any()
    assert not np.asarray(m.attention_weights.kernel[...]).any()
    assert not np.asarray(m.attention_weights.bias[...]).any()

    rng = np.random.default_rng(0)
    s = sum(h * w for h, w in SHAPES)
    q = rng.normal(size=(2, 5, 8)).astype(np.float32)
    inp = rng.normal(size=(2, s, 8)).astype(np.float32)
    ref = rng.uniform(size=(2, 5, 3, 2)).astype(np.float32)
    pad = rng.uniform(size=(2, s)) < 0.4
    inp2 = np.where(pad[..., None], 100.0, inp).astype(np.float32)

    @nnx.jit
    def run(m, q, ref, inp, inp2, pad):
        return (m.sample_inputs(q, ref, inp, SHAPES, pad)[0], m(q, ref, inp, SHAPES, pad),
                m(q, ref, inp2, SHAPES, pad), m(q, ref, inp2, SHAPES, None))

    value, out, out2, out_nomask = (np.asarray(x) for x in run(m, q, ref, inp, inp2, pad))
    assert not value[pad].any() and np.abs(value[~pad]).min(axis=(-1, -2)).all()
    # With the mask, the padded rows' content does not matter; without it, it does.
    np.testing.assert_allclose(out, out2, rtol=0, atol=1e-6)
    assert np.abs(out_nomask - out2).max() > 1e-2


@pytest.mark.parametrize("bad", [((3, 4), (2, 2)), ((3, 4), (2, 2), (1, 4))])
def test_core_rejects_wrong_shapes(bad):
    value, loc, weights = _inputs(6)
    with pytest.raises(ValueError):
        da.ms_deform_attn_core(value, bad, loc, weights)
