"""Shared pytest setup: float32-exact matmuls on CPU and fixture paths."""

import os
import pathlib

# Full-precision matmuls everywhere (TPU/GPU default to bf16 passes otherwise).
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "official"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES
