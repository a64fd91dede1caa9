"""Training-step speed: the real jitted train step (model, losses, logged metrics, optimizer).

For one configuration (or the standard set) this builds the trainer's own step
(`rankseg_jax.train.step.make_train_step`: forward, losses and logged metrics, backward,
optax update, finiteness guard; state donated) on one device, and reports

* compile time (lower + compile), step time (median of timed steps after warm-up),
  images/s;
* XLA's FLOP estimate of the step, the achieved TFLOP/s and the MFU against the device's
  dense peak (GPU/TPU; `benchmarks/common.py` has the table; none on CPU);
* XLA memory analysis (temp, args+out+temp) and, on GPU/TPU, the allocator's peak.

Each configuration runs in a fresh subprocess. Examples:

    python benchmarks/train_step.py --preset s16 --size 256 --k 150 --kappa 50
    python benchmarks/train_step.py --preset s16 --size 256 --k 1284 --baseline
    python benchmarks/train_step.py --standard --append     # the standard set -> BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    append_to_benchmarks,
    environment,
    markdown_section,
    memory_numbers,
    peak_device_memory_MiB,
    peak_tflops,
)

PRESET_NAMES = {"ti16": "Ti/16", "s16": "S/16", "b16": "B/16", "l16": "L/16"}
# (preset, size, K, kappa (0 = Segmenter baseline), batch): the rows of the speed issue.
STANDARD = [("s16", 256, 150, 50, 1), ("s16", 256, 1284, 50, 1), ("s16", 256, 1284, 0, 1),
            ("b16", 512, 150, 50, 1), ("s16", 256, 150, 50, 8)]


def build_config(preset: str, size: int, k: int, kappa: int, batch: int, dtype: str,
                 remat: bool):
    """A validated Segmenter(+RankSeg) config for one square crop size on one device."""
    from rankseg_jax import config as config_lib

    c = config_lib.base_config()
    config_lib.apply_vit_preset(c, preset)
    c.model.num_classes, c.model.dtype, c.model.remat = k, dtype, remat
    c.model.rankseg.enabled = kappa > 0
    if kappa:
        c.model.rankseg.topk = kappa
    else:
        c.model.head.n_layers = 2  # the Segmenter baseline head
    c.model.vit.img_size = c.data.crop_size = c.test.crop_size = c.test.stride = (size, size)
    c.train.batch_size = batch
    c.mesh.data = c.mesh.fsdp = c.mesh.tensor = 1
    config_lib.validate(c, check_files=False, num_devices=1, process_count=1)
    return c


def measure(preset: str, size: int, k: int, kappa: int, batch: int, dtype: str, remat: bool,
            steps: int, warmup: int) -> dict:
    """Compiles and times the train step of one configuration (in this process)."""
    import jax
    import numpy as np

    from rankseg_jax import sharding
    from rankseg_jax.train import step as train_step

    c = build_config(preset, size, k, kappa, batch, dtype, remat)
    mesh = sharding.make_mesh(c, jax.devices()[:1])
    setup = train_step.make_setup(c, mesh)
    step_fn = train_step.make_train_step(setup)
    state = train_step.init_state(setup)
    rng = np.random.default_rng(0)
    image = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    # A few classes per crop in square blocks, as real scenes (ADE20K: ~8-10 per image).
    blocks = rng.integers(0, k, (batch, 4, 4))
    label = np.kron(blocks, np.ones((size // 4, size // 4), np.int64)).astype(np.int32)
    batch_sh = sharding.batch_sharding(mesh)
    data = {"image": jax.device_put(image, batch_sh), "label": jax.device_put(label, batch_sh)}
    key = jax.device_put(jax.random.PRNGKey(0), sharding.replicated(mesh))
    t = time.perf_counter()
    compiled = step_fn.lower(state, data, key).compile()
    compile_s = time.perf_counter() - t
    for _ in range(warmup):
        state, metrics = compiled(state, data, key)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, metrics = compiled(state, data, key)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    numbers = memory_numbers(compiled)
    tflops = numbers["gflops"] / 1e3 / step_s
    peak = peak_tflops(jax.devices()[0].device_kind, dtype)
    return {"preset": preset, "size": size, "K": k, "kappa": kappa or None, "batch": batch,
            "dtype": dtype, "remat": remat, "compile_s": round(compile_s, 1),
            "step_s": step_s, "images_per_s": batch / step_s, "tflops_per_s": tflops,
            "mfu": None if peak is None else tflops / peak,
            "peak_MiB": peak_device_memory_MiB(), **numbers}


def run_in_subprocess(args: list[str]) -> dict:
    res = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True,
                         text=True)
    if res.returncode:
        sys.exit(f"worker {args} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = ["| model | size | K | kappa | batch | dtype | step (s) | images/s | compile (s) |"
             " GFLOPs/step | TFLOP/s | MFU | XLA temp (MiB) | peak (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        model = f"ViT-{PRESET_NAMES[r['preset']]} " + ("RankSeg" if r["kappa"] else "baseline")
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        peak = "-" if r["peak_MiB"] is None else f"{r['peak_MiB']:.0f}"
        lines.append(
            f"| {model}{' remat' if r['remat'] else ''} | {r['size']}² | {r['K']} |"
            f" {r['kappa'] or '-'} | {r['batch']} | {r['dtype']} | {r['step_s']:.3f} |"
            f" {r['images_per_s']:.2f} | {r['compile_s']:.0f} | {r['gflops']:.0f} |"
            f" {r['tflops_per_s']:.3f} | {mfu} | {r['temp_MiB']:.0f} | {peak} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="s16", help="ViT preset: ti16, s16, b16, l16")
    ap.add_argument("--size", type=int, default=256, help="square crop size")
    ap.add_argument("--k", type=int, default=150, help="number of classes")
    ap.add_argument("--kappa", type=int, default=50, help="RankSeg kappa")
    ap.add_argument("--baseline", action="store_true", help="Segmenter baseline (no RankSeg)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--remat", action="store_true")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--standard", action="store_true", help="run the standard set")
    ap.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    ap.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker is not None:
        p, size, k, kappa, batch, dtype, remat, steps, warmup = a.worker
        print(json.dumps(measure(p, int(size), int(k), int(kappa), int(batch), dtype,
                                 remat == "1", int(steps), int(warmup))))
        return
    jobs = STANDARD if a.standard else [
        (a.preset, a.size, a.k, 0 if a.baseline else a.kappa, a.batch)]
    rows = []
    for preset, size, k, kappa, batch in jobs:
        rows.append(run_in_subprocess([preset, str(size), str(k), str(kappa), str(batch),
                                       a.dtype, str(int(a.remat)), str(a.steps),
                                       str(a.warmup)]))
        print(json.dumps(rows[-1]), flush=True)
    text = table(rows)
    print("\n" + text)
    if a.append:
        command = "python benchmarks/train_step.py " + " ".join(sys.argv[1:])
        append_to_benchmarks(markdown_section("Train step speed", command, environment(), text))


if __name__ == "__main__":
    main()
