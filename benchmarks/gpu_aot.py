"""XLA:GPU compile without a GPU: the real train step, compiled ahead of time for an NVIDIA
H200 on this machine's CPU.

What it answers on any machine: does the step trace and lower for CUDA (e.g. with
`model.attention=cudnn`), which library calls the optimised program makes (cuDNN attention,
cuBLAS GEMMs), how large it is, and how long XLA:GPU's pipeline takes without autotuning.
It measures no step time and no memory of a real device.

Needs the CUDA plugin of the installed jax, best in a separate virtual environment:

    python -m venv /tmp/venv_gpu_aot && . /tmp/venv_gpu_aot/bin/activate
    pip install -r requirements.txt && pip install -e . --no-deps
    pip install "jax[cuda12]==$(python -c 'import jax; print(jax.__version__)')"

No GPU or driver is needed: the plugin's driver check is skipped
(JAX_SKIP_CUDA_CONSTRAINTS_CHECK), JAX_PLATFORMS=cpu keeps jax's own backend on the CPU,
and the compile-only CUDA device comes from
`jax.experimental.topologies.get_topology_desc(platform="cuda", target_config=...)` with the
H200's device description below.

Limits, as of jaxlib 0.10.2:
* No autotuning (there is no device to time candidates on): XLA picks GEMM configurations
  by heuristics, and its Triton GEMM tiling then fails on the ViT projections ("Couldn't find
  output tile sizes"), so Triton GEMMs are off unless `--triton_gemm` (cuBLAS instead).
  Compile times here are therefore a lower bound of a real compile's.
* jax's cuDNN attention checks ask the attached GPU for its cuDNN version and compute
  capability; this script answers them for the target (cuDNN 9.10, compute capability 9.0).

Examples:

    python benchmarks/gpu_aot.py --preset s16 --size 256 --k 1284 --kappa 50 --batch 8
    python benchmarks/gpu_aot.py --preset b16 --size 512 --k 150 --kappa 50 --batch 8 \\
        --set model.attention=cudnn
    python benchmarks/gpu_aot.py --config configs/ade20k_mask2former.py:rankseg --batch 16

Prints one JSON line: lower and compile seconds, the optimised program's lines, its
library calls (custom-call targets) and fusion kinds, counted, XLA's memory plan (temp,
arguments, outputs in MiB: what the step needs on the device, before allocator
overheads).
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
        sys.exit(f"gpu_aot.py: this jax has no {missing} in jax._src.cudnn."
                 "fused_attention_stablehlo; update the script for it")
    major, minor, patch = H200_CUDNN
    cc = H200_COMPUTE_CAPABILITY
    fa.check_cudnn_version = lambda: major * 10000 + minor * 100 + patch
    fa.check_compute_capability = lambda c: cc >= tuple(int(x) for x in c.split("."))
    fa.is_cuda_compute_capability_equal = lambda c: cc == tuple(int(x) for x in c.split("."))


def compile_step(args) -> dict:
    """Lowers and compiles the train step of one configuration for the H200 target."""
    import jax
    import jax.numpy as jnp
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(
            platform="cuda", topology_name="", target_config=target_config_text(),
            topology="1x1x1")
    except NotImplementedError as e:
        sys.exit(f"gpu_aot.py needs jax's CUDA plugin ({e}); install it with "
                 f"pip install 'jax[cuda12]=={jax.__version__}' (see this file's docstring)")
    _answer_cudnn_checks_for_the_target()

    from train_step import build_config, build_file_config, synthetic_batch

    from rankseg_jax import sharding
    from rankseg_jax.train import step as train_step

    if args.config:
        path, _, arg = args.config.partition(":")
        c = build_file_config(path, arg or None, args.size, args.batch, args.dtype,
                              args.remat, tuple(args.set), backend="gpu")
        size = c.data.crop_size[0]
        if tuple(c.data.crop_size) != (size, size):
            sys.exit(f"gpu_aot.py: {args.config} crops {tuple(c.data.crop_size)}; pass "
                     "--size for a square crop (the synthetic batch is square)")
        model = {"config": args.config, "arch": c.model.arch, "K": c.model.num_classes}
    else:
        c = build_config(args.preset, args.size, args.k, args.kappa, args.batch, args.dtype,
                         args.remat, tuple(args.set), backend="gpu")
        size = args.size
        model = {"preset": args.preset, "K": args.k, "kappa": args.kappa or None}
    mesh = sharding.make_mesh(c, topology.devices[:1])
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
    from common import MIB

    # No FLOP count: without a device XLA:GPU's cost analysis returns none
    # (benchmarks/train_step.py reports the step's FLOPs on any backend).
    memory = compiled.memory_analysis()
    text = compiled.as_text()
    calls = collections.Counter(re.findall(r'custom_call_target="([^"]+)"', text))
    kinds = collections.Counter(re.findall(r"kind=(k[A-Za-z]+)", text))
    return {"target": H200_DEVICE_INFO["name"], **model, "size": size, "batch": args.batch,
            "dtype": args.dtype, "remat": args.remat, "overrides": args.set,
            "triton_gemm": args.triton_gemm, "jax": jax.__version__,
            "lower_s": round(lower_s, 1), "compile_s": round(compile_s, 1),
            "stablehlo_lines": lowered.as_text().count("\n"),
            "optimised_hlo_lines": text.count("\n"),
            "temp_MiB": round(memory.temp_size_in_bytes / MIB),
            "arg_MiB": round(memory.argument_size_in_bytes / MIB),
            "out_MiB": round(memory.output_size_in_bytes / MIB),
            "custom_calls": dict(sorted(calls.items())),
            "fusion_kinds": dict(sorted(kinds.items()))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--triton_gemm", action="store_true",
                   help="leave XLA's Triton GEMMs on (fails without autotuning in jaxlib 0.10.2)")
    args = p.parse_args()
    if args.size is None and not args.config:
        args.size = 256
    # Before jax is imported: no driver check, jax's own backend on the CPU.
    os.environ["JAX_SKIP_CUDA_CONSTRAINTS_CHECK"] = "1"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if not args.triton_gemm:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_gpu_enable_triton_gemm=false").strip()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    print(json.dumps(compile_step(args)))


if __name__ == "__main__":
    main()
