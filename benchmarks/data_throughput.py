"""Train-pipeline throughput on ADE20K-like JPEGs (images/s per worker process).

    python benchmarks/data_throughput.py [--images=48] [--batches=12] [--workers=0,2]

Writes ADE20K-like pairs (JPEG ~512x683 or 683x512 with smooth random content, 8-bit PNG
labels with ~10 regions of ids 0..150) into a temporary folder in the real mmseg layout, then
runs the full train pipeline (decode, label conversion, resize x[0.5, 2), 512x512 crop with
cat_max_ratio, flip, photometric, normalise, pad, batch 8) through `make_train_iterator`.

Reports: the single-thread, single-process rate (= the rate one grain worker process delivers),
per-op costs, and the rate with `data.num_workers` worker processes.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from rankseg_jax.config import base_config  # noqa: E402
from rankseg_jax.data import pipeline as input_pipeline  # noqa: E402
from rankseg_jax.data import transforms
from rankseg_jax.data.registry import get_dataset_info  # noqa: E402
from rankseg_jax.data.sources import FolderSource  # noqa: E402


def write_ade_like(root: pathlib.Path, n: int, seed: int = 0) -> None:
    """Writes n ADE20K-like training pairs under root/images|annotations/training."""
    rng = np.random.default_rng(seed)
    (root / "images/training").mkdir(parents=True)
    (root / "annotations/training").mkdir(parents=True)
    for i in range(n):
        h, w = (512, 683) if i % 3 else (683, 512)
        small = rng.integers(0, 256, (h // 32, w // 32, 3)).astype(np.uint8)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        ids = rng.integers(0, 151, 10).astype(np.uint8)
        cells = rng.integers(0, 10, (h // 64 + 1, w // 64 + 1)).astype(np.uint8)
        label = ids[cv2.resize(cells, (w, h), interpolation=cv2.INTER_NEAREST)]
        cv2.imwrite(str(root / f"images/training/ADE_train_{i:08d}.jpg"), img,
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        Image.fromarray(label, mode="L").save(root / f"annotations/training/ADE_train_{i:08d}.png")


def config_for(root: pathlib.Path, workers: int, threads: int):
    c = base_config()
    c.data.name, c.data.format, c.data.root = "ade20k", "folder", str(root)
    c.data.reduce_zero_label = True
    c.data.num_workers, c.data.read_threads, c.data.prefetch = workers, threads, 2
    c.train.batch_size = 8
    return c


def pipeline_rate(root, workers: int, threads: int, batches: int) -> float:
    """Images/s of make_train_iterator after 2 warm-up batches."""
    it = input_pipeline.make_train_iterator(config_for(root, workers, threads),
                                            process_index=0, process_count=1)
    for _ in range(2):
        next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * 8 / (time.perf_counter() - t)
    if workers:
        it.close()
    return rate


def op_costs(root, n: int) -> dict[str, float]:
    """Mean milliseconds per image of each stage, single thread."""
    src = FolderSource(root, get_dataset_info("ade20k"), "train")
    rng = np.random.default_rng(0)
    cost = dict.fromkeys(["decode", "resize", "crop", "flip", "photometric", "normalize+pad"], 0.0)
    for i in range(n):
        t0 = time.perf_counter()
        ex = src[i % len(src)]
        t1 = time.perf_counter()
        ex = transforms.random_resize(ex, rng, (2048, 512))
        t2 = time.perf_counter()
        ex = transforms.random_crop(ex, rng, (512, 512), 0.75, 255)
        t3 = time.perf_counter()
        ex = transforms.random_flip(ex, rng)
        t4 = time.perf_counter()
        ex = transforms.photometric_distortion(ex, rng)
        t5 = time.perf_counter()
        out = {"image": transforms.normalize(ex["image"], (127.5,) * 3, (127.5,) * 3),
               "label": np.ascontiguousarray(ex["label"])}
        transforms.pad_to(out, (512, 512), 255)
        t6 = time.perf_counter()
        for k, a, b in zip(cost, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6), strict=True):
            cost[k] += (b - a) * 1e3 / n
    return cost


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--workers", default="0,2")
    a = p.parse_args()
    cv2.setNumThreads(1)  # one core per worker: measure the per-process rate honestly
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp) / "ADEChallengeData2016"
        write_ade_like(root, a.images)
        costs = op_costs(root, a.images)
        print("per-image cost, single thread (ms): " +
              ", ".join(f"{k} {v:.1f}" for k, v in costs.items()) +
              f"; total {sum(costs.values()):.1f}")
        for w in (int(x) for x in a.workers.split(",")):
            rate = pipeline_rate(root, w, 1, a.batches)
            label = "in-process, 1 thread" if w == 0 else f"{w} worker processes"
            print(f"pipeline ({label}): {rate:.1f} images/s")


if __name__ == "__main__":
    main()
