"""Shared pytest setup: float32-exact matmuls, the project's XLA:CPU flags, one temporary
compilation cache for the session (never the user's ~/.cache), and fixture paths."""

import atexit
import os
import pathlib
import shutil
import tempfile

from rankseg_jax import runtime

# Full-precision matmuls everywhere (TPU/GPU default to bf16 passes otherwise).
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
# The flags main.py uses (before any test initialises jax), so tests run what users run.
runtime.configure_cpu_flags()
# Subprocesses running main.py must not fill the user's ~/.cache.
os.environ.setdefault(runtime.CACHE_ENV, "")
# One persistent compilation cache for the whole session, shared by the xdist workers (they
# inherit this environment from the controller, which imports this file first) and by every
# process the tests spawn: many tests compile the same small train / eval programs, and a hit
# loads the compiled program instead of recompiling it (the same program, so results are
# identical). Size-capped, hence file-locked by jax for concurrent writers; deleted at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="rankseg_jax_tests_xla_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(8 * 2**30)
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "official"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES
