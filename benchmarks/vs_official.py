"""Side-by-side CPU timing of the official step (PyTorch stand-in) and our jitted step.

For each row (model, crop, K, kappa, train or whole-image inference) two persistent worker
processes are started: the official side (`benchmarks/official_torch.py`, the plain-PyTorch
stand-in validated against the official code's outputs by
tests/parity/test_official_torch_standin.py; `torch.set_num_threads(2)`) and our side (the
trainer's jitted train step as in `benchmarks/train_step.py`, or the inference functions of
`benchmarks/inference.py`, with the project's XLA:CPU flags). Each builds / compiles its side
once and warms up; then the parent tells them in turn (official, ours, official, ours, ...;
`--passes`) to run `--steps` steps and report the per-step wall and process-CPU times. The
idle worker blocks on a pipe read, so the two never run at the same time: on a shared CPU
both sides see the same background load, pass by pass.

Reported per row: the median wall and CPU seconds per step of each side and the ratio
official / ours (> 1: ours is faster). Inference rows time the official order of operations
on our side ("full": K-way logits, resize, softmax, argmax) and, as an extra column, our
memory-light engine ("light"). Both sides get the same synthetic batch
(`train_step.synthetic_batch`: normal images, 4x4 blocks of random classes); the workers
check that with a digest.

    python benchmarks/vs_official.py                      # every row, batch 1
    python benchmarks/vs_official.py --rows 0,1,2 --passes 3 --steps 5
    python benchmarks/vs_official.py --rows 0 --batch 8
    python benchmarks/vs_official.py --append             # table -> BENCHMARKS.md
    python benchmarks/vs_official.py --ours_python /path/to/venv312/bin/python
                                                # our side under another jax (e.g. 0.12)

`--ours_python` runs our worker under another interpreter (a venv with another jax/jaxlib and
this package installed) while the official side stays on this one, which has torch: the
notes then name the jax, jaxlib and Python our side ran.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import append_to_benchmarks, environment, markdown_section  # noqa: E402
from train_step import PRESET_NAMES, synthetic_batch  # noqa: E402

# The rows, then ours: (preset, crop size, K, kappa (0 = baseline), task).
ROWS = [("s16", 256, 150, 50, "train"),
        ("s16", 256, 150, 0, "infer"),
        ("s16", 256, 150, 50, "infer"),
        ("b16", 512, 150, 50, "train"),  # heavy: ~10x row 0
        ("s16", 256, 1284, 50, "train"),
        ("s16", 256, 1284, 0, "train"),
        # Not in the table: the baseline at K=150, to separate the backbone's share
        # of the gap from RankSeg's.
        ("s16", 256, 150, 0, "train")]
MAX_ITERS = 160_000  # the ADE20K schedule; only sets the poly lr value
TITLE = "CPU speed: side by side with the official step (PyTorch stand-in)"


def row_name(preset: str, size: int, k: int, kappa: int, task: str) -> str:
    """e.g. 'ViT-S/16 256² K=150 RankSeg κ=50, train'."""
    head = f"RankSeg κ={kappa}" if kappa else "baseline"
    what = "train" if task == "train" else "infer whole (softmax)"
    return f"{PRESET_NAMES[preset]} {size}² K={k} {head}, {what}"


def _data(k: int, size: int, batch: int) -> dict:
    """The shared synthetic batch (NHWC image, (B, H, W) int32 label) and its digest."""
    stub = types.SimpleNamespace(model=types.SimpleNamespace(num_classes=k, arch="segmenter"))
    data = synthetic_batch(stub, size, batch)
    digest = hashlib.sha1(data["image"].tobytes() + data["label"].tobytes()).hexdigest()[:12]
    return {**data, "digest": digest}


# ------------------------------------------------------------------------------ workers

def _channel():
    """The reply channel: a private copy of stdout. fd 1 itself is pointed at stderr, so
    whatever libraries print cannot corrupt the protocol."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _timed(fn, steps: int) -> dict:
    """Runs fn() `steps` times; per-step wall and process-CPU seconds."""
    wall, cpu = [], []
    for _ in range(steps):
        t, p = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - p)
    return {"wall": wall, "cpu": cpu}


def _serve(chan, ready: dict, run) -> None:
    """Reports `ready`, then answers {'steps': n} with run(n) until EOF or {'quit': ...}."""
    chan.write(json.dumps({"ready": True, **ready}) + "\n")
    for line in sys.stdin:
        msg = json.loads(line)
        if "quit" in msg:
            break
        chan.write(json.dumps(run(msg["steps"])) + "\n")


def torch_worker(job: dict) -> None:
    """The official side: the stand-in model, one official train iteration or whole-image
    test per step."""
    chan = _channel()
    import numpy as np
    import official_torch as ot
    import torch

    torch.set_num_threads(job["torch_threads"])
    torch.manual_seed(0)
    t0 = time.perf_counter()
    d = _data(job["k"], job["size"], job["batch"])
    image = torch.from_numpy(np.ascontiguousarray(d["image"].transpose(0, 3, 1, 2)))
    label = torch.from_numpy(d["label"].astype(np.int64))
    model = ot.build_preset(job["preset"], "rankseg" if job["kappa"] else "baseline",
                            job["size"], job["k"], topk=job["kappa"] or 50)
    if job["task"] == "train":
        optimizer = ot.make_optimizer(model)
        it = [0]

        def step():
            ot.train_step(model, optimizer, image, label, it[0], MAX_ITERS)
            it[0] += 1
    else:
        def step():
            ot.infer_whole(model, image)
    setup_s = time.perf_counter() - t0
    warm = _timed(step, job["warmup"])
    _serve(chan, {"digest": d["digest"], "setup_s": setup_s, "warmup": warm["wall"],
                  "torch": torch.__version__, "threads": torch.get_num_threads()},
           lambda n: _timed(step, n))


def jax_worker(job: dict) -> None:
    """Our side: the trainer's jitted train step (donated state), or the jitted whole-image
    inference ('full' = the official order of operations; 'light' = our engine)."""
    from rankseg_jax import runtime

    # As main.py (opt-in RANKSEG_JAX_MALLOC_TUNABLES=1), before the reply channel is set up
    # (the restart keeps fds 0-2 and replaces the process). The official worker keeps the
    # environment it was started in.
    runtime.restart_with_malloc_tunables()
    chan = _channel()
    from common import environment, runtime_setup

    runtime_setup(job["xla_defaults"])  # before jax initialises its backend
    import jax
    import jax.numpy as jnp
    from train_step import build_config

    t0 = time.perf_counter()
    preset, size, k, kappa, batch = (job[n] for n in ("preset", "size", "k", "kappa", "batch"))
    c = build_config(preset, size, k, kappa, batch, "float32", False)
    d = _data(k, size, batch)
    light_step = None  # inference rows: our memory-light engine, timed after `step`
    if job["task"] == "train":
        from rankseg_jax import sharding
        from rankseg_jax.train import step as train_step

        mesh = sharding.make_mesh(c, jax.devices()[:1])
        setup = train_step.make_setup(c, mesh)
        state = [train_step.init_state(setup)]
        batch_sh = sharding.batch_sharding(mesh)
        data = {n: jax.device_put(v, batch_sh) for n, v in synthetic_batch(c, size, batch).items()}
        key = jax.device_put(jax.random.PRNGKey(0), sharding.replicated(mesh))
        t1 = time.perf_counter()
        compiled = train_step.make_train_step(setup).lower(state[0], data, key).compile()
        compile_s = time.perf_counter() - t1

        def step():
            state[0], metrics = compiled(state[0], data, key)  # the state is donated
            jax.block_until_ready(metrics)
    else:
        import numpy as np

        from rankseg_jax import models
        from rankseg_jax.evaluation import export, full_logits

        c.unlock()
        c.test.mode = "whole"
        model = models.build_model(c)
        image = jnp.asarray(d["image"])

        def full(images):
            scores = full_logits.naive_scores(model, images, mode="whole", crop=(size, size),
                                              stride=(size, size), ori=(size, size),
                                              flip=False, softmax=True)
            return jnp.argmax(scores, axis=1)

        t1 = time.perf_counter()
        compiled = jax.jit(full).lower(image).compile()
        compile_s = time.perf_counter() - t1

        def step():
            np.asarray(compiled(image))  # the class map on the host, like .cpu().numpy()

        if job["light"]:
            light = jax.jit(export.inference_fn(c, model, (size, size))).lower(image).compile()

            def light_step():
                np.asarray(light(image)[0])
    setup_s = time.perf_counter() - t0 - compile_s
    warm = _timed(step, job["warmup"])
    if light_step is not None:
        _timed(light_step, job["warmup"])

    def run(n):
        out = _timed(step, n)
        if light_step is not None:
            lt = _timed(light_step, n)
            out.update(light_wall=lt["wall"], light_cpu=lt["cpu"])
        return out

    env = environment()  # this interpreter's versions (see --ours_python)
    _serve(chan, {"digest": d["digest"], "setup_s": setup_s, "compile_s": compile_s,
                  "warmup": warm["wall"],
                  **{k: env[k] for k in ("python", "jax", "jaxlib", "flax")}}, run)


