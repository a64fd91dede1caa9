"""Optimizer: optax SGD/AdamW, poly schedule, official parameter-wise lr and weight decay.

Segmenter's official recipe (the `segmenter-ori_*` configs, mmcv 1.3 runner): torch SGD(lr
1e-3, momentum 0.9) with coupled L2
(g <- g + wd * theta before the momentum buffer), mmcv `poly` by iteration

    lr(it) = (base - min) * (1 - it / max_iters) ** power + min,   it = 0 .. max_iters - 1,

no clipping, and per-parameter decay multipliers chosen by mmcv's `custom_keys` rule: keys are
substrings of the *official* parameter name, tried longest first (ties alphabetical), first
match wins. We resolve that rule once on the host through `convert.mmseg.official_names`,
so the decay of every parameter is a plain float baked into the update.

Mask2Former's (`train_net.py:275-357`): torch AdamW(lr 1e-4, betas (0.9, 0.999), eps 1e-8,
decoupled decay 0.05), detectron2's WarmupPolyLR without warmup, lr(it) = base *
(1 - it / max_iter) ** 0.9 per iteration (`projects/DeepLab/deeplab/lr_scheduler.py:17-62`;
POLY_LR_CONSTANT_ENDING 0: the poly formula above with min 0), full-model gradient clipping
at norm 0.01 with torch `clip_grad_norm_`'s coefficient min(1, max / (norm + 1e-6)), and
per-parameter groups expressed as rules on OUR parameter paths (`param_groups`):
`optim.backbone_lr_mult` / `optim.ml_head_lr_mult` on `backbone.*` / `ml_head.*`, weight
decay 0 on the paths matching `optim.no_decay_paths` (`config/variants.py`
MASK2FORMER_NO_DECAY: every LayerNorm / GroupNorm, the decoder's nn.Embeddings, Swin's
relative-position tables, and RankSeg's `ml_head.cls_emb`; see docs/training.md for the two
places where this differs from or follows the official groups). A group's lr multiplier
scales its whole update, decoupled decay included, as a torch param group's lr does.
"""

from __future__ import annotations

import re
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

    poly: mmcv's formula (count clipped at max; detectron2's WarmupPolyLR with min 0), with
    the remaining fraction computed as (steps - it) / steps from the exact integer difference:
    float32 `1 - it / steps` (optax's `polynomial_schedule`) loses the last iterations' lr
    to cancellation (0.1% off at it = steps - 1 for 160k steps).
    Optional mmcv-style linear warmup multiplies it for the first `optim.warmup_steps`
    iterations by `linear_warmup_factors` (a host table, looked up by iteration).
    """
    o = config.optim
    if o.schedule == "poly":
        steps = config.train.steps

        def base(count):
            left = (steps - jnp.clip(count, 0, steps)).astype(jnp.float32) / steps
            return (o.lr - o.min_lr) * left ** o.power + o.min_lr
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


def dotted(path: tuple) -> str:
    """('backbone', 'norm0', 'scale') -> 'backbone.norm0.scale' (the rule strings' form)."""
    return ".".join(map(str, path))


def decay_table(config: mlc.ConfigDict, params) -> dict[tuple, float]:
    """{our path: weight decay} for every leaf of `params` (a pure nested dict).

    wd * the `optim.decay_mult` multiplier of the parameter's official mmseg name (Segmenter;
    parameters without one, and every Mask2Former parameter, use the '.'-joined path), then 0
    for the paths matching a regex of `optim.no_decay_paths` (re.search).
    """
    o = config.optim
    names = mmseg.official_names(config) if config.model.arch == "segmenter" else {}
    no_decay = [re.compile(r) for r in o.no_decay_paths]
    wd = float(o.weight_decay)
    table = {}
    for path, _ in param_paths.flatten(params):
        name = dotted(path)
        mult = decay_multiplier(names.get(path, name), o.decay_mult)
        table[path] = 0.0 if any(r.search(name) for r in no_decay) else wd * mult
    return table


def lr_mult_table(config: mlc.ConfigDict, params) -> dict[tuple, float]:
    """{our path: learning-rate multiplier}: `optim.backbone_lr_mult` under `backbone`,
    `optim.ml_head_lr_mult` under `ml_head` (RankSeg's Mask2Former head), 1 elsewhere."""
    o = config.optim
    mults = {"backbone": float(o.backbone_lr_mult), "ml_head": float(o.ml_head_lr_mult)}
    return {path: mults.get(path[0], 1.0) for path, _ in param_paths.flatten(params)}


def param_groups(config: mlc.ConfigDict, params) -> dict[tuple, tuple[float, float]]:
    """{our path: (lr multiplier, weight decay)}: the torch param group of every parameter."""
    lr, wd = lr_mult_table(config, params), decay_table(config, params)
    return {path: (lr[path], wd[path]) for path in lr}


def _as_tree(table: dict, params):
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: table[param_paths.key_path_tuple(kp)], params)


def _decay_tree(config: mlc.ConfigDict, params):
    return _as_tree(decay_table(config, params), params)


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


def scale_tree(scale_tree_) -> optax.GradientTransformation:
    """u <- s * u with a per-leaf python-float s (leaves with s == 1 are left alone)."""

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u if m == 1.0 else u * m, updates, scale_tree_), state

    return optax.GradientTransformation(lambda p: optax.EmptyState(), update_fn)


