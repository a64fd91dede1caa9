"""Shared pytest setup: float32-exact matmuls, the project's XLA:CPU flags, no persistent
compilation cache for the CLI runs the tests spawn, and fixture paths."""

import os
import pathlib

from rankseg_jax import runtime

# Full-precision matmuls everywhere (TPU/GPU default to bf16 passes otherwise).
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
# The flags main.py uses (before any test initialises jax), so tests run what users run.
runtime.configure_cpu_flags()
# Subprocesses running main.py must not fill the user's ~/.cache.
os.environ.setdefault(runtime.CACHE_ENV, "")

import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "official"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES
