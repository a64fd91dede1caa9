"""Where the train step's time goes on XLA:CPU: a jax.profiler trace of a few steps, read back
as a table of op categories (what XLA named each executed thunk, numbers stripped).

    python benchmarks/profile_step.py --preset s16 --size 256 --k 150 --kappa 50

For each category: its thread time per step, its share of the step's wall time (a thunk
running alongside another counts half), the part of the wall time during which it was the
only thunk running, and the number of thunks. Then the step's concurrency profile: how long
0, 1, 2, ... thunks ran at once. On a 2-core CPU, time with one thunk running is time the
second core spends idle unless that thunk is itself multi-threaded (the library matmuls
can be; fusions emitted by XLA are not).

Also writes the optimised HLO (`--hlo`) so a category can be traced to its fused
computation and `op_name` metadata.

`--official` profiles the official step instead (`official_torch.py`, the PyTorch stand-in
that `vs_official.py` times; torch at 2 threads) with `torch.profiler`: per aten op, its
self time per step on the calling thread and its calls per step. Both tables end with the
same split: matrix products (XLA: the library matmuls `ynn_fusion` and `dot`; torch: `mm`,
`addmm`, `bmm`, convolution) against everything else.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_step_arguments, runtime_setup  # noqa: E402
from train_step import build_config, synthetic_batch  # noqa: E402

# Executor bookkeeping, markers and the caller's dispatch spans in the trace, not thunks.
NOT_THUNKS = ("ThunkExecutor::", "SlinkyThreadPool::", "ThreadpoolListener::", "end: ", "$",
              "Pjit", "CommonPjRt")


def trace_steps(a, trace_dir: str) -> tuple[float, str]:
    """Compiles the train step of the configuration in `a`, times `a.steps` steps, then
    traces `a.traced` more into `trace_dir`. Returns (median wall s/step, optimised HLO)."""
    import jax

    from rankseg_jax import sharding
    from rankseg_jax.train import step as train_step

    c = build_config(a.preset, a.size, a.k, a.kappa, a.batch, "float32", False, tuple(a.set))
    mesh = sharding.make_mesh(c, jax.devices()[:1])
    setup = train_step.make_setup(c, mesh)
    state = train_step.init_state(setup)
    bs = sharding.batch_sharding(mesh)
    data = {n: jax.device_put(v, bs) for n, v in synthetic_batch(c, a.size, a.batch).items()}
    key = jax.device_put(jax.random.PRNGKey(0), sharding.replicated(mesh))
    compiled = train_step.make_train_step(setup).lower(state, data, key).compile()
    for _ in range(2):
        state, metrics = compiled(state, data, key)
    jax.block_until_ready(metrics)
    walls = []
    for _ in range(a.steps):
        t = time.perf_counter()
        state, metrics = compiled(state, data, key)
        jax.block_until_ready(metrics)
        walls.append(time.perf_counter() - t)
    jax.profiler.start_trace(trace_dir)
    for _ in range(a.traced):
        state, metrics = compiled(state, data, key)
        jax.block_until_ready(metrics)
    jax.profiler.stop_trace()
    return statistics.median(walls), compiled.as_text()


# Matrix products: XLA thunk categories / aten ops (the rest is elementwise, reductions,
# copies and bookkeeping).
XLA_MATMULS = ("ynn_fusion", "dot")
TORCH_MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
                 "aten::mkldnn_convolution", "aten::convolution_backward")


def profile_official(a) -> dict:
    """The official step (the stand-in of `official_torch.py`) at batch `a.batch` under
    torch.profiler: {'step_ms' (median untraced), 'ops': [{'op', 'self_ms', 'calls'}] per
    step, sorted by self time}."""
    import official_torch
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(2)
    torch.manual_seed(0)
    kind = "rankseg" if a.kappa else "baseline"
    model = official_torch.build_preset(a.preset, kind, a.size, a.k, a.kappa or 50)
    optimizer = official_torch.make_optimizer(model)
    image = torch.randn(a.batch, 3, a.size, a.size)
    label = torch.randint(0, a.k, (a.batch, a.size, a.size))
    run = lambda i: official_torch.train_step(model, optimizer, image, label, i, 10**6)  # noqa: E731
    for i in range(2):
        run(i)
    walls = []
    for i in range(a.steps):
        t = time.perf_counter()
        run(i)
        walls.append(time.perf_counter() - t)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(a.traced):
            run(i)
    ops = [{"op": e.key, "self_ms": e.self_cpu_time_total / a.traced / 1e3,
            "calls": e.count // a.traced} for e in prof.key_averages()]
    ops.sort(key=lambda r: -r["self_ms"])
    return {"step_ms": statistics.median(walls) * 1e3, "ops": ops}


def matmul_split(rows, name_key: str, ms_key: str, matmuls) -> str:
    """'matrix products X ms, the rest Y ms' over a table's rows."""
    mm = sum(r[ms_key] for r in rows if r[name_key] in matmuls)
    rest = sum(r[ms_key] for r in rows if r[name_key] not in matmuls)
    return f"matrix products {mm:.1f} ms/step, the rest {rest:.1f} ms/step"


