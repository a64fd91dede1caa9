"""What produced a run: package versions, git revision, config file + variant, resolved config.

Written by the trainer to `<workdir>/run_info.json` (beside `config.json`) and into every
training checkpoint's orbax step metadata (`custom_metadata`, read back with
`checkpointing.Checkpointer.step_info` / `read_step_info`), so a checkpoint copied
elsewhere still says which code, libraries and options made it.

    {"rankseg_jax": "0.2.0", "git": "<sha>[-dirty]" | "unknown",
     "versions": {"python", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
                  "grain"},
     "config_file": "configs/demo.py:steps=300" | null, "variant": "steps=300" | "",
     "overrides": {"train.steps": 5, ...}, "command": "python main.py ...",
     "environment": {"XLA_FLAGS": "...", "GLIBC_TUNABLES": "...", ...} (those set),
     "devices": {"platform": "gpu", "kind": "NVIDIA H200", "count": 8, "processes": 1},
     "created": "2025-01-01T10:00:00", "config": {... the resolved config ...}}

The environment variables recorded are the ones that change how a run computes or how fast
(`ENVIRONMENT_VARIABLES`): XLA's flags change float32 summation order, the malloc settings
the step time.
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys

RUN_INFO_FILE = "run_info.json"
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "grain")
ENVIRONMENT_VARIABLES = ("XLA_FLAGS", "LIBTPU_INIT_ARGS", "JAX_PLATFORMS",
                         "JAX_DEFAULT_MATMUL_PRECISION", "JAX_ENABLE_X64",
                         "JAX_DEFAULT_PRNG_IMPL", "GLIBC_TUNABLES",
                         "RANKSEG_JAX_MALLOC_TUNABLES", "CUDA_VISIBLE_DEVICES")


def versions() -> dict[str, str]:
    """{'python': '3.11.9', 'jax': ..., ...}: installed versions ('not installed' if absent)."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def environment(environ: dict | None = None) -> dict[str, str]:
    """{name: value} of the `ENVIRONMENT_VARIABLES` set in `environ` (default `os.environ`)."""
    env = os.environ if environ is None else environ
    return {name: env[name] for name in ENVIRONMENT_VARIABLES if name in env}


def devices() -> dict:
    """{'platform': 'cpu', 'kind': 'cpu', 'count': 1, 'processes': 1}: jax's global devices
    (initialises jax's backend if nothing has yet)."""
    import jax

    devs = jax.devices()
    return {"platform": devs[0].platform, "kind": devs[0].device_kind, "count": len(devs),
            "processes": jax.process_count()}


@functools.lru_cache(maxsize=1)
def git_revision() -> str:
    """The commit of the source checkout this package runs from, '-dirty' appended when
    tracked files are modified; 'unknown' outside a git checkout or without git (never
    raises)."""
    root = pathlib.Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if sha.returncode != 0 or not sha.stdout.strip():
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def collect(config, *, config_file: str | None = None, overrides: dict | None = None) -> dict:
    """The run-info dict (module docstring) of `config`.

    config_file: the `--config` value with its variant ('configs/demo.py:steps=300');
    overrides: the `--config.x=y` values. Initialises jax's backend if nothing has yet
    (`devices`), so set XLA_FLAGS before calling it.
    """
    from rankseg_jax import __version__

    variant = config_file.split(":", 1)[1] if config_file and ":" in config_file else ""
    return {"rankseg_jax": __version__, "git": git_revision(), "versions": versions(),
            "config_file": config_file, "variant": variant,
            "overrides": {k: _jsonable(v) for k, v in (overrides or {}).items()},
            "command": " ".join(sys.argv), "environment": environment(),
            "devices": devices(),
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "config": json.loads(_config_json(config))}


def _config_json(config) -> str:
    from rankseg_jax.config import serialization

    return serialization.to_json(config)


def _jsonable(v):
    try:
        json.dumps(v)
        return v
    except TypeError:
        return str(v)


def save(info: dict, directory) -> None:
    """Writes `<directory>/run_info.json` (atomically; local or cloud directory)."""
    from rankseg_jax import paths

    d = paths.as_path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths.write_text_atomic(d / RUN_INFO_FILE, json.dumps(info, indent=2, sort_keys=True))


def load(directory) -> dict:
    """The run_info.json of a run directory; {} if there is none."""
    from rankseg_jax import paths

    p = paths.as_path(directory) / RUN_INFO_FILE
    return json.loads(p.read_text()) if p.exists() else {}


def describe(info: dict) -> str:
    """One line: 'rankseg_jax 0.2.0 (git abc1234), jax 0.10.2, flax 0.12.8, python 3.11.9'."""
    v = info.get("versions", {})
    return (f"rankseg_jax {info.get('rankseg_jax')} (git {str(info.get('git'))[:12]}), "
            f"jax {v.get('jax')}, flax {v.get('flax')}, python {v.get('python')}"
            + (f"; config {info['config_file']}" if info.get("config_file") else ""))


__all__ = ["RUN_INFO_FILE", "collect", "describe", "git_revision", "load", "save", "versions"]
