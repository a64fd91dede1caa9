"""Compiled memory and time of multi-scale deformable attention vs input resolution.

For a square input of side R, the Mask2Former pixel-decoder encoder sees 3 levels (res5,
res4, res3 = R/32, R/16, R/8), i.e. S = (R/8)^2 * 21/16 tokens, each a query. Measured at
D=256, 8 heads, 3 levels, 4 points (official sizes), batch 1, float32:

* `core`:  `ms_deform_attn_core` alone (value [1,S,8,32], locations [1,S,8,3,4,2], weights);
* `layer`: one `DeformableEncoderLayer` (MSDeformAttn + LayerNorms + 256-1024-256 FFN);

each jitted forward (`fwd`) and forward+backward (`fwd+bwd`: value and gradients of sum(out)
with respect to all inputs, and for `layer` all parameters). Reported: XLA's compiled temp memory
(`jax.jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes`), temp bytes per
token, compile time and the median wall time of `--repeats` runs on this machine's backend.
The last line per (part, mode) is the log-log slope of temp memory vs tokens between the
smallest and largest resolution: 1.0 = linear (a dense [S, S] attention would give 2.0).

Usage: python benchmarks/deformable_attention_memory.py [--res 256,384,512,768,1024]
       [--parts core,layer] [--repeats 3] [--no_run]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

D, HEADS, LEVELS, POINTS, FFN = 256, 8, 3, 4, 1024


def _shapes(res: int) -> tuple:
    return tuple((res // s, res // s) for s in (32, 16, 8))


def _core_fns(res: int):
    import jax
    import jax.numpy as jnp

    from rankseg_jax.models.deformable_attention import ms_deform_attn_core

    shapes = _shapes(res)
    s = sum(h * w for h, w in shapes)
    args = (jax.ShapeDtypeStruct((1, s, HEADS, D // HEADS), jnp.float32),
            jax.ShapeDtypeStruct((1, s, HEADS, LEVELS, POINTS, 2), jnp.float32),
            jax.ShapeDtypeStruct((1, s, HEADS, LEVELS, POINTS), jnp.float32))

    def fwd(v, loc, a):
        return ms_deform_attn_core(v, shapes, loc, a)

    def fwd_bwd(v, loc, a):
        return jax.value_and_grad(lambda *x: jnp.sum(fwd(*x)), argnums=(0, 1, 2))(v, loc, a)

    return s, args, fwd, fwd_bwd


def _layer_fns(res: int):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from rankseg_jax.models.heads.mask2former.pixel_decoder import (
        DeformableEncoderLayer,
        encoder_reference_points,
    )

    shapes = _shapes(res)
    s = sum(h * w for h, w in shapes)
    layer = nnx.eval_shape(lambda: DeformableEncoderLayer(
        D, FFN, n_levels=LEVELS, n_heads=HEADS, n_points=POINTS, rngs=nnx.Rngs(0)))
    graph, state = nnx.split(layer)
    ref = encoder_reference_points(shapes)[None, :, None, :].repeat(LEVELS, axis=2)
    x = jax.ShapeDtypeStruct((1, s, D), jnp.float32)

    def fwd(st, x, pos):
        return nnx.merge(graph, st)(x, pos, jnp.asarray(ref), shapes)

    def fwd_bwd(st, x, pos):
        def loss(st, x):
            return jnp.sum(fwd(st, x, pos))
        return jax.value_and_grad(loss, argnums=(0, 1))(st, x)

    return s, (state, x, x), fwd, fwd_bwd


def _concrete(args, seed=0):
    import jax
    import numpy as np

    rng = np.random.default_rng(seed)

    def make(a):
        if hasattr(a, "shape") and hasattr(a, "dtype"):
            return jax.numpy.asarray(rng.uniform(0, 1, a.shape).astype(a.dtype))
        return a

    return jax.tree_util.tree_map(make, args)


def measure(part: str, res: int, mode: str, run: bool, repeats: int) -> dict:
    """Compiles (and optionally times) one (part, resolution, mode); returns the numbers."""
    import jax

    s, args, fwd, fwd_bwd = (_core_fns if part == "core" else _layer_fns)(res)
    fn = fwd if mode == "fwd" else fwd_bwd
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t
    temp = compiled.memory_analysis().temp_size_in_bytes
    out = {"part": part, "mode": mode, "res": res, "tokens": s, "temp_MiB": temp / 2**20,
           "B_per_token": temp / s, "compile_s": compile_s, "run_ms": float("nan")}
    if run:
        concrete = _concrete(args)
        jax.block_until_ready(compiled(*concrete))
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            jax.block_until_ready(compiled(*concrete))
            times.append(time.perf_counter() - t)
        out["run_ms"] = 1e3 * sorted(times)[len(times) // 2]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", default="256,384,512,768,1024")
    ap.add_argument("--parts", default="core,layer")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no_run", action="store_true", help="compile only (memory, no timing)")
    a = ap.parse_args()
    import jax

    resolutions = [int(r) for r in a.res.split(",")]
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}); D={D}, "
          f"heads={HEADS}, levels={LEVELS}, points={POINTS}, batch 1, float32")
    print(f"{'part':6} {'mode':8} {'res':>5} {'tokens':>7} {'temp MiB':>10} {'B/token':>9} "
          f"{'compile s':>9} {'run ms':>9}")
    for part in a.parts.split(","):
        for mode in ("fwd", "fwd+bwd"):
            rows = [measure(part, r, mode, not a.no_run, a.repeats) for r in resolutions]
            for m in rows:
                print(f"{m['part']:6} {m['mode']:8} {m['res']:>5} {m['tokens']:>7} "
                      f"{m['temp_MiB']:>10.1f} {m['B_per_token']:>9.0f} "
                      f"{m['compile_s']:>9.2f} {m['run_ms']:>9.1f}", flush=True)
            lo, hi = rows[0], rows[-1]
            mem_slope = (math.log(hi["temp_MiB"] / lo["temp_MiB"])
                         / math.log(hi["tokens"] / lo["tokens"]))
            line = f"{part:6} {mode:8} log-log slope vs tokens: temp memory {mem_slope:.3f}"
            if not a.no_run:
                t_slope = (math.log(hi["run_ms"] / lo["run_ms"])
                           / math.log(hi["tokens"] / lo["tokens"]))
                line += f", time {t_slope:.3f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
