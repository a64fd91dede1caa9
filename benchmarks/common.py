"""Shared pieces of the benchmarks: XLA cost/memory numbers, device peaks, the report header.

Peak throughputs (dense, per chip) used for MFU; CPU has no fixed peak (MFU is not reported
there, only achieved GFLOP/s).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MIB = 2**20

# Dense peak FLOP/s per chip by compute dtype (vendor datasheets; bf16 without sparsity;
# float32 on NVIDIA is the TF32 tensor-core rate, which XLA uses for float32 matmuls at the
# default precision, and the plain FP32 rate at precision "highest").
PEAK_TFLOPS = {
    "A100": {"bfloat16": 312.0, "float32": 19.5, "tf32": 156.0},
    "H100": {"bfloat16": 989.0, "float32": 67.0, "tf32": 494.0},
    "H200": {"bfloat16": 989.0, "float32": 67.0, "tf32": 494.0},
    "TPU v4": {"bfloat16": 275.0, "float32": 275.0 / 4},
    "TPU v5 lite": {"bfloat16": 197.0, "float32": 197.0 / 4},  # v5e
    "TPU v5p": {"bfloat16": 459.0, "float32": 459.0 / 4},
}


def runtime_setup(xla_defaults: bool = False) -> list[str]:
    """Applies the project's XLA:CPU flags (`rankseg_jax.runtime.configure_cpu_flags`) to
    this process's environment, which the benchmark workers inherit, unless `xla_defaults`.
    Call before jax initialises a backend. Returns the flags added. The persistent
    compilation cache stays off here: the benchmarks measure compile time."""
    from rankseg_jax import runtime

    return [] if xla_defaults else runtime.configure_cpu_flags()


def add_step_arguments(ap) -> None:
    """The Segmenter step's shape options shared by the single-configuration benchmarks:
    --preset (ViT), --size (square crop), --k (classes), --kappa (0 = the baseline)."""
    ap.add_argument("--preset", default="s16")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--k", type=int, default=150)
    ap.add_argument("--kappa", type=int, default=50, help="0 = Segmenter baseline")


def default_backend() -> str:
    """'cpu', 'gpu' or 'tpu', asked of a fresh process (this one never initialises jax, so
    the workers get the whole accelerator)."""
    res = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                         capture_output=True, text=True, check=True)
    return res.stdout.strip().splitlines()[-1]


def standard_jobs(cpu_jobs: list, accelerator_jobs: list) -> list:
    """The standard set: the CPU-sized jobs, plus the larger ones on a GPU/TPU."""
    return list(cpu_jobs) + ([] if default_backend() == "cpu" else list(accelerator_jobs))


# Parallel mode of `run_workers`: the workers compile at the same time, then time their
# steps one at a time. Read by `timing_turn` in the worker processes.
SYNC_DIR, SYNC_INDEX, SYNC_COUNT = ("RANKSEG_BENCH_SYNC_DIR", "RANKSEG_BENCH_SYNC_INDEX",
                                    "RANKSEG_BENCH_SYNC_COUNT")


def _ready_path(sync: str, index: int) -> str:
    """The file a parallel worker's compile (or death) is marked by."""
    return os.path.join(sync, f"ready.{index}")