# ------------------------------------------------------------------------------ parent

class WorkerError(RuntimeError):
    pass


class Worker:
    """One worker subprocess speaking JSON lines over its stdin/stdout."""

    def __init__(self, side: str, job: dict, python: str = sys.executable):
        self.side = side
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [python, os.path.abspath(__file__), "--worker", side, json.dumps(job)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
            bufsize=1)

    def reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.err.seek(0)
            tail = self.err.read()[-3000:]
            last = (tail.strip().splitlines() or ["?"])[-1][:200]
            raise WorkerError(f"{self.side} worker exited ({self.proc.returncode}): {last}\n"
                              f"{tail}")
        return json.loads(line)

    def run(self, steps: int) -> dict:
        self.proc.stdin.write(json.dumps({"steps": steps}) + "\n")
        self.proc.stdin.flush()
        return self.reply()

    def close(self) -> None:
        try:
            self.proc.stdin.write('{"quit": true}\n')
            self.proc.stdin.close()
            self.proc.wait(timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.err.close()


def _busy_cores(seconds: float = 1.0) -> float | None:
    """Cores kept busy by other processes over `seconds` (from /proc/stat; call it while
    no worker of ours runs). None where /proc/stat is missing."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except OSError:
        return None
    total = total1 - total0
    return (os.cpu_count() or 1) * (total - (idle1 - idle0)) / total if total else 0.0


def _median(xs):
    return statistics.median(xs) if xs else None


def measure_row(index: int, row: tuple, a) -> dict:
    """Both workers of one row: set up one after the other, then alternating passes."""
    preset, size, k, kappa, task = row
    job = dict(preset=preset, size=size, k=k, kappa=kappa, task=task, batch=a.batch,
               warmup=a.warmup, torch_threads=a.torch_threads, xla_defaults=a.xla_defaults,
               light=not a.no_light)
    result = {"row": index, "name": row_name(*row), "preset": preset, "size": size, "K": k,
              "kappa": kappa or None, "task": task, "batch": a.batch}
    busy = _busy_cores()
    if busy is not None and busy > 0.3:
        # Interleaving shares background load fairly only up to a point: with another job
        # on the cores, torch's OpenMP threads wait on descheduled peers at every parallel
        # region (measured here: ViT-S train 0.7 s/step at 1 thread, 12 s at 2 threads,
        # while XLA's thread pool lost little), so the ratio then measures the contention.
        print(f"warning: other processes keep {busy:.1f} cores busy before row {index}; "
              "the comparison is unreliable (see --torch_threads)", file=sys.stderr)
    result["busy_cores_before"] = busy
    workers = {}
    try:
        for side in ("official", "ours"):  # sequential set-up: no contention while compiling
            workers[side] = (Worker("torch", job) if side == "official"
                             else Worker("jax", job, a.ours_python))
            result[f"{side}_ready"] = workers[side].reply()
        digests = {result[f"{s}_ready"]["digest"] for s in workers}
        if len(digests) != 1:
            raise WorkerError(f"the two sides built different batches: {digests}")
        times = {s: {"wall": [], "cpu": [], "light_wall": [], "light_cpu": []} for s in workers}
        for _ in range(a.passes):
            for side in ("official", "ours"):
                out = workers[side].run(a.steps)
                for name, values in out.items():
                    times[side][name] += values
    except WorkerError as e:
        print(f"row {index} ({row_name(*row)}) failed: {e}", file=sys.stderr)
        return {**result, "error": str(e).splitlines()[0]}
    finally:
        for w in workers.values():
            w.close()
    for side in ("official", "ours"):
        t = times[side]
        result[side] = {"wall_s": _median(t["wall"]), "cpu_s": _median(t["cpu"]),
                        "walls": t["wall"]}
        if t["light_wall"]:
            result[side].update(light_wall_s=_median(t["light_wall"]),
                                light_cpu_s=_median(t["light_cpu"]))
    off, ours = result["official"], result["ours"]
    result["ratio_wall"] = off["wall_s"] / ours["wall_s"]
    result["ratio_cpu"] = off["cpu_s"] / ours["cpu_s"]
    if "light_wall_s" in ours:
        result["ratio_light_wall"] = off["wall_s"] / ours["light_wall_s"]
    result["busy_cores_after"] = _busy_cores()
    return result


def table(results: list[dict]) -> str:
    """The Markdown table of measure_row results."""
    lines = ["| # | row | batch | official s/step | ours s/step | official/ours |"
             " official CPU s | ours CPU s | official/ours (CPU) | ours light s |"
             " official/light | ours compile (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['row']} | {r['name']} | {r['batch']} | failed: {r['error']} |"
                         + " |" * 8)
            continue
        off, ours = r["official"], r["ours"]
        light = ratio_light = "-"
        if "light_wall_s" in ours:
            light, ratio_light = f"{ours['light_wall_s']:.3f}", f"{r['ratio_light_wall']:.2f}"
        lines.append(
            f"| {r['row']} | {r['name']} | {r['batch']} | {off['wall_s']:.3f} |"
            f" {ours['wall_s']:.3f} | **{r['ratio_wall']:.2f}** | {off['cpu_s']:.3f} |"
            f" {ours['cpu_s']:.3f} | {r['ratio_cpu']:.2f} | {light} | {ratio_light} |"
            f" {r['ours_ready']['compile_s']:.0f} |")
    return "\n".join(lines)


def _notes(results: list[dict], a) -> str:
    ok = [r for r in results if "error" not in r]
    threads = ok[0]["official_ready"]["threads"] if ok else 0
    torch_info = (f"torch {ok[0]['official_ready']['torch']} at {threads} "
                  f"thread{'' if threads == 1 else 's'}") if ok else "torch"
    busy = [r[k] for r in ok for k in ("busy_cores_before", "busy_cores_after")
            if r.get(k) is not None]
    load = f"{min(busy):.1f}-{max(busy):.1f}" if busy else "?"
    ours_env = ""
    if ok and a.ours_python != sys.executable:
        r = ok[0]["ours_ready"]
        ours_env = (f" Our side ran under `{a.ours_python}`: Python {r['python']}, jax "
                    f"{r['jax']}, jaxlib {r['jaxlib']}, flax {r['flax']} (the header's "
                    "versions are the official side's interpreter).")
    return (
        "The official side is `benchmarks/official_torch.py`, a plain-PyTorch stand-in of the "
        "official Segmenter(+RankSeg) step validated against outputs of the official code "
        "(`tests/parity/test_official_torch_standin.py`), not the official repository itself "
        f"(mmseg 0.17 / mmcv 1.4 are not installed here); {torch_info}. Ours: the jitted "
        "train step of `benchmarks/train_step.py` / the inference of `benchmarks/inference.py`"
        " with the project's XLA:CPU flags"
        f"{' left out (--xla_defaults)' if a.xla_defaults else ''}; with the opt-in "
        "RANKSEG_JAX_MALLOC_TUNABLES=1 our side restarts with the malloc settings of "
        "`runtime.restart_with_malloc_tunables`, the official side keeps the environment "
        "this script was started in (here: RANKSEG_JAX_MALLOC_TUNABLES="
        f"{os.environ.get('RANKSEG_JAX_MALLOC_TUNABLES', '')!r}, GLIBC_TUNABLES="
        f"{os.environ.get('GLIBC_TUNABLES', '')!r})."
        f"{ours_env} Interleaved: "
        f"{a.passes} passes x {a.steps} steps per side after {a.warmup} warm-up steps, "
        "official then ours in each pass, never concurrently; medians over all timed steps. "
        "official/ours > 1 means ours is faster. Inference rows: ours = the full-K path "
        "(the official order of operations); 'light' = our memory-light engine. Cores kept "
        f"busy by other processes just before / after the rows: {load} of {os.cpu_count()}."
        " With another job on the cores torch's OpenMP threads slow down far more than "
        "XLA's (see the warning in `measure_row`); compare rows measured on an idle CPU.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="all",
                    help="comma-separated row indices or 'all': "
                         + "; ".join(f"{i}: {row_name(*r)}" for i, r in enumerate(ROWS)))
    ap.add_argument("--batch", type=int, default=1, help="images per step (both sides)")
    ap.add_argument("--passes", type=int, default=2, help="alternating passes per side")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per pass")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps after set-up")
    ap.add_argument("--torch_threads", type=int, default=2)
    ap.add_argument("--no_light", action="store_true",
                    help="inference rows: skip our memory-light column")
    ap.add_argument("--xla_defaults", action="store_true",
                    help="do not add the project's XLA:CPU flags (rankseg_jax/runtime.py)")
    ap.add_argument("--ours_python", default=sys.executable, metavar="PYTHON",
                    help="interpreter for our side (a venv with another jax and this package"
                         " installed); the official side keeps this one")
    ap.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker is not None:
        side, job = a.worker
        (torch_worker if side == "torch" else jax_worker)(json.loads(job))
        return
    if not (os.path.isfile(a.ours_python) and os.access(a.ours_python, os.X_OK)):
        ap.error(f"--ours_python {a.ours_python!r} is not an executable file")
    indices = range(len(ROWS)) if a.rows == "all" else [int(i) for i in a.rows.split(",")]
    results = []
    for i in indices:
        results.append(measure_row(i, ROWS[i], a))
        print(json.dumps(results[-1]), flush=True)
    text = table(results)
    print("\n" + text)
    print(json.dumps({"vs_official": [
        {key: r.get(key) for key in ("row", "name", "batch", "ratio_wall", "ratio_cpu",
                                      "ratio_light_wall", "error")}
        | ({"official_s": r["official"]["wall_s"], "ours_s": r["ours"]["wall_s"]}
           if "error" not in r else {})
        for r in results]}))
    if a.append:
        command = "python benchmarks/vs_official.py " + " ".join(sys.argv[1:])
        append_to_benchmarks(markdown_section(TITLE, command, environment(), text,
                                              _notes(results, a)))


if __name__ == "__main__":
    main()
