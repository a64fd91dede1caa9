"""Interleaved A/B of train-step variants in one process (for a shared, loaded machine).

Every variant is compiled in this process, then the variants run in turn, `--steps` steps
each, for `--passes` passes (A B C A B C ...), so they share the machine's load. Reports,
per variant and pass, the median wall time per step and the median process CPU time per
step (all threads; less sensitive to other jobs than wall time), and the compile time.

Variants (cumulative, named by what they add):

  xla-default  XLA's own CPU defaults, the K-way argmax for the logged pixel accuracy,
               threefry dropout keys (the step before this change set);
  +ynn-dot     the project's XLA:CPU flag (`rankseg_jax/runtime.py`), per compile;
  +acc         pixel accuracy from the loss's max (`train/losses.py`);
  +rbg         `train.dropout_prng='rbg'`;
  opt:K=V[+K2=V2]  the project's defaults (`+acc`) plus XLA compile options (DebugOptions
               field names; enum values by name, booleans as true/false), e.g.
               `opt:xla_cpu_enable_concurrency_optimized_scheduler=false`.
  undo:NAME[+NAME2]  the project's defaults without one of its program-level CPU
               workarounds, as they were before it: `norm-matmul` (the step's global norms
               as optax's reductions on every backend, `train/optim.py: tree_norm`) or
               `scale-barrier` (the attention-dropout logits scaled inside the q.k
               product's fusion, `models/transformer.py: Attention`).
  mesh:AXIS=N[+AXIS2=N2]  the project's defaults on a mesh of virtual CPU devices, e.g.
               `mesh:data=2` (data parallel over 2 devices; the batch must divide) or
               `mesh:tensor=2`; the script asks XLA:CPU for as many host devices as the
               largest mesh needs (`--xla_force_host_platform_device_count`). The other
               variants run on the first device alone.

XLA:CPU's multi-output fusion, the project's other CPU flag, is an XLA_FLAGS-only option (no
per-compile setting exists), so it is process-wide here: every variant gets it, unless
`--no_multi_output_fusion` leaves it out of the whole run (it must not be in XLA_FLAGS then).

Each variant's optimised HLO is fingerprinted (a hash of its text, printed with the compile
time), so an option that leaves the HLO unchanged shows as such. Options that act below HLO
(LLVM code generation, e.g. `xla_cpu_ftz`) can change the machine code under the same
fingerprint.

    python benchmarks/ab_train_step.py --preset s16 --size 256 --k 150 --kappa 50
    python benchmarks/ab_train_step.py --batch 8 --variants +acc,mesh:data=2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_step_arguments  # noqa: E402
from train_step import build_config, synthetic_batch  # noqa: E402

VARIANTS = ("xla-default", "+ynn-dot", "+acc", "+rbg")


def _argmax_accuracy_losses(losses):
    """A `cross_entropy_and_accuracy` that computes the accuracy by a K-way argmax (the
    previous behaviour), for the A side."""
    original = losses.cross_entropy_and_accuracy

    def fn(logits, labels, ignore_index, average="all_pixels"):
        loss, _ = original(logits, labels, ignore_index, average)
        return loss, losses.pixel_accuracy(logits, labels)

    return original, fn


def _parse_options(text: str) -> dict:
    """'k=v+k2=v2' -> {k: v, k2: v2}; true/false become booleans, integers ints."""
    options = {}
    for item in text.split("+"):
        key, _, value = item.partition("=")
        if not key or not value:
            raise SystemExit(f"bad compile option {item!r} in variant 'opt:{text}' (want K=V)")
        options[key] = ({"true": True, "false": False}.get(value.lower())
                        if value.lower() in ("true", "false")
                        else int(value) if value.lstrip("-").isdigit() else value)
    return options


def _parse_mesh(text: str) -> dict:
    """'data=2+tensor=1' -> {'data': 2, 'tensor': 1} (positive integers, the mesh's axes)."""
    from rankseg_jax.sharding import AXES  # imports jax, but starts no backend

    sizes = {}
    for item in text.split("+"):
        axis, _, value = item.partition("=")
        if axis not in AXES or not value.isdigit() or int(value) < 1:
            raise SystemExit(f"bad mesh size {item!r} in variant 'mesh:{text}' (want AXIS=N, "
                             f"AXIS one of {', '.join(AXES)}, N >= 1)")
        sizes[axis] = int(value)
    return sizes


UNDO = ("norm-matmul", "scale-barrier")


def _parse_undo(text: str) -> set[str]:
    """'norm-matmul+scale-barrier' -> the set of workarounds to leave out."""
    names = set(text.split("+"))
    unknown = names - set(UNDO)
    if unknown:
        raise SystemExit(f"unknown workaround(s) {sorted(unknown)} in variant 'undo:{text}' "
                         f"(known: {', '.join(UNDO)})")
    return names


class _Undo:
    """Context manager: while the step is traced, replace the named workarounds by what
    the code did before them (restored on exit)."""

    def __init__(self, names: set[str]):
        self.names = names

    def __enter__(self):
        import jax

        from rankseg_jax.train import optim

        self.saved = norm, _ = optim.tree_norm, jax.lax.optimization_barrier
        if "norm-matmul" in self.names:
            # tree_norm's GPU/TPU form (optax's reductions) whatever the platform.
            optim.tree_norm = lambda tree, platform=None: norm(tree, "gpu")
        if "scale-barrier" in self.names:
            # The barrier's only use in the step is the attention-dropout logits.
            jax.lax.optimization_barrier = lambda x: x
        return self

    def __exit__(self, *exc):
        import jax

        from rankseg_jax.train import optim

        optim.tree_norm, jax.lax.optimization_barrier = self.saved
        return False


def devices_needed(names: list[str]) -> int:
    """The most devices any variant's mesh needs (1 without mesh: variants)."""
    return max([math.prod(_parse_mesh(n[5:]).values()) for n in names if n.startswith("mesh:")]
               or [1])


def compile_variant(name: str, a) -> tuple:
    import jax

    from rankseg_jax import runtime, sharding
    from rankseg_jax.train import losses
    from rankseg_jax.train import step as train_step

    extra, mesh_sizes, undo = {}, {}, set()
    if name.startswith("opt:"):
        index, extra = 2, _parse_options(name[4:])
    elif name.startswith("undo:"):
        index, undo = 2, _parse_undo(name[5:])
    elif name.startswith("mesh:"):
        index, mesh_sizes = 2, _parse_mesh(name[5:])
    else:
        index = VARIANTS.index(name)
    overrides = list(a.set) + (["train.dropout_prng=rbg"] if index >= 3 else [])
    overrides += [f"mesh.{axis}={size}" for axis, size in mesh_sizes.items()]
    num_devices = math.prod(mesh_sizes.values())  # 1 without a mesh: variant
    c = build_config(a.preset, a.size, a.k, a.kappa, a.batch, "float32", False, overrides,
                     num_devices=num_devices)
    mesh = sharding.make_mesh(c, jax.devices()[:num_devices])
    setup = train_step.make_setup(c, mesh)
    step_fn = train_step.make_train_step(setup)
    state = train_step.init_state(setup)
    batch_sh = sharding.batch_sharding(mesh)
    data = {k: jax.device_put(v, batch_sh) for k, v in synthetic_batch(c, a.size, a.batch).items()}
    key = jax.device_put(jax.random.PRNGKey(0), sharding.replicated(mesh))
    original, patched = _argmax_accuracy_losses(losses)
    if index < 2:
        losses.cross_entropy_and_accuracy = patched
    try:
        t = time.perf_counter()
        with _Undo(undo):
            lowered = step_fn.lower(state, data, key)
    finally:
        losses.cross_entropy_and_accuracy = original
    # Per-compile DebugOptions take enum names, not the XLA_FLAGS spelling.
    options = {runtime.YNN_FLAG.lstrip("-"): "LIBRARY_FUSION_TYPE_DOT"} if index >= 1 else {}
    options.update(extra)
    compiled = lowered.compile(compiler_options=options)
    compile_s = time.perf_counter() - t
    fingerprint = hashlib.sha256(compiled.as_text().encode()).hexdigest()[:12]
    state, metrics = compiled(state, data, key)  # warm-up
    jax.block_until_ready(metrics)
    return compiled, [state], data, key, compile_s, fingerprint


def main() -> None:
    from rankseg_jax import runtime

    # As main.py: with the opt-in RANKSEG_JAX_MALLOC_TUNABLES=1, restart once, before
    # anything else, with the malloc settings (see runtime.py).
    runtime.restart_with_malloc_tunables()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_step_arguments(ap)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant and pass")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every variant, e.g. model.vit.depth=2")
    ap.add_argument("--no_multi_output_fusion", action="store_true",
                    help="leave XLA:CPU's multi-output fusion off in every variant")
    a = ap.parse_args()
    from rankseg_jax import runtime

    flags = os.environ.get("XLA_FLAGS", "")
    if "ynn_fusion_type" in flags:
        sys.exit("unset XLA_FLAGS' ynn_fusion_type: the variants set it per compile")
    if "xla_backend_extra_options" in flags:
        sys.exit("unset XLA_FLAGS' xla_backend_extra_options: this script sets it "
                 "(see --no_multi_output_fusion)")
    if not a.no_multi_output_fusion:
        flags = f"{flags} {runtime.MULTI_OUTPUT_FUSION_FLAG}".strip()
        os.environ["XLA_FLAGS"] = flags  # read once, when jax initialises its CPU backend
    names = a.variants.split(",")
    devices = devices_needed(names)
    if devices > 1:
        if "xla_force_host_platform_device_count" in flags:
            sys.exit("unset XLA_FLAGS' xla_force_host_platform_device_count: the mesh: "
                     "variants set it")
        # Read once, when jax initialises its CPU backend (below, after this line).
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}"
    import jax

    runs = {}
    for name in names:
        runs[name] = compile_variant(name, a)
        print(f"compiled {name}: {runs[name][4]:.1f} s, program {runs[name][5]}", flush=True)
    result = {n: {"compile_s": runs[n][4], "program": runs[n][5], "wall": [], "cpu": []}
              for n in names}
    for _ in range(a.passes):
        for name in names:
            compiled, holder, data, key, _, _ = runs[name]
            wall, cpu = [], []
            for _ in range(a.steps):
                t, p = time.perf_counter(), time.process_time()
                holder[0], metrics = compiled(holder[0], data, key)
                jax.block_until_ready(metrics)
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - p)
            result[name]["wall"].append(statistics.median(wall))
            result[name]["cpu"].append(statistics.median(cpu))
            print(f"{name}: wall {result[name]['wall'][-1]:.3f} s, "
                  f"cpu {result[name]['cpu'][-1]:.3f} s", flush=True)
    print(json.dumps({"config": vars(a), "load": os.getloadavg(), "result": result}))


if __name__ == "__main__":
    main()
