"""Optimizer: optax SGD/AdamW, mmcv poly schedule, official parameter-wise weight decay.

Official recipe (the `segmenter-ori_*` configs, mmcv 1.3 runner): torch SGD(lr 1e-3,
momentum 0.9) with coupled L2
(g <- g + wd * theta before the momentum buffer), mmcv `poly` by iteration

    lr(it) = (base - min) * (1 - it / max_iters) ** power + min,   it = 0 .. max_iters - 1,

no clipping, and per-parameter decay multipliers chosen by mmcv's `custom_keys` rule: keys are
substrings of the *official* parameter name, tried longest first (ties alphabetical), first
match wins. We resolve that rule once on the host through `convert.mmseg.official_names`,
so the decay of every parameter is a plain float baked into the update.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax

from rankseg_jax import param_paths
from rankseg_jax.convert.tables import mmseg

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("poly", "constant")


# --------------------------------------------------------------------------- schedule


def linear_warmup_factors(warmup_steps: int, ratio: float) -> np.ndarray:
    """mmcv linear warmup factors for iterations 0..warmup_steps: float32 [warmup_steps + 1].

    mmcv `LrUpdaterHook.get_warmup_lr` (mmcv/runner/hooks/lr_updater.py), in Python float64:
    k = (1 - it / warmup_iters) * (1 - ratio), lr = regular_lr * (1 - k) for it < warmup_iters,
    the regular lr from then on (factor 1). Evaluated here in float64 and rounded once to
    float32, so iteration 0 gives float32(ratio) (a float32 evaluation of the same expression
    gives 1.0133e-6 for ratio 1e-6).
    """
    it = np.arange(warmup_steps + 1, dtype=np.float64)
    k = (1.0 - it / warmup_steps) * (1.0 - float(ratio))
    return (1.0 - k).astype(np.float32)


def learning_rate_schedule(config: mlc.ConfigDict) -> optax.Schedule:
    """lr as a function of the iteration (0-based), from `config.optim` and `train.steps`.

    poly: `optax.polynomial_schedule` is exactly mmcv's formula (count clipped at max).
    Optional mmcv-style linear warmup multiplies it for the first `optim.warmup_steps`
    iterations by `linear_warmup_factors` (a host table, looked up by iteration).
    """
    o = config.optim
    if o.schedule == "poly":
        base = optax.polynomial_schedule(init_value=o.lr, end_value=o.min_lr, power=o.power,
                                         transition_steps=config.train.steps)
    elif o.schedule == "constant":
        base = optax.constant_schedule(o.lr)
    else:
        raise ValueError(f"optim.schedule={o.schedule!r} is not one of {SCHEDULES}")
    if o.warmup_steps <= 0:
        return base
    warm = o.warmup_steps
    factors = linear_warmup_factors(warm, o.warmup_ratio)

    def schedule(count):
        return base(count) * jnp.asarray(factors)[jnp.clip(count, 0, warm)]

    return schedule


def lr_at(config: mlc.ConfigDict, step: int) -> float:
    """The learning rate used by the update of (0-based) iteration `step`."""
    return float(learning_rate_schedule(config)(step))


# --------------------------------------------------------------------------- weight decay


def decay_multiplier(name: str, decay_mult: Any) -> float:
    """mmcv `custom_keys` rule for one official name: longest key first, then alphabetical."""
    keys = sorted(((str(k), float(v)) for k, v in decay_mult), key=lambda kv: (-len(kv[0]), kv[0]))
    for key, mult in keys:
        if key in name:
            return mult
    return 1.0


def decay_table(config: mlc.ConfigDict, params) -> dict[tuple, float]:
    """{our path: weight decay} for every leaf of `params` (a pure nested dict).

    Paths with an official name use the official name; parameters without one (none in the
    current model, but possible in ablations added later) fall back to their '.'-joined path,
    so a multiplier key still applies to them.
    """
    names = mmseg.official_names(config)
    wd = float(config.optim.weight_decay)
    table = {}
    for path, _ in param_paths.flatten(params):
        name = names.get(path, ".".join(map(str, path)))
        table[path] = wd * decay_multiplier(name, config.optim.decay_mult)
    return table


def _decay_tree(config: mlc.ConfigDict, params):
    table = decay_table(config, params)
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: table[param_paths.key_path_tuple(kp)], params)


def add_decayed_weights_tree(decay_tree) -> optax.GradientTransformation:
    """g <- g + wd * theta with a per-leaf python-float wd (zero leaves cost nothing)."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("add_decayed_weights_tree needs params")
        new = jax.tree.map(lambda g, p, w: g + w * p.astype(g.dtype) if w else g,
                           updates, params, decay_tree)
        return new, state

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- optimizer


def make_optimizer(config: mlc.ConfigDict, params) -> optax.GradientTransformation:
    """The optax transformation for `params` (pure nested dict; only shapes/paths are used).

    sgd:   [clip] -> coupled L2 (per-param wd) -> trace(momentum) -> -lr   (torch SGD)
    adamw: [clip] -> adam moments -> decoupled wd (per-param, times lr) -> -lr
    """
    o = config.optim
    schedule = learning_rate_schedule(config)
    decay = _decay_tree(config, params)
    parts = []
    if o.clip_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(o.clip_grad_norm))
    if o.name == "sgd":
        parts.append(add_decayed_weights_tree(decay))
        parts.append(optax.sgd(schedule, momentum=o.momentum or None))
    elif o.name == "adamw":
        parts.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps))
        parts.append(add_decayed_weights_tree(decay))
        parts.append(optax.scale_by_learning_rate(schedule))
    else:
        raise ValueError(f"optim.name={o.name!r} is not one of {OPTIMIZERS}")
    return optax.chain(*parts)


def check_config(config: mlc.ConfigDict) -> None:
    """Raises ValueError naming the option for invalid optimizer settings."""
    o = config.optim
    if o.name not in OPTIMIZERS:
        raise ValueError(f"optim.name={o.name!r} is not one of {OPTIMIZERS}")
    if o.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule={o.schedule!r} is not one of {SCHEDULES}")
    if o.lr <= 0:
        raise ValueError(f"optim.lr={o.lr} must be > 0")
    if o.warmup_steps < 0 or o.warmup_steps >= max(config.train.steps, 1) and o.warmup_steps:
        raise ValueError(f"optim.warmup_steps={o.warmup_steps} must be in [0, train.steps)")
    for item in o.decay_mult:
        if len(item) != 2 or not isinstance(item[0], str):
            raise ValueError(f"optim.decay_mult entry {item!r} is not a (substring, mult) pair")


def tree_norm(tree: Mapping) -> jax.Array:
    """Global L2 norm of a pytree (float32)."""
    return optax.global_norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))
