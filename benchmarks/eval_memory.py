"""Peak memory of evaluation at large K: memory-light path vs the literal full-K path.

For each K, one 512x683 image (test resolution = original resolution), slide mode with
512x512 windows (2 overlapping windows, as ADE20K's test pipeline gives a 512x683 image), a
small ViT (embed 64, 2 layers, patch 16) and a RankSeg head with kappa=50. Measured:

* XLA's compiled memory analysis (`jax.jit(f).lower(x).compile().memory_analysis()`): temp
  bytes (intermediates) and the total of arguments + outputs + temps, for the whole jitted
  inference (forward + window averaging + argmax at full resolution);
* host peak RSS of a fresh process that builds, compiles and runs it once (ru_maxrss), only
  where running is safe on a small shared machine (`--run_max_gb`).

Usage: python benchmarks/eval_memory.py [--ks 150,847,1284,3688] [--run_max_gb 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

HW = (512, 683)


def _config(k: int):
    from helpers import tiny_config

    c = tiny_config("rankseg", num_classes=k, topk=50, img_size=(512, 512), downsample=8)
    c.test.mode, c.test.crop_size, c.test.stride = "slide", (512, 512), (512, 512)
    return c


def worker(k: int, path: str, run: bool) -> dict:
    """Builds, compiles (and optionally runs) one path in this process; returns numbers."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rankseg_jax import models, resize
    from rankseg_jax.evaluation import export, full_logits

    c = _config(k)
    model = models.build_model(c)
    if path == "light":
        fn = export.inference_fn(c, model, HW)
    else:
        def fn(images):
            logits = full_logits.inference_logits(model, images, mode="slide", crop=(512, 512),
                                                stride=(512, 512))
            return jnp.argmax(resize.resize_bilinear(logits, HW), axis=1)
    x = jax.ShapeDtypeStruct((1, *HW, 3), jnp.float32)
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(x).compile()
    compile_s = time.perf_counter() - t
    ma = compiled.memory_analysis()
    out = {"K": k, "path": path, "compile_s": round(compile_s, 1),
           "temp_MiB": ma.temp_size_in_bytes / 2**20,
           "total_MiB": (ma.temp_size_in_bytes + ma.argument_size_in_bytes
                         + ma.output_size_in_bytes) / 2**20}
    if run:
        img = np.random.default_rng(0).standard_normal((1, *HW, 3)).astype(np.float32)
        t = time.perf_counter()
        jax.block_until_ready(compiled(jnp.asarray(img)))
        out["run_s"] = round(time.perf_counter() - t, 2)
        out["rss_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", default="150,847,1284,3688")
    ap.add_argument("--run_max_gb", type=float, default=4.0,
                    help="run (for RSS) only when the naive full-K buffers stay below this")
    ap.add_argument("--worker", default="")
    args = ap.parse_args()
    if args.worker:
        k, path, run = args.worker.split(":")
        print(json.dumps(worker(int(k), path, run == "1")))
        return
    rows = []
    for k in map(int, args.ks.split(",")):
        # The naive path holds ~3 K-way float32 maps at 512x683 (window logits, canvas, resize).
        naive_gb = 3 * k * HW[0] * HW[1] * 4 / 2**30
        for path in ("light", "naive"):
            run = path == "light" or naive_gb < args.run_max_gb
            res = subprocess.run([sys.executable, __file__, "--worker", f"{k}:{path}:{int(run)}"],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    print("\n| K | path | XLA temp (MiB) | XLA args+out+temp (MiB) | host peak RSS (MiB) |"
          " run (s) | compile (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        rss = f"{r['rss_MiB']:.0f}" if "rss_MiB" in r else "not run"
        run = f"{r['run_s']:.2f}" if "run_s" in r else "-"
        print(f"| {r['K']} | {r['path']} | {r['temp_MiB']:.1f} | {r['total_MiB']:.1f} | {rss} |"
              f" {run} | {r['compile_s']} |")


if __name__ == "__main__":
    main()
