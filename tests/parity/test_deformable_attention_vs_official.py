"""Multi-scale deformable attention vs the official PyTorch code (standalone.npz).

`msda_core.*`: the official `ms_deform_attn_core_pytorch` on sampling points in
[-0.25, 1.25] (exact 0, 1 and pixel centres included). `msda.*`: the official
`MSDeformAttn(d_model=32, n_levels=3, n_heads=8, n_points=4)` with its parameters, without
(`nomask`) and with (`padmask`) an input padding mask; 74% of its sampling points lie outside
the unit square.
"""

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import ROOT

from rankseg_jax.convert import engine
from rankseg_jax.convert.tables import mask2former as tables
from rankseg_jax.models import deformable_attention as da

FIX = ROOT / "tests" / "fixtures" / "official_mask2former"
ATOL = 1e-4


@pytest.fixture(scope="module")
def standalone():
    return dict(np.load(FIX / "standalone.npz"))


def _shapes(arr) -> tuple:
    return tuple((int(h), int(w)) for h, w in arr)


def test_core_matches_official(standalone):
    s = standalone
    out = jax.jit(da.ms_deform_attn_core, static_argnums=1)(
        s["msda_core.value"], _shapes(s["msda_core.spatial_shapes"]),
        s["msda_core.sampling_locations"], s["msda_core.attention_weights"])
    np.testing.assert_allclose(np.asarray(out), s["msda_core.output"], rtol=0, atol=ATOL)


def _module(s) -> da.MSDeformAttn:
    model = nnx.eval_shape(lambda: da.MSDeformAttn(32, 3, 8, 4, rngs=nnx.Rngs(0)))
    params, _ = engine.map_state_dict(
        {k: v for k, v in s.items() if k.startswith("msda.param.")},
        tables.msdeform_attn_rows((), "msda.param"), expected=engine.param_shapes(model))
    engine.load_into(model, params)
    return model


@pytest.mark.parametrize("case", ["nomask", "padmask"])
def test_module_matches_official(standalone, case):
    s = standalone
    model = _module(s)
    shapes = _shapes(s["msda.spatial_shapes"])
    mask = s["msda.padding_mask"] if case == "padmask" else None
    assert mask is None or mask.any()

    @nnx.jit(static_argnums=(4,))
    def run(m, q, ref, inp, shapes, mask):
        value, loc, weights = m.sample_inputs(q, ref, inp, shapes, mask)
        core = da.ms_deform_attn_core(value, shapes, loc, weights)
        return value, loc, weights, core, m(q, ref, inp, shapes, mask)

    got = run(model, s["msda.query"], s["msda.reference_points"], s["msda.input_flatten"],
              shapes, mask)
    names = ("value", "sampling_locations", "attention_weights", "core_output", "output")
    for name, ours in zip(names, got, strict=True):
        np.testing.assert_allclose(np.asarray(ours), s[f"msda.{case}.{name}"], rtol=0,
                                   atol=ATOL, err_msg=name)
