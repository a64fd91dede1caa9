"""Train state, shapes-first sharded initialisation and the jitted train step.

The train state is a plain pytree {'step': int32 [], 'params': pure nested dict,
'opt_state': optax state}; the model is rebuilt inside the step with
`nnx.merge(graphdef, params)`, so jit boundaries only see arrays. Shapes come first:
`nnx.eval_shape` gives the parameter shapes, the partition rules give their shardings, and
`jax.jit(init, out_shardings=...)` creates every array directly in its shards (unsharded
parameters are never materialised).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rankseg_jax import checkpointing, models, sharding
from rankseg_jax.evaluation import multilabel as multilabel_metrics
from rankseg_jax.rankseg import ranking
from rankseg_jax.train import losses as losses_lib
from rankseg_jax.train import optim, tasks


@dataclasses.dataclass
class TrainSetup:
    """Everything static about training: model graph, optimizer, shapes and shardings."""
    config: mlc.ConfigDict
    mesh: jax.sharding.Mesh
    graphdef: Any  # nnx GraphDef of the model (Params split out)
    tx: optax.GradientTransformation
    abstract_state: Any  # pytree of jax.ShapeDtypeStruct carrying .sharding
    state_shardings: Any  # pytree of NamedSharding, same structure as the state


def make_setup(config: mlc.ConfigDict, mesh: jax.sharding.Mesh) -> TrainSetup:
    """Shapes, optimizer and shardings of the train state, without allocating anything."""
    graphdef, abs_params = models.abstract_model(config)
    tx = optim.make_optimizer(config, abs_params, mesh_platform(mesh))
    abs_opt = jax.eval_shape(tx.init, abs_params)
    abs_state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abs_params,
                 "opt_state": abs_opt}
    # The rules key on path suffixes and shapes, so optimizer moments (whose paths end with
    # the parameter's path and have its shape) get the parameter's sharding, and scalars
    # such as optax counts are replicated.
    abs_state, shardings = sharding.with_shardings(abs_state, mesh, config)
    return TrainSetup(config, mesh, graphdef, tx, abs_state, shardings)


def mesh_platform(mesh: jax.sharding.Mesh) -> str:
    """The platform of the mesh's devices ('cpu', 'gpu', 'tpu', ...)."""
    return mesh.devices.flat[0].platform


def init_state(setup: TrainSetup) -> dict:
    """Random official-style init, created directly in its shards."""
    config, tx = setup.config, setup.tx

    def init():
        params = models.init_params(config)
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "opt_state": tx.init(params)}

    return jax.jit(init, out_shardings=setup.state_shardings)()


def state_from_params(setup: TrainSetup, params) -> dict:
    """A fresh train state (step 0, new optimizer state) around given params.

    params: pure nested dict (numpy or jax arrays); placed onto the parameter shardings.
    """
    params = checkpointing.place_params(params, setup.abstract_state["params"])
    opt = jax.jit(setup.tx.init, out_shardings=setup.state_shardings["opt_state"])(params)
    step = jax.jit(lambda: jnp.zeros((), jnp.int32),
                   out_shardings=setup.state_shardings["step"])()
    return {"step": step, "params": params, "opt_state": opt}


def model_from_params(setup: TrainSetup, params) -> nnx.Module:
    """An nnx model view of `params` (for evaluation during training)."""
    return nnx.merge(setup.graphdef, params)


# --------------------------------------------------------------------------- step


def _loss_and_metrics(setup: TrainSetup, params, images, labels, rng):
    """Segmenter: loss and per-batch sums of the logged metrics for one (micro-)batch
    (the other hosts' losses: `train/tasks.py`)."""
    config = setup.config
    info_k = config.model.num_classes
    model = nnx.merge(setup.graphdef, params)
    gt = ranking.class_presence(labels, info_k) if model.use_oracle_train else None
    out = model(images, train=True, rng=rng, gt_present=gt)
    terms = losses_lib.segmentation_losses(out, labels, config.loss, info_k,
                                           config.data.ignore_index)
    aux = {k: v.astype(jnp.float32) for k, v in terms.items()}
    if "topk_index" in out:
        # Image-level top-kappa recall (GT classes that made the list) and precision.
        hist = ranking.class_histogram(labels, info_k)
        aux.update(multilabel_metrics.topk_train_sums(hist, out["topk_index"]))
    return terms["loss"].astype(jnp.float32), aux


