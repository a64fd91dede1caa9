"""Process-level settings the project's entry points apply: CPU flags, malloc settings,
compile cache.

None of them changes what is computed: the CPU flags change how XLA runs it (float32
accumulation order, so results move within rounding), the malloc settings how memory is mapped,
the cache where compiled programs are kept. Callers: `rankseg_jax/cli.py` (`main.py`),
the benchmarks and `tests/conftest.py` (CPU flags only). Library users who import
`rankseg_jax` directly get none of them unless they call these functions themselves.

* `configure_cpu_flags()` must run before jax initialises its backend (the first array,
  device query or compile): `XLA_FLAGS` is read once, then. It adds two flags, each unless
  the user already set a flag of that name in `XLA_FLAGS`:
  - `--xla_cpu_experimental_ynn_fusion_type=dot`. XLA:CPU otherwise hands whole fusions
    (the full-resolution bilinear resize of the mask logits feeding the class-axis
    softmax / log-softmax reductions) to a library kernel (YNNPACK) that runs them several
    times slower than XLA's own loops; with `dot`, the library gets plain matmuls only.
    Float32 results stay within rounding of each other. `BENCHMARKS.md`, "CPU speed:
    interleaved A/B".
  - `--xla_backend_extra_options=xla_cpu_use_multi_output_fusion` (an XLA:CPU option that
    only this flag reaches, not a per-compile option). Without it, XLA:CPU fuses the
    residual stream's gradient, a chain of adds over the layers above, into each of its
    consumers separately (the transposed copy a weight-gradient matmul reads, the bias
    reductions, the next layer's sum) and recomputes the whole chain in every one of them:
    fusions of up to 140 operands, 22% of a ViT-S step at batch 8. With multi-output
    fusion the chain is computed once per layer. The ViT-S/16 RankSeg step: -10% at
    batch 1, -21% at batch 8, compile -24%; float32 results stay within rounding (fused
    sums may add in another order). `BENCHMARKS.md`, "CPU speed: multi-output fusion
    and one-pass dropout bits".
* `restart_with_malloc_tunables()` (first thing in `main.py` and the step benchmarks),
  opt-in with `RANKSEG_JAX_MALLOC_TUNABLES=1`: restarts the process, once, with glibc
  malloc settings added to GLIBC_TUNABLES (`MALLOC_TUNABLES`: transparent huge pages for
  what malloc maps). XLA:CPU allocates each execution's temp buffer (the program's "temp"
  memory, e.g. 805 MiB for the ViT-S/16 baseline step at K = 847) with malloc, which maps
  it afresh and unmaps it on free: by default the kernel faults it in 4 KiB at a time on
  every step (206 000 faults per step there). With huge pages: ~770 faults of 2 MiB, and
  on an idle 2-core host ViT-S/16 steps 14-27% faster; but with another large process on
  the host some steps stalled (the kernel compacting memory to find huge pages), so it is
  not the default. `BENCHMARKS.md`, "CPU speed: malloc settings". glibc reads tunables
  only at process start, hence the restart. Nothing happens off Linux, with
  glibc < 2.35, or when GLIBC_TUNABLES already names the setting (yours wins).
* `enable_compilation_cache(path)` (the CLI: `--compilation_cache_dir`, default
  `~/.cache/rankseg_jax/xla`, `cache_dir_setting`) turns on JAX's persistent compilation
  cache (an LRU directory, capped at `max_bytes`), so a restarted run loads its compiled
  step instead of recompiling it (15-60 s per program on CPU). Entries are keyed by the
  program, the jax / jaxlib versions, the XLA flags and the device, so a stale entry is
  never reused.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# A presence flag of XLA:CPU's backend options (no value). Settable only through XLA_FLAGS:
# the per-compile options refuse it.
MULTI_OUTPUT_FUSION_FLAG = "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion"
CPU_FLAGS = (f"{YNN_FLAG}=dot", MULTI_OUTPUT_FUSION_FLAG)
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "rankseg_jax", "xla")
DEFAULT_CACHE_MAX_BYTES = 4 * 2**30
CACHE_ENV = "RANKSEG_JAX_COMPILATION_CACHE_DIR"


def _may_run_on_cpu() -> bool:
    """False where XLA_FLAGS would reach a TPU runtime that may not know the CPU flag.

    The flag is an XLA:CPU option, ignored by the CPU-less GPU compiler of the same jaxlib;
    libtpu ships its own XLA build (possibly older), which rejects unknown flags, so the
    flag is left out whenever libtpu is installed or JAX_PLATFORMS names no CPU.
    """
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms and "cpu" not in platforms.split(","):
        return False
    return importlib.util.find_spec("libtpu") is None


def configure_cpu_flags(environ: dict | None = None) -> list[str]:
    """Adds the project's XLA:CPU flags to `XLA_FLAGS` (call before jax's first backend use).

    environ: the environment to edit (default `os.environ`). A flag whose name the user
    already put in XLA_FLAGS is left as the user set it. Returns the flags added ([] when
    none, e.g. on a TPU host).
    """
    env = os.environ if environ is None else environ
    if environ is None and not _may_run_on_cpu():
        return []
    current = env.get("XLA_FLAGS", "")
    names = {tok.split("=", 1)[0] for tok in current.split()}
    added = [f for f in CPU_FLAGS if f.split("=", 1)[0] not in names]
    if added:
        env["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


# glibc malloc settings for XLA:CPU's per-step buffers (see the module docstring), opt-in:
# transparent huge pages for what malloc maps (glibc madvises its mmaps MADV_HUGEPAGE), so
# that the step's temp buffer, mapped afresh on every execution, faults in 2 MiB at a time.
# Settings that keep freed memory instead (arena_max=1, mmap_max=0, a large trim_threshold)
# removed the faults altogether but made the step slower (BENCHMARKS.md, "CPU speed: malloc
# settings"), so they are not part of it.
MALLOC_TUNABLES = ("glibc.malloc.hugetlb=1",)
MALLOC_ENV = "RANKSEG_JAX_MALLOC_TUNABLES"


def malloc_environment(environ: dict | None = None, *, system: str | None = None,
                       libc: tuple[str, str] | None = None) -> dict | None:
    """The environment to restart in with the project's malloc settings (a copy of
    `environ`, default `os.environ`, with the `MALLOC_TUNABLES` that GLIBC_TUNABLES does not
    already name appended to it), or None when nothing is to change: the opt-in
    RANKSEG_JAX_MALLOC_TUNABLES=1 is not set, not Linux, not glibc >= 2.35, or every
    setting already named (the user's values win). system / libc: `platform.system()` and
    `platform.libc_ver()` (arguments for tests)."""
    env = dict(os.environ if environ is None else environ)
    if env.get(MALLOC_ENV, "0") != "1":
        return None
    if (system or platform.system()) != "Linux":
        return None
    name, version = libc or platform.libc_ver()
    try:
        numbers = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        return None
    if name != "glibc" or numbers < (2, 35):
        return None
    tunables = env.get("GLIBC_TUNABLES", "")
    named = {t.split("=", 1)[0] for t in tunables.split(":") if t}
    added = [t for t in MALLOC_TUNABLES if t.split("=", 1)[0] not in named]
    if not added:
        return None
    env["GLIBC_TUNABLES"] = ":".join([tunables, *added] if tunables else added)
    return env


def restart_with_malloc_tunables() -> None:
    """Re-executes this process's command line (`sys.orig_argv`, interpreter options
    included) under `malloc_environment()`; returns at once when that is None (also in
    the restarted process, whose GLIBC_TUNABLES then names the settings). Call it first in
    a program's main, before it has opened files or started threads: the process image is
    replaced (same PID)."""
    env = malloc_environment()
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def cache_dir_setting(flag_value: str | None) -> str:
    """The cache directory the CLI uses: the `--compilation_cache_dir` value when given
    (empty = off), else $RANKSEG_JAX_COMPILATION_CACHE_DIR when set (empty = off), else
    DEFAULT_CACHE_DIR."""
    if flag_value is not None:
        return flag_value
    return os.environ.get(CACHE_ENV, DEFAULT_CACHE_DIR)


def enable_compilation_cache(path: str = DEFAULT_CACHE_DIR,
                             max_bytes: int = DEFAULT_CACHE_MAX_BYTES) -> str | None:
    """Turns on JAX's persistent compilation cache in `path` (user `~` expanded).

    A cache directory the user already chose (`JAX_COMPILATION_CACHE_DIR` or
    `jax.config.update('jax_compilation_cache_dir', ...)`) wins over `path`. Empty `path`
    (and no user choice) leaves the cache off. Programs that took at least
    `jax_persistent_cache_min_compile_time_secs` (JAX default 1 s) to compile are cached;
    the directory is trimmed least-recently-used beyond `max_bytes` (unless the user set a
    limit).
    Returns the directory in use, or None.
    """
    import jax

    chosen = jax.config.jax_compilation_cache_dir
    if not chosen:
        if not path:
            return None
        chosen = os.path.expanduser(path)
        jax.config.update("jax_compilation_cache_dir", chosen)
    if jax.config.jax_compilation_cache_max_size == -1:
        jax.config.update("jax_compilation_cache_max_size", int(max_bytes))
    return chosen
