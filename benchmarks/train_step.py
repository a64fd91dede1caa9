"""Training-step speed: the real jitted train step (model, losses, logged metrics, optimizer).

For one configuration (or the standard set) this builds the trainer's own step
(`rankseg_jax.train.step.make_train_step`: forward, losses and logged metrics, backward,
optax update, finiteness guard; state donated) on one device, and reports

* compile time (lower + compile), step time (median of timed steps after warm-up), the
  median process CPU time per step (all threads; on a shared CPU less sensitive to other
  jobs than wall time), images/s;
* XLA's FLOP estimate of the step, the achieved TFLOP/s and the MFU against the device's
  dense peak (GPU/TPU; `benchmarks/common.py` has the table; none on CPU);
* XLA memory analysis (temp, args+out+temp) and, on GPU/TPU, the allocator's peak.

Models: ViT presets (Segmenter, `--baseline` or RankSeg) and `m2f` (Mask2Former, the tiny
Swin of configs/demo_mask2former.py; `--kappa` > 0 = its `:rankseg` variant). The project's
XLA:CPU flags are applied (`--xla_defaults` leaves them out); `--set key=value` overrides
config options. Each configuration runs in a fresh subprocess. Examples:

    python benchmarks/train_step.py --preset s16 --size 256 --k 150 --kappa 50
    python benchmarks/train_step.py --preset s16 --size 256 --k 1284 --baseline
    python benchmarks/train_step.py --standard --append     # the standard set -> BENCHMARKS.md
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
    minor_faults,
    peak_device_memory_MiB,
    peak_tflops,
    run_workers,
    runtime_setup,
    standard_jobs,
    timing_turn,
)

PRESET_NAMES = {"ti16": "ViT-Ti/16", "s16": "ViT-S/16", "b16": "ViT-B/16", "l16": "ViT-L/16",
                "m2f": "M2F Swin-demo"}
# (preset, size, K, kappa (0 = baseline), batch): the CPU-sized rows of the speed issue, and
# the larger ones run on GPU/TPU. "m2f" = Mask2Former with the tiny Swin of
# configs/demo_mask2former.py (width 48, depths 2-2-2-2, 64-wide head, 24 queries).
STANDARD = [("s16", 256, 150, 50, 1), ("s16", 256, 150, 0, 1), ("s16", 256, 1284, 50, 1),
            ("s16", 256, 1284, 0, 1), ("m2f", 128, 30, 0, 1), ("m2f", 128, 30, 30, 1)]
STANDARD_ACCELERATOR = [("b16", 512, 150, 50, 8), ("b16", 512, 150, 0, 8),
                        ("s16", 256, 150, 50, 8)]


def apply_overrides(c, overrides: list[str]) -> None:
    """`dotted.key=value` overrides (value parsed as a Python literal, else a string)."""
    import ast

    for item in overrides:
        key, _, text = item.partition("=")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        node = c
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value


def build_config(preset: str, size: int, k: int, kappa: int, batch: int, dtype: str,
                 remat: bool, overrides: tuple[str, ...] = (), num_devices: int = 1,
                 backend: str | None = None):
    """A validated Segmenter(+RankSeg) config for one square crop size on one device (or on
    `num_devices`, when `overrides` set the mesh sizes); `overrides`: `dotted.key=value`
    strings applied before validation; `backend`: the platform compiled for (default
    jax's; `aot_compile.py` compiles for a GPU or TPU without one)."""
    from rankseg_jax import config as config_lib

    if preset == "m2f":
        return build_m2f_config(size, kappa, batch, dtype, remat, overrides, num_devices,
                                backend)
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
    apply_overrides(c, list(overrides))
    config_lib.validate(c, check_files=False, num_devices=num_devices, process_count=1,
                        backend=backend)
    return c


def build_m2f_config(size: int, kappa: int, batch: int, dtype: str, remat: bool,
                     overrides: tuple[str, ...] = (), num_devices: int = 1,
                     backend: str | None = None):
    """configs/demo_mask2former.py (its `:rankseg` variant when kappa > 0: kappa = K) at a
    square crop, on one device (or `num_devices`, see `build_config`)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "configs", "demo_mask2former.py")
    return build_file_config(path, "rankseg" if kappa else None, size, batch, dtype, remat,
                             overrides, num_devices, backend)


def build_file_config(path: str, arg: str | None, size: int | None, batch: int, dtype: str,
                      remat: bool, overrides: tuple[str, ...] = (), num_devices: int = 1,
                      backend: str | None = None):
    """The `get_config(arg)` of a config file (e.g. configs/ade20k_mask2former.py with arg
    "rankseg"), with a square crop of `size` (None: the file's crop), `batch`, `dtype` and
    `remat`, on one device (or `num_devices`, see `build_config`), validated without
    looking up dataset or weight files."""
    import importlib.util

    from rankseg_jax import config as config_lib

    if not os.path.isfile(path):
        sys.exit(f"config file {path!r} not found")
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg)
    c.model.dtype, c.model.remat = dtype, remat
    if size is not None:
        c.data.crop_size = (size, size)
    c.train.batch_size = batch
    c.mesh.data = c.mesh.fsdp = c.mesh.tensor = 1
    apply_overrides(c, list(overrides))
    config_lib.validate(c, check_files=False, num_devices=num_devices, process_count=1,
                        backend=backend)
    return c


def synthetic_batch(c, size: int, batch: int) -> dict:
    """Random normalised images, label crops of 4x4 class blocks (a few classes per crop, as
    in real scenes) and, for Mask2Former, one target mask per distinct block class."""
    import numpy as np

    rng = np.random.default_rng(0)
    k = c.model.num_classes
    image = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    blocks = rng.integers(0, k, (batch, 4, 4))
    label = np.kron(blocks, np.ones((size // 4, size // 4), np.int64)).astype(np.int32)
    data = {"image": image, "label": label}
    if c.model.arch == "mask2former":
        t = c.data.max_targets
        classes = np.full((batch, t), -1, np.int32)
        masks = np.zeros((batch, t, size, size), bool)
        for i in range(batch):
            for j, cls in enumerate(np.unique(label[i])[:t]):
                classes[i, j], masks[i, j] = cls, label[i] == cls
        data.update(target_classes=classes, target_masks=masks, target_valid=classes >= 0)
    return data


def measure(preset: str, size: int, k: int, kappa: int, batch: int, dtype: str, remat: bool,
            steps: int, warmup: int, overrides: tuple[str, ...] = ()) -> dict:
    """Compiles and times the train step of one configuration (in this process)."""
    import jax

    from rankseg_jax import sharding
    from rankseg_jax.train import step as train_step

    c = build_config(preset, size, k, kappa, batch, dtype, remat, overrides)
    mesh = sharding.make_mesh(c, jax.devices()[:1])
    setup = train_step.make_setup(c, mesh)
    step_fn = train_step.make_train_step(setup)
    state = train_step.init_state(setup)
    batch_sh = sharding.batch_sharding(mesh)
    data = {name: jax.device_put(v, batch_sh)
            for name, v in synthetic_batch(c, size, batch).items()}
    key = jax.device_put(jax.random.PRNGKey(0), sharding.replicated(mesh))
    t = time.perf_counter()
    compiled = step_fn.lower(state, data, key).compile()
    compile_s = time.perf_counter() - t
    times, cpu, faults = [], [], []
    with timing_turn():  # alone on the device when the workers run in parallel
        for _ in range(warmup):
            state, metrics = compiled(state, data, key)
        jax.block_until_ready(metrics)
        for _ in range(steps):
            f = minor_faults()
            t, p = time.perf_counter(), time.process_time()
            state, metrics = compiled(state, data, key)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - p)
            faults.append(None if f is None else minor_faults() - f)
    step_s = statistics.median(times)
    numbers = memory_numbers(compiled)
    tflops = numbers["gflops"] / 1e3 / step_s
    peak = peak_tflops(jax.devices()[0].device_kind, dtype)
    return {"preset": preset, "size": size, "K": k, "kappa": kappa or None, "batch": batch,
            "dtype": dtype, "remat": remat, "compile_s": round(compile_s, 1),
            "step_s": step_s, "cpu_s": statistics.median(cpu),
            "faults_per_step": None if None in faults else statistics.median(faults),
            "images_per_s": batch / step_s, "tflops_per_s": tflops,
            "mfu": None if peak is None else tflops / peak,
            "peak_MiB": peak_device_memory_MiB(), "overrides": list(overrides),
            "times": times, **numbers}


def describe(r: dict) -> str:
    """The table's model column: preset, method, remat policy and other overrides."""
    model = f"{PRESET_NAMES[r['preset']]} " + ("RankSeg" if r["kappa"] else "baseline")
    others = [o for o in r["overrides"] if not o.startswith("model.remat_policy=")]
    if r["remat"]:
        policy = next((o.partition("=")[2] for o in r["overrides"]
                       if o.startswith("model.remat_policy=")), "nothing_saveable")
        model += f" remat ({policy})"
    return model + (f" [{', '.join(others)}]" if others else "")


def table(rows: list[dict]) -> str:
    lines = ["| model | size | K | kappa | batch | dtype | step (s) | CPU s/step | faults/step |"
             " images/s | compile (s) | GFLOPs/step | TFLOP/s | MFU | XLA temp (MiB) |"
             " peak (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        model = describe(r)
        if "error" in r:
            lines.append(f"| {model} | {r['size']}² | {r['k']} | {r['kappa'] or '-'} |"
                         f" {r['batch']} | {r['dtype']} | failed: {r['error']} |")
            continue
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        peak = "-" if r["peak_MiB"] is None else f"{r['peak_MiB']:.0f}"
        faults = "-" if r["faults_per_step"] is None else f"{r['faults_per_step']:.0f}"
        lines.append(
            f"| {model} | {r['size']}² | {r['K']} |"
            f" {r['kappa'] or '-'} | {r['batch']} | {r['dtype']} | {r['step_s']:.3f} |"
            f" {r['cpu_s']:.3f} | {faults} |"
            f" {r['images_per_s']:.2f} | {r['compile_s']:.0f} | {r['gflops']:.0f} |"
            f" {r['tflops_per_s']:.3f} | {mfu} | {r['temp_MiB']:.0f} | {peak} |")
    return "\n".join(lines)


def main() -> None:
    from rankseg_jax import runtime

    # As main.py: with the opt-in RANKSEG_JAX_MALLOC_TUNABLES=1, restart once, before
    # anything else, with the malloc settings (see runtime.py).
    runtime.restart_with_malloc_tunables()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="s16", help="ViT preset (ti16, s16, b16, l16) or m2f")
    ap.add_argument("--size", type=int, default=256, help="square crop size")
    ap.add_argument("--k", type=int, default=150, help="number of classes")
    ap.add_argument("--kappa", type=int, default=50, help="RankSeg kappa (m2f: kappa = K)")
    ap.add_argument("--baseline", action="store_true", help="no RankSeg")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--remat", action="store_true")
    ap.add_argument("--remat_policy", default="nothing_saveable",
                    help="with --remat: model.remat_policy (a jax.checkpoint_policies name)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. train.dropout_prng=rbg (repeatable)")
    ap.add_argument("--xla_defaults", action="store_true",
                    help="do not add the project's XLA:CPU flags (rankseg_jax/runtime.py)")
    ap.add_argument("--standard", action="store_true",
                    help="the standard set (CPU-sized; larger rows on GPU/TPU)")
    ap.add_argument("--only", default="", help="comma-separated row indices of the standard set")
    ap.add_argument("--jobs", metavar="FILE",
                    help="a JSON list of rows {preset, size, k, kappa, batch} with optional "
                         "dtype, remat, overrides (instead of --standard or one row)")
    ap.add_argument("--parallel", action="store_true",
                    help="compile every row at once, then time them one at a time (for a "
                         "GPU/TPU: saves the serial compile times; compile times include "
                         "the contention)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds after which a row's worker is killed (its row fails)")
    ap.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker is not None:
        print(json.dumps(measure(**json.loads(a.worker))))
        return
    runtime_setup(a.xla_defaults)
    jobs = standard_jobs(STANDARD, STANDARD_ACCELERATOR) if a.standard else [
        (a.preset, a.size, a.k, 0 if a.baseline else a.kappa, a.batch)]
    if a.only:
        jobs = [jobs[int(i)] for i in a.only.split(",")]
    overrides = a.set + ([f"model.remat_policy={a.remat_policy}"] if a.remat else [])
    specs = [dict(preset=preset, size=size, k=k, kappa=kappa, batch=batch)
             for preset, size, k, kappa, batch in jobs]
    if a.jobs:
        with open(a.jobs) as f:
            specs = json.load(f)
    defaults = dict(dtype=a.dtype, remat=a.remat, steps=a.steps, warmup=a.warmup,
                    overrides=overrides)
    rows = run_workers(__file__, [{**defaults, **spec} for spec in specs], a.parallel,
                       a.timeout)
    text = table(rows)
    print("\n" + text)
    if a.append:
        command = "python benchmarks/train_step.py " + " ".join(sys.argv[1:])
        append_to_benchmarks(markdown_section("Train step speed", command, environment(), text))


if __name__ == "__main__":
    main()