def category(name: str) -> str:
    """'ynn_fusion.115' -> 'ynn_fusion'."""
    return re.sub(r"[.\d]+$", "", name)


def analyse(trace_dir: str, traced: int) -> dict:
    """Per-category thread time, wall share and alone time per step, averaged over the
    traced steps (each delimited by the executor's 'wait for completion' event)."""
    path = sorted(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*",
                                         "*.trace.json.gz")))[-1]
    events = json.load(gzip.open(path))["traceEvents"]
    spans = [e for e in events if e.get("ph") == "X"]
    steps = [e for e in spans if e["name"] == "ThunkExecutor::Execute (wait for completion)"]
    thunks = [e for e in spans if not e["name"].startswith(NOT_THUNKS)]
    busy, share, alone, count = (collections.Counter() for _ in range(4))
    concurrency = collections.Counter()
    wall = 0.0
    for s in steps[-traced:]:
        t0, t1 = s["ts"], s["ts"] + s["dur"]
        wall += t1 - t0
        inside = [e for e in thunks if t0 <= e["ts"] < t1]
        for e in inside:
            busy[category(e["name"])] += e["dur"]
            count[category(e["name"])] += 1
        points = sorted([(e["ts"], 1, i) for i, e in enumerate(inside)]
                        + [(e["ts"] + e["dur"], -1, i) for i, e in enumerate(inside)])
        active, last = set(), t0
        for t, delta, i in points:
            dt = t - last
            concurrency[len(active)] += dt
            for j in active:
                share[category(inside[j]["name"])] += dt / len(active)
                if len(active) == 1:
                    alone[category(inside[j]["name"])] += dt
            (active.add if delta > 0 else active.discard)(i)
            last = t
        concurrency[0] += max(0.0, t1 - last)
    n = max(1, len(steps[-traced:]))
    ms = lambda us: us / n / 1e3  # noqa: E731 (trace times are microseconds)
    return {"step_ms": ms(wall),
            "categories": [{"category": c, "busy_ms": ms(busy[c]), "wall_share_ms": ms(share[c]),
                            "alone_ms": ms(alone[c]), "thunks": count[c] // n}
                           for c, _ in share.most_common()],
            "concurrency_ms": {k: ms(v) for k, v in sorted(concurrency.items())},
            "thunks_per_step": sum(count.values()) // n}


def main() -> None:
    from rankseg_jax import runtime

    # As main.py: with the opt-in RANKSEG_JAX_MALLOC_TUNABLES=1, restart once, before
    # anything else, with the malloc settings (see runtime.py).
    runtime.restart_with_malloc_tunables()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_step_arguments(ap)
    ap.add_argument("--batch", type=int, default=1, help="images per step (both sides)")
    ap.add_argument("--steps", type=int, default=5, help="timed (untraced) steps")
    ap.add_argument("--traced", type=int, default=3)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--hlo", help="write the optimised HLO here")
    ap.add_argument("--json", help="write the analysis here")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--xla_defaults", action="store_true")
    ap.add_argument("--official", action="store_true",
                    help="profile the official step (PyTorch stand-in) instead of ours")
    a = ap.parse_args()
    if a.official:
        result = profile_official(a)
        print(f"official step: {result['step_ms']:.1f} ms untraced (torch, 2 threads)")
        print("| aten op | self ms | calls |\n|---|---|---|")
        for row in result["ops"][:a.top]:
            print(f"| {row['op']} | {row['self_ms']:.1f} | {row['calls']} |")
        print(matmul_split(result["ops"], "op", "self_ms", TORCH_MATMULS))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(dict(result, config=vars(a)), f, indent=1)
        return
    runtime_setup(a.xla_defaults)
    with tempfile.TemporaryDirectory() as trace_dir:
        step_s, hlo = trace_steps(a, trace_dir)
        result = analyse(trace_dir, a.traced)
    if a.hlo:
        with open(a.hlo, "w") as f:
            f.write(hlo)
    result.update(untraced_step_ms=step_s * 1e3, config=vars(a))
    print(f"step: {step_s * 1e3:.1f} ms untraced, {result['step_ms']:.1f} ms traced; "
          f"{result['thunks_per_step']} thunks/step")
    print("| category | thread ms | wall-share ms | alone ms | thunks |\n|---|---|---|---|---|")
    for row in result["categories"][:a.top]:
        print(f"| {row['category']} | {row['busy_ms']:.1f} | {row['wall_share_ms']:.1f} | "
              f"{row['alone_ms']:.1f} | {row['thunks']} |")
    print(matmul_split(result["categories"], "category", "wall_share_ms", XLA_MATMULS),
          "(wall shares)")
    print("concurrency (thunks running -> ms/step):",
          {k: round(v, 1) for k, v in result["concurrency_ms"].items()})
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
