"""Training memory and FLOPs vs the number of classes K: Segmenter baseline vs RankSeg.

RankSeg classifies pixels over kappa << K classes, so after the multi-label head the training
step should not grow as O(K*H*W); the Segmenter baseline's does (its K-way mask logits are
upsampled to the 512x512 label size for the cross-entropy). For each K and head this builds the
official-resolution training loss for ONE 512x512 crop (the official per-device batch is 1),
i.e. `train_state._loss_and_metrics` (model with train=True, dropout/drop-path on, the
trainer's `losses.segmentation_losses` and logged metrics), and compiles

    jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(params, image, label, rng).compile()

on this machine's single CPU device. Reported per row:

* XLA `memory_analysis()`: temp bytes (activations, intermediates, backward buffers) and the
  total of arguments (params, image, label) + outputs (loss, metrics, grads) + temps;
* GFLOPs from `compiled.cost_analysis()['flops']` (XLA's estimate for the whole step);
* optionally the wall time of one executed step (`--run_ks`, small K only on a small machine).

A "loss only" row per K isolates the loss: the same value_and_grad, but of
`segmentation_losses` alone with respect to the head outputs (mask logits at the 32x32 patch
grid, and for RankSeg the [1, K] image logits), which shows where the baseline's memory goes:
K-way float32 logits at 512x512 are K x 1 MiB per buffer.

Backbone width: the default `--preset b16` is the official ViT-B/16 (12 layers, width 768,
12 heads; head d_model 768, d_ff 3072, 3 head blocks), which compiles in ~10 s per step here
because only compilation, not execution, is needed for the memory and FLOP numbers.
`--preset ti16` (ViT-Ti/16, width 192, head width = backbone width) is the cheap variant for
executing steps on a small CPU. The K-dependent parts scale with the head width d (class
embeddings and GroupWiseLinear are K x d; K class tokens pass through the head blocks), except
the K-way mask logits and the upsampled loss inputs, which do not depend on d.

Usage:
  python benchmarks/train_memory.py [--ks 150,847,1284,3688] [--preset b16] [--run_ks 150]
Each measurement runs in a fresh subprocess (compile memory is returned to the OS).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import memory_numbers  # noqa: E402

CROP = (512, 512)


def _config(k: int, head: str, kappa: int, preset: str):
    from rankseg_jax import config as config_lib

    c = config_lib.base_config()
    config_lib.apply_vit_preset(c, preset)
    c.model.num_classes = k
    c.model.rankseg.enabled = head == "rankseg"
    if head == "rankseg":
        c.model.rankseg.topk = kappa
    c.data.crop_size = CROP
    c.model.vit.img_size = CROP
    c.train.batch_size = 1
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
    config_lib.validate(c)
    return c


def worker_step(k: int, head: str, kappa: int, preset: str, run: bool) -> dict:
    """value_and_grad of the trainer's loss for one 512x512 crop; compiled (and maybe run)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rankseg_jax import sharding
    from rankseg_jax.train import step as train_state

    c = _config(k, head, kappa, preset)
    mesh = sharding.make_mesh(c, jax.devices()[:1])
    setup = train_state.make_setup(c, mesh)
    abs_params = setup.abstract_state["params"]
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abs_params))
    grad_fn = jax.value_and_grad(
        lambda p, x, y, r: train_state._loss_and_metrics(setup, p, x, y, r), has_aux=True)
    x = jax.ShapeDtypeStruct((1, *CROP, 3), jnp.float32)
    y = jax.ShapeDtypeStruct((1, *CROP), jnp.int32)
    key = jax.random.PRNGKey(0)
    t = time.perf_counter()
    compiled = jax.jit(grad_fn).lower(abs_params, x, y, key).compile()
    out = {"K": k, "head": head, "kappa": kappa if head == "rankseg" else None,
           "compile_s": round(time.perf_counter() - t, 1), "params_M": n_params / 1e6,
           **memory_numbers(compiled)}
    if run:
        params = train_state.init_state(setup)["params"]
        rng = np.random.default_rng(0)
        img = jnp.asarray(rng.standard_normal((1, *CROP, 3)).astype(np.float32))
        # A few classes per crop in square blocks, as real scenes (ADE20K: ~8-10 per image).
        lab = np.kron(rng.integers(0, k, (4, 4)), np.ones((128, 128), np.int64))
        lab = jnp.asarray(lab[None].astype(np.int32))
        jax.block_until_ready(compiled(params, img, lab, key))  # warm-up
        t = time.perf_counter()
        jax.block_until_ready(compiled(params, img, lab, key))
        out["run_s"] = round(time.perf_counter() - t, 2)
    return out


def worker_loss(k: int, head: str, kappa: int, preset: str) -> dict:
    """value_and_grad of `segmentation_losses` alone w.r.t. the head outputs."""
    import jax
    import jax.numpy as jnp

    from rankseg_jax.train import losses

    c = _config(k, head, kappa, preset)
    grid = tuple(s // c.model.vit.patch_size for s in CROP)
    n_masks = kappa if head == "rankseg" else k
    outs = {"mask_logits": jax.ShapeDtypeStruct((1, n_masks, *grid), jnp.float32)}
    if head == "rankseg":
        outs["image_logits"] = jax.ShapeDtypeStruct((1, k), jnp.float32)

    def loss(o, topk, labels):
        o = dict(o)
        if topk is not None:
            o["topk_index"] = topk
        terms = losses.segmentation_losses(o, labels, c.loss, k, c.data.ignore_index)
        return terms["loss"]

    topk = jax.ShapeDtypeStruct((1, kappa), jnp.int32) if head == "rankseg" else None
    y = jax.ShapeDtypeStruct((1, *CROP), jnp.int32)
    compiled = jax.jit(jax.value_and_grad(loss)).lower(outs, topk, y).compile()
    return {"K": k, "head": head + " (loss only)",
            "kappa": kappa if head == "rankseg" else None, **memory_numbers(compiled)}


def _slope(rows: list[dict], key: str) -> float:
    """Least-squares growth of rows[key] per +1000 classes (nan with fewer than 2 Ks)."""
    ks = [r["K"] for r in rows]
    if len(set(ks)) < 2:
        return float("nan")
    vs = [r[key] for r in rows]
    mk, mv = sum(ks) / len(ks), sum(vs) / len(vs)
    num = sum((a - mk) * (b - mv) for a, b in zip(ks, vs, strict=True))
    slope = 1000 * num / sum((a - mk) ** 2 for a in ks)
    return 0.0 if abs(slope) < 0.05 else slope  # no "-0" for rounding noise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", default="150,847,1284,3688", help="numbers of classes")
    ap.add_argument("--preset", default="b16", help="ViT preset (configs/common.VIT_PRESETS)")
    ap.add_argument("--kappa", default="50,100",
                    help="RankSeg kappas: the first at every K, others only where kappa <= K/8")
    ap.add_argument("--run_ks", default="150",
                    help="Ks for which one compiled step is also executed and timed ('' = none)")
    ap.add_argument("--no_loss_only", action="store_true", help="skip the loss-only rows")
    ap.add_argument("--json", default="", help="also write the rows to this file")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, k, head, kappa, run = args.worker.split(":")
        if kind == "step":
            res = worker_step(int(k), head, int(kappa), args.preset, run == "1")
        else:
            res = worker_loss(int(k), head, int(kappa), args.preset)
        print(json.dumps(res))
        return

    run_ks = {int(v) for v in args.run_ks.split(",") if v}
    kappas = [int(v) for v in args.kappa.split(",")]
    rows = []
    for k in map(int, args.ks.split(",")):
        # kappa=50 always (official); larger kappas only where they are still << K.
        jobs = [("segmenter", 0)] + [("rankseg", kp) for i, kp in enumerate(kappas)
                                     if i == 0 or kp * 8 <= k]
        for head, kappa in jobs:
            kinds = ["step"] + ([] if args.no_loss_only or kappa not in (0, kappas[0])
                                else ["loss"])
            for kind in kinds:
                run = int(kind == "step" and k in run_ks)
                cmd = [sys.executable, __file__, "--preset", args.preset,
                       "--worker", f"{kind}:{k}:{head}:{kappa}:{run}"]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode:
                    sys.exit(f"worker {cmd[-1]} failed:\n{res.stderr[-4000:]}")
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)

    print(f"\nOne 512x512 crop, backbone preset {args.preset}, value_and_grad of the training "
          "loss. K-way float32 logits at 512x512 = K x 1 MiB.\n")
    print("| K | head | kappa | XLA temp (MiB) | args+out+temp (MiB) | GFLOPs | params (M) |"
          " step run (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        kp = r["kappa"] if r["kappa"] else "-"
        run = f"{r['run_s']:.2f}" if "run_s" in r else "-"
        params = f"{r['params_M']:.2f}" if "params_M" in r else "-"
        print(f"| {r['K']} | {r['head']} | {kp} | {r['temp_MiB']:.1f} | {r['total_MiB']:.1f} |"
              f" {r['gflops']:.1f} | {params} | {run} |")

    print("\n| head | kappa | Ks | temp MiB per +1000 classes | total MiB per +1000 classes |"
          " GFLOPs per +1000 classes |")
    print("|---|---|---|---|---|---|")
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["head"], r["kappa"]), []).append(r)
    for (head, kappa), rs in groups.items():
        ks = ",".join(str(r["K"]) for r in rs)
        print(f"| {head} | {kappa or '-'} | {ks} | {_slope(rs, 'temp_MiB'):.0f} |"
              f" {_slope(rs, 'total_MiB'):.0f} | {_slope(rs, 'gflops'):.1f} |")


if __name__ == "__main__":
    main()
