"""Compile without the accelerator: the real train step compiled ahead of time, on this
machine's CPU, for an NVIDIA H200 or for a TPU slice (one chip to a multi-host pod slice).

What it answers on any machine: does the step trace and lower for CUDA or TPU (e.g. with
`model.attention=cudnn`, or sharded over a TPU mesh with FSDP), which library calls the
optimised program makes (cuDNN attention, cuBLAS GEMMs), how large it is, how much memory
XLA plans per device (temp, arguments, outputs), and how long the compiler's pipeline takes
without autotuning. It measures no step time and no allocator overheads.

Needs the accelerator plugin of the installed jax, best in a separate virtual environment
(this project's CPU tests do not expect it):

    python -m venv /tmp/venv_aot && . /tmp/venv_aot/bin/activate
    pip install -r requirements.txt && pip install -e . --no-deps
    pip install "jax[cuda12]==$(python -c 'import jax; print(jax.__version__)')"   # H200
    pip install "jax[tpu]==$(python -c 'import jax; print(jax.__version__)')"      # TPU

Targets (`--target`):
* `h200` (default): jax's CUDA plugin with the H200's device description below, through
  `jax.experimental.topologies.get_topology_desc(platform="cuda", target_config=...)`. No GPU
  or driver needed: the plugin's driver check is skipped (JAX_SKIP_CUDA_CONSTRAINTS_CHECK)
  and JAX_PLATFORMS=cpu keeps jax's own backend on the CPU. One device.
* `tpu:TOPOLOGY`, e.g. `tpu:v5e:2x4` (8 chips), `tpu:v5p:2x2x1`, `tpu:v5p:2x2x2` (2 hosts):
  libtpu's compile-only devices (`get_topology_desc(TOPOLOGY, platform="tpu")`); the mesh
  is the config's `mesh.*` over all of them (`--set mesh.fsdp=8`; default: data parallel
  over every chip) and memory is per chip.

Limits, as of jaxlib 0.10.2:
* No autotuning (no device to time candidates on). On the H200, XLA picks GEMM configurations
  by heuristics and its Triton GEMM tiling then fails on the ViT projections ("Couldn't find
  output tile sizes"), so Triton GEMMs are off unless `--triton_gemm` (cuBLAS instead).
  Compile times are therefore a lower bound of a real compile's.
* jax's cuDNN attention checks ask the attached GPU for its cuDNN version and compute
  capability; for the H200 target this script answers them (cuDNN 9.10, capability 9.0).

Examples:

    python benchmarks/aot_compile.py --preset s16 --size 256 --k 1284 --kappa 50 --batch 8
    python benchmarks/aot_compile.py --preset b16 --size 512 --k 150 --kappa 50 --batch 8 \\
        --set model.attention=cudnn
    python benchmarks/aot_compile.py --config configs/ade20k_mask2former.py:rankseg --batch 16
    python benchmarks/aot_compile.py --target tpu:v5e:2x4 --preset b16 --size 512 --batch 32

Prints one JSON line: lower and compile seconds, the optimised program's lines, its
library calls (custom-call targets) and fusion kinds, counted, and XLA's memory plan per
device in MiB.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import time

# The NVIDIA H200 (SXM, 141 GB HBM3e) as XLA's GpuTargetConfigProto: the device facts XLA's
# GPU compiler reads (its cost model, fusion limits and code generation), in the fields
# jaxlib 0.10.2's proto parses.
H200_DEVICE_INFO = {
    "threads_per_block_limit": 1024, "threads_per_warp": 32,
    "shared_memory_per_block": 49152, "shared_memory_per_core": 233472,
    "threads_per_core_limit": 2048, "core_count": 132, "fpus_per_core": 128,
    "block_dim_limit_x": 2147483647, "block_dim_limit_y": 65535, "block_dim_limit_z": 65535,
    "memory_bandwidth": 4800000000000, "l2_cache_size": 52428800, "clock_rate_ghz": 1.98,
    "device_memory_size": 151397597184, "shared_memory_per_block_optin": 232448,
    "registers_per_core_limit": 65536, "registers_per_block_limit": 65536,
    "thread_dim_limit_x": 1024, "thread_dim_limit_y": 1024, "thread_dim_limit_z": 64,
    "device_vendor": "NVIDIA Corporation", "platform_version": "Compute Capability 9.0a",
    "device_address_bits": 64, "pcie_bandwidth": 34359738368, "ecc_enabled": True,
    "name": "NVIDIA H200 141GB HBM3e", "runtime_version": "12.8.0",
    "compile_time_toolkit_version": "12.8.0", "dnn_version": "9.10.0",
}
H200_CUDNN = (9, 10, 0)
H200_COMPUTE_CAPABILITY = (9, 0)


def _text_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def target_config_text() -> str:
    """The H200's GpuTargetConfigProto in protobuf text format."""
    lines = ["gpu_device_info {"]
    lines += [f"  {k}: {_text_value(v)}" for k, v in H200_DEVICE_INFO.items()]
    major, minor = H200_COMPUTE_CAPABILITY
    lines += [f"  cuda_compute_capability {{ major: {major} minor: {minor} "
              "feature_extension: ACCELERATED_FEATURES }", "}"]
    cudnn = dict(zip(("major", "minor", "patch"), H200_CUDNN, strict=True))
    lines += ['platform_name: "CUDA"',
              "dnn_version_info { " + " ".join(f"{k}: {v}" for k, v in cudnn.items()) + " }",
              f"device_description_str: {json.dumps(H200_DEVICE_INFO['name'])}"]
    return "\n".join(lines) + "\n"


