"""Inference speed of one image: the memory-light engine vs the literal full-K path.

Builds a Segmenter(+RankSeg) model at a preset (random weights: speed does not depend on
them) and times, for one normalised image of the given size, whole or slide inference to an
argmax map at that size:

* `light`: the jitted memory-light function used by evaluation and `jax.export`
  (`rankseg_jax.evaluation.export.inference_fn`: windows -> per-window top-kappa logits ->
  combine over the union of selected classes at full resolution, argmax in class chunks);
* `full`: the official order of operations (`evaluation.full_logits.naive_scores`: K-way
  -100-filled logits, resize, softmax, argmax).

Reports compile time, median time after warm-up and XLA memory. Each run is a subprocess.

    python benchmarks/inference.py --preset s16 --size 256 --k 150 --mode whole
    python benchmarks/inference.py --standard --append
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    append_to_benchmarks,
    environment,
    markdown_section,
    memory_numbers,
    peak_device_memory_MiB,
    run_workers,
    runtime_setup,
    timing_turn,
)
from train_step import PRESET_NAMES, build_config  # noqa: E402

# (preset, size, K, kappa (0 = baseline), mode, path)
STANDARD = [("s16", 256, 150, 0, "whole", "full"), ("s16", 256, 150, 50, "whole", "full"),
            ("s16", 256, 150, 50, "whole", "light"), ("s16", 256, 1284, 50, "whole", "light")]


def measure(preset: str, size: int, k: int, kappa: int, mode: str, path: str, runs: int,
            warmup: int, dtype: str = "float32", batch: int = 1,
            overrides: tuple[str, ...] = ()) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rankseg_jax import models
    from rankseg_jax.evaluation import export, full_logits

    c = build_config(preset, size, k, kappa, 1, dtype, False, tuple(overrides))
    c.unlock()
    c.test.mode = mode
    model = models.build_model(c)
    if path == "light":
        fn = export.inference_fn(c, model, (size, size))
    else:
        def fn(images):
            scores = full_logits.naive_scores(model, images, mode=mode, crop=(size, size),
                                              stride=(size, size), ori=(size, size),
                                              flip=False, softmax=True)
            return jnp.argmax(scores, axis=1)
    image = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, 3)),
                        jnp.float32)
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(image).compile()
    compile_s = time.perf_counter() - t
    times, cpu = [], []
    with timing_turn():  # alone on the device when the workers run in parallel
        for _ in range(warmup):
            jax.block_until_ready(compiled(image))
        for _ in range(runs):
            t, p = time.perf_counter(), time.process_time()
            jax.block_until_ready(compiled(image))
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - p)
    return {"preset": preset, "size": size, "K": k, "kappa": kappa or None, "mode": mode,
            "path": path, "dtype": dtype, "batch": batch, "overrides": list(overrides),
            "compile_s": round(compile_s, 1), "time_s": statistics.median(times),
            "cpu_s": statistics.median(cpu), "peak_MiB": peak_device_memory_MiB(),
            **memory_numbers(compiled)}


def main() -> None:
    from rankseg_jax import runtime

    # As main.py: with the opt-in RANKSEG_JAX_MALLOC_TUNABLES=1, restart once, before
    # anything else, with the malloc settings (see runtime.py).
    runtime.restart_with_malloc_tunables()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="s16")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--k", type=int, default=150)
    ap.add_argument("--kappa", type=int, default=50)
    ap.add_argument("--baseline", action="store_true")
    ap.add_argument("--mode", default="whole", choices=["whole", "slide"])
    ap.add_argument("--path", default="light", choices=["light", "full"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--batch", type=int, default=1, help="images per call")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. model.attention=cudnn (repeatable)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--xla_defaults", action="store_true",
                    help="do not add the project's XLA:CPU flags (rankseg_jax/runtime.py)")
    ap.add_argument("--standard", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated row indices of the standard set")
    ap.add_argument("--parallel", action="store_true",
                    help="compile every row at once, then time them one at a time")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds after which a row's worker is killed (its row fails)")
    ap.add_argument("--append", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker is not None:
        print(json.dumps(measure(**json.loads(a.worker))))
        return
    runtime_setup(a.xla_defaults)
    jobs = STANDARD if a.standard else [
        (a.preset, a.size, a.k, 0 if a.baseline else a.kappa, a.mode, a.path)]
    if a.only:
        jobs = [jobs[int(i)] for i in a.only.split(",")]
    keys = ("preset", "size", "k", "kappa", "mode", "path")
    rows = run_workers(__file__, [
        dict(zip(keys, job, strict=True), runs=a.runs, warmup=a.warmup, dtype=a.dtype,
             batch=a.batch, overrides=a.set) for job in jobs], a.parallel, a.timeout)
    lines = ["| model | size | K | kappa | mode | path | dtype | batch | time (s) | CPU s |"
             " compile (s) | XLA temp (MiB) | peak (MiB) | GFLOPs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        model = f"{PRESET_NAMES[r['preset']]} " + ("RankSeg" if r["kappa"] else "baseline")
        model += f" [{', '.join(r['overrides'])}]" if r["overrides"] else ""
        head = (f"| {model} | {r['size']}² | {r.get('K', r.get('k'))} | {r['kappa'] or '-'} |"
                f" {r['mode']} | {r['path']} | {r['dtype']} | {r['batch']} |")
        if "error" in r:
            lines.append(f"{head} failed: {r['error']} |")
            continue
        peak = "-" if r["peak_MiB"] is None else f"{r['peak_MiB']:.0f}"
        lines.append(f"{head} {r['time_s']:.3f} | {r['cpu_s']:.3f} | {r['compile_s']:.0f} |"
                     f" {r['temp_MiB']:.0f} | {peak} | {r['gflops']:.1f} |")
    text = "\n".join(lines)
    print("\n" + text)
    if a.append:
        command = "python benchmarks/inference.py " + " ".join(sys.argv[1:])
        append_to_benchmarks(markdown_section("Inference speed (one image)", command,
                                              environment(), text))


if __name__ == "__main__":
    main()