def clip_by_global_norm_torch(max_norm: float,
                              platform: str | None = None) -> optax.GradientTransformation:
    """torch `clip_grad_norm_(params, max_norm)`: g <- g * min(1, max_norm / (||g|| + 1e-6)),
    ||g|| the global L2 norm (float32; `tree_norm`, for the devices of `platform`). (optax's
    clip uses max_norm / ||g|| without the 1e-6 and leaves norms below max_norm untouched.)"""

    def update_fn(updates, state, params=None):
        del params
        coef = jnp.minimum(1.0, max_norm / (tree_norm(updates, platform) + 1e-6))
        return jax.tree.map(lambda g: g * coef.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda p: optax.EmptyState(), update_fn)


# --------------------------------------------------------------------------- optimizer


def make_optimizer(config: mlc.ConfigDict, params,
                   platform: str | None = None) -> optax.GradientTransformation:
    """The optax transformation for `params` (pure nested dict; only shapes/paths are used).
    platform: of the devices it will run on ('cpu', 'gpu', 'tpu'; None: jax's default
    backend), for the form of the clipping norm (`tree_norm`).

    sgd:   [clip] -> coupled L2 (per-param wd) -> trace(momentum) -> -lr -> [lr mult]
    adamw: [clip] -> adam moments -> decoupled wd (per-param) -> -lr -> [lr mult]
    (torch SGD / AdamW with one param group per distinct (lr multiplier, wd); the multiplier
    is applied last, which is the same linear map, so configs without multipliers keep the
    optimizer-state layout of their checkpoints).
    """
    o = config.optim
    schedule = learning_rate_schedule(config)
    decay = _decay_tree(config, params)
    parts = []
    if o.clip_grad_norm > 0:
        parts.append(clip_by_global_norm_torch(o.clip_grad_norm, platform))
    if o.name == "sgd":
        parts.append(add_decayed_weights_tree(decay))
        parts.append(optax.sgd(schedule, momentum=o.momentum or None))
    elif o.name == "adamw":
        parts.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps))
        parts.append(add_decayed_weights_tree(decay))
        parts.append(optax.scale_by_learning_rate(schedule))
    else:
        raise ValueError(f"optim.name={o.name!r} is not one of {OPTIMIZERS}")
    lr_mults = lr_mult_table(config, params)
    if any(m != 1.0 for m in lr_mults.values()):
        parts.append(scale_tree(_as_tree(lr_mults, params)))
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


def tree_norm(tree: Mapping, platform: str | None = None) -> jax.Array:
    """Global L2 norm (float32 scalar) of a pytree's leaves (any shapes and float dtypes),
    computed for devices of `platform` ('cpu', 'gpu', 'tpu'; None: jax's default backend;
    the train step passes its mesh's, so a program compiled ahead of time for a GPU/TPU on
    a CPU host gets the GPU/TPU form).

    On GPU/TPU: optax's (a reduction per leaf). On the CPU each leaf's sum of squares is a
    small matrix product (`_sum_of_squares_cpu`): XLA:CPU's tree-reduction rewrite (jaxlib
    0.10, on for every float reduction, no flag) turns `sum(x * x)` into an elementwise
    square, a reduce-window over blocks of 32 and a final reduce, three passes of mostly
    scalar code per leaf. The train step takes three global norms (gradient, parameters,
    optimizer state) of ~150 leaves each: ~75 ms of thread time in the ViT-S/16 step at
    K = 847; the matrix-product form is ~5x faster (BENCHMARKS.md).
    """
    leaves = [x.astype(jnp.float32) for x in jax.tree.leaves(tree)]
    if (platform or jax.default_backend()) != "cpu":
        return optax.global_norm(leaves)
    return jnp.sqrt(sum((_sum_of_squares_cpu(x) for x in leaves), jnp.float32(0.0)))


def _sum_of_squares_cpu(x: jax.Array) -> jax.Array:
    """sum(x ** 2) (float32 scalar) of a float32 array, as trace(Y^T Y) for Y = x viewed as
    [size / 16, 16]: one matrix product whose 16 diagonal entries are the column sums of
    squares (the off-diagonal ones are wasted, 16 multiply-adds per element, still ~5x faster
    on XLA:CPU than the rewritten reduction). Small or odd-sized leaves keep the reduction.
    The result differs from the reduction only in float32 summation order."""
    if x.size < 4096 or x.size % 16:
        return jnp.sum(jnp.square(x))
    y = x.reshape(-1, 16)
    return jnp.trace(jnp.einsum("ij,ik->jk", y, y, precision=jax.lax.Precision.HIGHEST))
