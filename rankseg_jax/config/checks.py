"""The small checks every validator uses: enumerations, size pairs, finite numbers in range.

Each raises `ConfigError` naming the option.
"""

from __future__ import annotations

import math

import ml_collections as mlc

from rankseg_jax.config.schema import ConfigError


def choice(value, choices, name: str) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {choices}")


def positive_pair(value, name: str) -> None:
    # A command-line `--config.data.crop_size=64` gives an int or a 1-tuple, not a pair.
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
        raise ConfigError(f"{name}={value!r} must be two positive integer sizes (height, "
                          f"width), e.g. --config.{name}='(512, 512)'")


def finite(value, name: str, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False) -> None:
    """value must be a finite number in [low, high]; `low_open`/`high_open` exclude the end."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} must be a finite number")
    too_low = low is not None and (value < low or (low_open and value == low))
    too_high = high is not None and (value > high or (high_open and value == high))
    if too_low or too_high:
        raise ConfigError(f"{name}={value} must be in {'(' if low_open else '['}"
                          f"{'-inf' if low is None else low}, {'inf' if high is None else high}"
                          f"{')' if high_open or high is None else ']'}")


def option(config: mlc.ConfigDict, name: str):
    node = config
    for part in name.split("."):
        node = node[part]
    return node