def _answer_cudnn_checks_for_the_target() -> None:
    """jax's cuDNN attention asks the attached GPU (there is none) for its cuDNN version and
    compute capability; answer for the H200 target instead."""
    from jax._src.cudnn import fused_attention_stablehlo as fa

    names = ("check_cudnn_version", "check_compute_capability",
             "is_cuda_compute_capability_equal")
    missing = [n for n in names if not hasattr(fa, n)]
    if missing:
        sys.exit(f"aot_compile.py: this jax has no {missing} in jax._src.cudnn."
                 "fused_attention_stablehlo; update the script for it")
    major, minor, patch = H200_CUDNN
    cc = H200_COMPUTE_CAPABILITY
    fa.check_cudnn_version = lambda: major * 10000 + minor * 100 + patch
    fa.check_compute_capability = lambda c: cc >= tuple(int(x) for x in c.split("."))
    fa.is_cuda_compute_capability_equal = lambda c: cc == tuple(int(x) for x in c.split("."))


def target_devices(target: str) -> tuple[list, str, str]:
    """The compile-only devices of `target` ("h200" or "tpu:TOPOLOGY"), their jax backend
    name ("gpu" / "tpu") and a description for the output."""
    import jax
    from jax.experimental import topologies

    if target == "h200":
        try:
            topology = topologies.get_topology_desc(
                platform="cuda", topology_name="", target_config=target_config_text(),
                topology="1x1x1")
        except NotImplementedError as e:
            sys.exit(f"aot_compile.py --target h200 needs jax's CUDA plugin ({e}); install it "
                     f"with pip install 'jax[cuda12]=={jax.__version__}' (see this file's "
                     "docstring)")
        _answer_cudnn_checks_for_the_target()
        return list(topology.devices), "gpu", H200_DEVICE_INFO["name"]
    if target.startswith("tpu:") and len(target) > 4:
        name = target[4:]
        try:
            topology = topologies.get_topology_desc(topology_name=name, platform="tpu")
        except Exception as e:  # noqa: BLE001 - libtpu missing or the name unknown
            import importlib.util

            hint = ("libtpu refused the name (e.g. v5e:2x2, v5e:2x4, v5p:2x2x1, v5p:2x2x2)"
                    if importlib.util.find_spec("libtpu") else
                    f"it needs libtpu: pip install 'jax[tpu]=={jax.__version__}'")
            sys.exit(f"aot_compile.py --target {target}: no TPU topology {name!r} ({e}); "
                     f"{hint}")
        devices = list(topology.devices)
        return devices, "tpu", f"{devices[0].device_kind} x {len(devices)} ({name})"
    sys.exit(f"aot_compile.py: unknown --target {target!r}; use h200 or tpu:TOPOLOGY "
             "(e.g. tpu:v5e:2x4)")


def compile_step(args) -> dict:
    """Lowers and compiles the train step of one configuration for `args.target`."""
    import jax
    import jax.numpy as jnp

    devices, backend, target_name = target_devices(args.target)
    n = len(devices)
    from train_step import build_config, build_file_config, synthetic_batch

    from rankseg_jax import sharding
    from rankseg_jax.train import step as train_step

    # build_config / build_file_config put the mesh on one device; over n devices the data
    # axis takes what the --set mesh sizes leave (mesh.data=-1), unless --set names it.
    mesh_overrides = tuple(args.set)
    if n > 1 and not any(o.startswith("mesh.data=") for o in args.set):
        mesh_overrides = ("mesh.data=-1", *mesh_overrides)
    if args.config:
        path, _, arg = args.config.partition(":")
        c = build_file_config(path, arg or None, args.size, args.batch, args.dtype,
                              args.remat, mesh_overrides, n, backend)
        size = c.data.crop_size[0]
        if tuple(c.data.crop_size) != (size, size):
            sys.exit(f"aot_compile.py: {args.config} crops {tuple(c.data.crop_size)}; pass "
                     "--size for a square crop (the synthetic batch is square)")
        model = {"config": args.config, "arch": c.model.arch, "K": c.model.num_classes}
    else:
        c = build_config(args.preset, args.size, args.k, args.kappa, args.batch, args.dtype,
                         args.remat, mesh_overrides, n, backend)
        size = args.size
        model = {"preset": args.preset, "K": args.k, "kappa": args.kappa or None}
    mesh = sharding.make_mesh(c, devices)
    setup = train_step.make_setup(c, mesh)
    step_fn = train_step.make_train_step(setup)
    batch_sh = sharding.batch_sharding(mesh)
    data = {name: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh)
            for name, v in synthetic_batch(c, size, args.batch).items()}
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding.replicated(mesh))
    t = time.perf_counter()
    lowered = step_fn.lower(setup.abstract_state, data, key)
    lower_s = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t
    from common import memory_numbers

    # Memory: per device. No FLOP count: without a device XLA's cost analysis returns none
    # (benchmarks/train_step.py reports the step's FLOPs on any backend).
    memory = memory_numbers(compiled)
    text = compiled.as_text()
    if args.dump:
        with open(args.dump, "w") as f:
            f.write(text)
    calls = collections.Counter(re.findall(r'custom_call_target="([^"]+)"', text))
    kinds = collections.Counter(re.findall(r"kind=(k[A-Za-z]+)", text))
    mesh_sizes = {axis: int(n_axis) for axis, n_axis in mesh.shape.items()}
    return {"target": target_name, "mesh": mesh_sizes, **model, "size": size,
            "batch": args.batch,
            "dtype": args.dtype, "remat": args.remat, "overrides": args.set,
            "triton_gemm": args.triton_gemm if backend == "gpu" else None,
            "jax": jax.__version__,
            "lower_s": round(lower_s, 1), "compile_s": round(compile_s, 1),
            "stablehlo_lines": lowered.as_text().count("\n"),
            "optimised_hlo_lines": text.count("\n"),
            **{k: round(memory[k]) for k in ("temp_MiB", "arg_MiB", "out_MiB")},
            "custom_calls": dict(sorted(calls.items())),
            "fusion_kinds": dict(sorted(kinds.items()))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="h200",
                   help="h200 (default) or tpu:TOPOLOGY, e.g. tpu:v5e:2x4, tpu:v5p:2x2x1")
    p.add_argument("--config", default="", metavar="PATH[:ARG]",
                   help="a config file's get_config(ARG) instead of --preset/--k/--kappa "
                        "(e.g. configs/ade20k_mask2former.py:rankseg)")
    p.add_argument("--preset", default="s16", choices=("ti16", "s16", "b16", "l16", "m2f"))
    p.add_argument("--size", type=int, default=None,
                   help="square crop (default 256; with --config, the file's crop)")
    p.add_argument("--k", type=int, default=150)
    p.add_argument("--kappa", type=int, default=50, help="top-kappa; 0 = the baseline")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--remat", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable (e.g. model.attention=cudnn)")
    p.add_argument("--dump", default="", metavar="FILE",
                   help="write the optimised program (HLO text) to FILE")
    p.add_argument("--triton_gemm", action="store_true",
                   help="leave XLA's Triton GEMMs on (fails without autotuning in jaxlib 0.10.2)")
    args = p.parse_args()
    if args.size is None and not args.config:
        args.size = 256
    # Before jax is imported: no driver check, jax's own backend on the CPU.
    os.environ["JAX_SKIP_CUDA_CONSTRAINTS_CHECK"] = "1"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if not args.triton_gemm and args.target == "h200":
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_gpu_enable_triton_gemm=false").strip()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    print(json.dumps(compile_step(args)))


if __name__ == "__main__":
    main()