def run_workers(script: str, jobs: list[dict], parallel: bool = False,
                timeout_s: float | None = None) -> list[dict]:
    """Runs `script --worker JSON` once per job, each in a fresh process, and returns each
    worker's last stdout line (JSON), or the job with an 'error' (its last stderr line).

    parallel=False: one worker after another. parallel=True (for an accelerator, where
    compiling dominates a short benchmark): all workers start together and compile at the
    same time, wait until every worker has compiled (or died), then take turns for their
    timed steps under an exclusive file lock, so no two time at once. Device memory is then
    allocated on demand (no preallocation), and the reported compile times include the
    contention. timeout_s: serially, a worker still running after that long is killed (its
    row reports the timeout). In parallel, a worker that has not compiled within timeout_s
    is killed (so one slow compile cannot hold the rest), and once all have compiled the
    timing phase gets timeout_s per remaining worker."""
    if not parallel:
        rows = []
        for job in jobs:
            try:
                res = subprocess.run([sys.executable, script, "--worker", json.dumps(job)],
                                     capture_output=True, text=True, timeout=timeout_s)
            except subprocess.TimeoutExpired as e:
                res = subprocess.CompletedProcess(e.cmd, -9, "",
                                                  f"killed after {timeout_s:.0f} s")
            rows.append(_finish(job, res))
            print(json.dumps(rows[-1]), flush=True)
        return rows
    with tempfile.TemporaryDirectory(prefix="bench_sync_") as sync:
        procs = []
        for i, job in enumerate(jobs):
            env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false",
                       **{SYNC_DIR: sync, SYNC_INDEX: str(i), SYNC_COUNT: str(len(jobs))})
            out = tempfile.TemporaryFile("w+")
            err = tempfile.TemporaryFile("w+")
            procs.append((job, out, err, subprocess.Popen(
                [sys.executable, script, "--worker", json.dumps(job)], stdout=out, stderr=err,
                text=True, env=env)))
        rows = [None] * len(jobs)
        deadline, compiling = time.monotonic() + (timeout_s or float("inf")), True
        while any(r is None for r in rows):
            ready = [os.path.exists(_ready_path(sync, i)) for i in range(len(jobs))]
            if compiling and all(ready):  # the barrier opened: budget the timing turns
                compiling = False
                remaining = sum(r is None for r in rows)
                deadline = time.monotonic() + (timeout_s or float("inf")) * remaining
            for i, (job, out, err, proc) in enumerate(procs):
                if rows[i] is not None:
                    continue
                # While compiling, only the workers that have not compiled are over time.
                if (proc.poll() is None and time.monotonic() > deadline
                        and not (compiling and ready[i])):
                    proc.kill()
                    proc.wait()
                    phase = "compiling" if not ready[i] else "timing"
                    err.write(f"\nkilled after {timeout_s:.0f} s ({phase})\n")
                if proc.poll() is None:
                    continue
                # A dead worker counts as compiled, so that the others do not wait for it.
                open(_ready_path(sync, i), "a").close()
                out.seek(0)
                err.seek(0)
                rows[i] = _finish(job, subprocess.CompletedProcess(
                    proc.args, proc.returncode, out.read(), err.read()))
                print(json.dumps(rows[i]), flush=True)
            time.sleep(0.2)
        return rows