def make_train_step(setup: TrainSetup) -> Callable:
    """The jitted step: (state, batch, base_key) -> (state, metrics).

    batch: the `tasks.batch_keys(config)` global arrays sharded over ('data','fsdp'):
    {'image': float32 [B,H,W,3], 'label': int32 [B,H,W]} for Segmenter, plus the
    mask-classification targets for Mask2Former. base_key: the run's PRNG key; the step's
    dropout key is `step_key(base_key, step, train.dropout_prng)`, so a step is a pure
    function of (state, batch) and resume is exact. The loss is `tasks.loss_fn(config)`.
    With train.grad_accum = A the batch is split into A micro-batches of B/A (strided, so
    each device keeps its own rows) and gradients are averaged in a `lax.scan`.
    A non-finite loss, gradient or updated state (parameters, optimizer moments) leaves the
    state unchanged, step counter included, and reports finite=0: the state only ever holds
    finite values and `state['step']` counts the steps actually applied.
    The state argument is donated.
    """
    config, mesh = setup.config, setup.mesh
    platform = mesh_platform(mesh)  # the form of the global norms (`optim.tree_norm`)
    accum = config.train.grad_accum
    loss_fn = tasks.loss_fn(config)
    grad_fn = jax.value_and_grad(lambda p, b, r: loss_fn(setup, p, b, r), has_aux=True)
    micro_sharding = NamedSharding(mesh, P(None, sharding.BATCH_AXES))

    def grads_and_aux(params, batch, rng):
        if accum == 1:
            (_, aux), grads = grad_fn(params, batch, rng)
            return grads, aux

        def split(x):
            x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:])
            return jax.lax.with_sharding_constraint(jnp.swapaxes(x, 0, 1), micro_sharding)

        xs = (jnp.arange(accum), {k: split(v) for k, v in batch.items()})
        first = jax.tree.map(lambda v: v[0], xs[1])
        zero = jax.eval_shape(lambda: grad_fn(params, first, rng))
        zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (zero[1], zero[0][1]))

        def body(carry, inp):
            i, micro = inp
            (_, aux), g = grad_fn(params, micro, jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, carry, (g, aux)), None

        (grads, aux), _ = jax.lax.scan(body, zero, xs)
        # Sums of counts stay sums; means (losses, grads) are averaged over micro-batches.
        grads = jax.tree.map(lambda g: g / accum, grads)
        aux = {k: v if k.endswith(("_sum", "_count")) else v / accum for k, v in aux.items()}
        return grads, aux

    def step_fn(state, batch, base_key):
        params = state["params"]
        rng = step_key(base_key, state["step"], config.train.dropout_prng)
        grads, aux = grads_and_aux(params, batch, rng)
        updates, opt_state = setup.tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        grad_norm = optim.tree_norm(grads, platform)
        param_norm = optim.tree_norm(new_params, platform)
        # The result is checked too: a finite gradient can still give a non-finite update
        # (a NaN/Inf learning rate or multiplier, an overflowing moment). A global L2 norm is
        # NaN/Inf iff some element is, or iff the squares overflow (|x| > ~1e19 in float32:
        # a diverged run either way). The gradient and parameter norms are logged anyway, so
        # the check adds one reduction per optimizer-state leaf instead of an is-finite pass
        # and a reduction per parameter and moment leaf (ViT-S RankSeg step on XLA:CPU: 9%
        # fewer lines of optimised HLO, same step time; BENCHMARKS.md).
        finite = (jnp.isfinite(aux["loss"]) & jnp.isfinite(grad_norm)
                  & jnp.isfinite(param_norm) & jnp.isfinite(_float_norm(opt_state, platform)))
        new = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state}
        # Keep the last good state in memory if this step blew up (the loop then stops).
        # One conditional for the whole state, not a select per leaf: XLA fuses the scalar
        # AND of the ~3 x (number of parameter leaves) checks into every per-leaf select,
        # which makes the program quadratic in the leaf count (Mask2Former, ~650 leaves:
        # 0.94M lines of optimised HLO, 4 minutes and 7.6 GiB to compile on 2 CPU cores).
        new = jax.lax.cond(finite, lambda: new, lambda: state)
        metrics = dict(aux)
        metrics.update(grad_norm=grad_norm, param_norm=param_norm,
                       finite=finite.astype(jnp.float32))
        return new, metrics

    repl = sharding.replicated(mesh)
    batch_sh = {k: sharding.batch_sharding(mesh) for k in tasks.batch_keys(config)}
    return jax.jit(step_fn,
                   in_shardings=(setup.state_shardings, batch_sh, repl),
                   out_shardings=(setup.state_shardings, repl),
                   donate_argnums=(0,))


def step_key(base_key: jax.Array, step: jax.Array, impl: str) -> jax.Array:
    """The step's dropout key: fold_in(base_key, step) (a raw uint32 [2] threefry key),
    re-wrapped as an 'rbg' key (its 4 words drawn from that key) when impl == 'rbg'.
    Either way a pure function of (base_key, step), so resume stays exact."""
    rng = jax.random.fold_in(base_key, step)
    if impl == "rbg":
        rng = jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl="rbg")
    return rng


def _float_norm(tree, platform: str) -> jax.Array:
    """Global L2 norm (float32 scalar) of the floating-point leaves of `tree` (optimizer
    states also hold integer counters); 0 when there are none."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return optim.tree_norm(leaves, platform) if leaves else jnp.float32(0.0)


def finalize_metrics(raw: dict, steps: int = 1) -> dict:
    """Host-side: turn metrics summed over `steps` steps into means and floats.

    Keys `x_sum`/`x_count` become x = sum / count (pooled over the steps); every other key
    is a per-step value and is divided by `steps`.
    """
    out = {}
    for k, v in raw.items():
        if k.endswith("_count"):
            continue
        if k.endswith("_sum"):
            name = k[: -len("_sum")]
            cnt = float(raw[name + "_count"])
            out[name] = float(v) / cnt if cnt else float("nan")
        else:
            out[k] = float(v) / steps
    return out