def _finish(job: dict, res: subprocess.CompletedProcess) -> dict:
    if res.returncode:
        print(f"worker {job} failed:\n{res.stderr[-4000:]}", file=sys.stderr)
        lines = res.stderr.strip().splitlines() or ["?"]
        return {**job, "error": lines[-1][:200]}
    return json.loads(res.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def timing_turn():
    """In a worker of `run_workers(parallel=True)`: marks this worker compiled, waits until
    every worker is, then holds the timing lock for the body. Elsewhere: does nothing."""
    sync = os.environ.get(SYNC_DIR)
    if not sync:
        yield
        return
    open(_ready_path(sync, int(os.environ[SYNC_INDEX])), "a").close()
    count = int(os.environ[SYNC_COUNT])
    while not all(os.path.exists(_ready_path(sync, i)) for i in range(count)):
        time.sleep(0.2)
    with open(os.path.join(sync, "lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    """The chip's dense peak for `dtype`, or None when unknown (e.g. CPU)."""
    for name, peaks in PEAK_TFLOPS.items():
        if name.lower() in device_kind.lower():
            # float32 matmuls at jax's default precision run as TF32 on NVIDIA tensor cores
            return peaks.get("tf32" if dtype == "float32" and "tf32" in peaks else dtype)
    return None


def xla_flops(compiled) -> float:
    """XLA's FLOP estimate of a compiled computation (nan if the backend has none)."""
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return float("nan")
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    return float((ca or {}).get("flops", float("nan")))


def memory_numbers(compiled) -> dict:
    """XLA memory analysis in MiB (temp, arguments, outputs, total) and GFLOPs."""
    ma = compiled.memory_analysis()
    return {"temp_MiB": ma.temp_size_in_bytes / MIB,
            "arg_MiB": ma.argument_size_in_bytes / MIB,
            "out_MiB": ma.output_size_in_bytes / MIB,
            "total_MiB": (ma.temp_size_in_bytes + ma.argument_size_in_bytes
                          + ma.output_size_in_bytes) / MIB,
            "gflops": xla_flops(compiled) / 1e9}


def minor_faults() -> int | None:
    """Minor page faults of this process so far (`getrusage`; None where it does not exist).

    Around a timed CPU step, faults x 4 KiB is the memory the step mapped afresh: XLA:CPU
    mallocs each execution's temp buffer, glibc maps it and unmaps it on free, and the
    kernel faults it in page by page on every step (BENCHMARKS.md, "CPU speed: malloc
    settings"). On GPU/TPU it counts only the host side.
    """
    try:
        import resource
    except ImportError:  # not on Windows: not measured (rather than a made-up 0)
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_device_memory_MiB() -> float | None:
    """Peak bytes in use on device 0 (GPU/TPU allocators report it; CPU does not)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / MIB


def git_commit() -> str:
    """The checkout's short commit, or $RANKSEG_GIT_COMMIT when set (a copy of the tree
    without its .git, e.g. on a lent accelerator machine), else "unknown"."""
    if os.environ.get("RANKSEG_GIT_COMMIT"):
        return os.environ["RANKSEG_GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    """The host CPU as /proc/cpuinfo names it, with its family and model numbers.

    Returns e.g. "AMD EPYC, family 26 model 2 (x86_64)". The numbers matter: 2-core
    machines that all call themselves "AMD EPYC" ran this project's train step up to 1.5x
    apart (BENCHMARKS.md), so a CPU timing compares only with one on the same family/model.
    Falls back to `platform.processor()` where /proc/cpuinfo is missing (macOS).
    """
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    arch = platform.machine()
    if "model name" not in fields:
        return platform.processor() or arch
    family = f", family {fields['cpu family']} model {fields['model']}" \
        if "cpu family" in fields and "model" in fields else ""
    return f"{fields['model name']}{family} ({arch})"


def environment() -> dict:
    """Device, versions, date and git revision for the report header."""
    import flax
    import jax
    import jaxlib

    from rankseg_jax import run_info

    rev = git_commit()
    dev = run_info.devices()
    return {"device": f"{dev['platform']}:{dev['kind']} x{dev['count']}",
            "cpu": cpu_model(), "cores": os.cpu_count(),
            "python": platform.python_version(), "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "flax": flax.__version__,
            "date": datetime.date.today().isoformat(), "git": rev,
            "malloc": os.environ.get("GLIBC_TUNABLES", "") or "glibc defaults"}


def markdown_section(title: str, command: str, env: dict, table: str, notes: str = "") -> str:
    """A BENCHMARKS.md section: title, command, machine and versions, the table, notes."""
    head = (f"## {title}\n\nCommand: `{command}`  \nMachine: {env['device']} "
            f"({env['cpu']}, {env['cores']} cores); Python {env['python']}, jax {env['jax']}, "
            f"jaxlib {env['jaxlib']}, flax {env['flax']}; malloc: {env['malloc']}; "
            f"{env['date']}, git {env['git']}.\n\n")
    return head + table.rstrip() + "\n" + (f"\n{notes.rstrip()}\n" if notes else "")


def append_to_benchmarks(section: str) -> None:
    """Appends a section to BENCHMARKS.md (never rewrites earlier results)."""
    with open(os.path.join(ROOT, "BENCHMARKS.md"), "a") as f:
        f.write("\n" + section)
