"""Dataset evaluation: mIoU/mAcc/aAcc (mmseg 0.17 exact) + RankSeg multi-label metrics.

`evaluate(config, model, workdir)` runs the configured test-time inference (`test.mode`
whole/slide, `test.scales` x `test.flip` averaging of softmax probabilities, see
`inference.py` and docs/evaluation.md) on every image of the split at its original
resolution, accumulates mmseg areas exactly (int64), reduces them across processes, prints
the per-class table and writes JSON + CSV.

Multi-host: process p evaluates examples p, p+P, ... (`make_eval_examples` slices the source);
area totals and multi-label sums are summed with `process_allgather`. Every process must call
`evaluate` (the gather is collective); only process 0 prints and writes files.
"""

from __future__ import annotations

import logging
import os
import time

import grain
import jax
import numpy as np
from tqdm import tqdm

from rankseg_jax.config.schema import ConfigError
from rankseg_jax.data import pipeline as input_pipeline
from rankseg_jax.data import transforms
from rankseg_jax.data.sources import BadExampleError
from rankseg_jax.evaluation import inference, metrics, reports
from rankseg_jax.evaluation import multilabel as multilabel_metrics

_ML_KEYS = ("img_AP", "img_recall", "img_accuracy", "pixel_recall")


def _uses_tta(config) -> bool:
    return tuple(config.test.scales) != (1.0,) or bool(config.test.flip)


class _RawSource:
    """Source wrapper for multi-scale/flip evaluation: yields raw examples; bad ones are None
    under data.bad_example_policy='skip' (evaluation never substitutes an image)."""

    def __init__(self, source, policy: str):
        self.source, self.policy = source, policy

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        try:
            return self.source[index]
        except BadExampleError as e:
            if self.policy == "fail":
                raise
            logging.warning("skipping bad eval example: %s", e)
            return None


def _first_line(e: BaseException, limit: int = 300) -> str:
    # Some readers (TFDS's "dataset not found") put hundreds of lines into their message.
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {(lines[0] if lines else '')[:limit]}"


def check_ready(config, split: str = "val") -> int:
    """Checks that `evaluate` can run, before a trainer spends hours reaching its first
    evaluation: opens `split`, decodes its first example (the first good one under
    data.bad_example_policy='skip') and applies the test-time transform to it.

    Returns the number of examples. Raises ConfigError naming the split, data.root and the
    cause (a missing folder, an unreadable or empty split, a corrupt first file).
    """
    d = config.data
    where = f"the {split!r} split of data.name={d.name!r}" + (
        f" at data.root={d.root!r}" if d.root else "")
    hint = ("; fix the dataset, or set train.eval_every=0 to train without evaluation")
    try:
        source = input_pipeline.make_source(config, split)
        count = len(source)
    except Exception as e:  # any reader error; its cause is chained
        raise ConfigError(f"evaluation cannot open {where} ({_first_line(e)}){hint}") from e
    if count == 0:
        raise ConfigError(f"{where} has no examples{hint}")
    errors = []
    for index in range(count if d.bad_example_policy == "skip" else 1):
        try:
            example = source[index]
        except BadExampleError as e:
            errors.append(e)
            continue
        except Exception as e:
            raise ConfigError(f"evaluation cannot read example {index} of {where} "
                              f"({_first_line(e)}){hint}") from e
        transforms.eval_transform(example, scale=tuple(d.test_scale), mean=tuple(d.mean),
                                  std=tuple(d.std))
        return count
    raise ConfigError(f"evaluation cannot decode {where}: {errors[0]}"
                      + (f" (and {len(errors) - 1} more bad examples)" if len(errors) > 1
                         else "") + hint) from errors[0]


def _examples(config, split: str, p: int, n: int):
    """(iterable of examples, number of examples of this process).

    Single scale: `input_pipeline.make_eval_examples` (image already at the test scale).
    Multi-scale/flip: raw uint8 images ('raw') that `Inferencer.views` resizes per scale.
    """
    source = input_pipeline.make_source(config, split)
    total = len(source) if not config.test.max_images else min(len(source),
                                                                config.test.max_images)
    count = len(range(p, total, n))
    if not _uses_tta(config):
        return input_pipeline.make_eval_examples(config, split, process_index=p,
                                                 process_count=n), count
    ds = grain.MapDataset.source(_RawSource(source, config.data.bad_example_policy))
    ds = ds[:total][p::n].filter(lambda ex: ex is not None)
    ds = ds.map(lambda ex: {"raw": ex["image"], "label": ex["label"], "name": ex["name"]})
    d = config.data
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=d.read_threads,
                                                prefetch_buffer_size=d.prefetch)), count


def _label_histogram(label: np.ndarray, num_classes: int) -> np.ndarray:
    """[1, K] pixel count per class (ignore and out-of-range values not counted)."""
    flat = label.reshape(-1)
    flat = flat[(flat >= 0) & (flat < num_classes)]
    return np.bincount(flat, minlength=num_classes)[None].astype(np.int64)


def allgather_sum(vec: np.ndarray) -> np.ndarray:
    """Sums a 1-D int64 vector over all processes (identity on one process).

    JAX arrays are int32 without x64, so each value travels as two int32 halves (exact for
    counts below 2^62).
    """
    if jax.process_count() == 1:
        return vec
    from jax.experimental import multihost_utils

    v = np.asarray(vec, np.int64)
    halves = np.stack([v >> 31, v & (2**31 - 1)]).astype(np.int32)
    g = np.asarray(multihost_utils.process_allgather(halves)).astype(np.int64)  # [P, 2, n]
    return (g[:, 0] << 31).sum(0) + g[:, 1].sum(0)


def reduce_totals(acc: metrics.SegMetricAccumulator,
                  mla: multilabel_metrics.MultiLabelMetricAccumulator, n_images: int
                  ) -> tuple[metrics.Areas, multilabel_metrics.MultiLabelMetricAccumulator, int]:
    """Cross-process sums of the area totals, multi-label (sum, count) pairs and image count.

    Multi-label sums are per-image values in [0, 1]; they travel as fixed point (1e-9) so
    the integer gather above can carry them exactly enough. Returns (all-process area
    totals, a new accumulator holding the all-process multi-label sums, image count).
    """
    k = acc.num_classes
    areas = np.concatenate([np.asarray(a, np.int64) for a in acc.totals])
    sums = np.array([round(mla.sums.get(key, 0.0) * 1e9) for key in _ML_KEYS], np.int64)
    counts = np.array([mla.counts.get(key, 0) for key in _ML_KEYS], np.int64)
    vec = allgather_sum(np.concatenate([areas, sums, counts, [n_images, int(mla.any_gt)]]))
    totals = metrics.Areas(*vec[: 4 * k].reshape(4, k))
    m = len(_ML_KEYS)
    # The all-process totals go through the accumulator's own means (and its official
    # "recall is 1 when no image has a GT class" rule); every process fills all keys, so
    # the result does not depend on which process saw which image.
    out = multilabel_metrics.MultiLabelMetricAccumulator()
    out.sums = {key: float(v) for key, v in zip(_ML_KEYS, vec[4 * k: 4 * k + m] / 1e9,
                                                strict=True)}
    out.counts = {key: int(v) for key, v in zip(_ML_KEYS, vec[4 * k + m: 4 * k + 2 * m],
                                                strict=True)}
    out.any_gt = bool(vec[-1])
    return totals, out, int(vec[-2])


def multilabel_results(mla: multilabel_metrics.MultiLabelMetricAccumulator) -> dict:
    """The reported multi-label metrics of reduced sums: img_AP, img_recall, img_precision
    (precision@kappa) and pixel_recall."""
    out = mla.compute()
    out["img_precision"] = out.pop("img_accuracy")
    return out


def evaluate(config, model, workdir=None, *, step=None, split="val") -> dict:
    """Evaluates `model` on `split` of `config.data` with the `config.test` inference.

    Args:
      config: full config (data.*, model.*, test.*).
      model: a `Segmentor` (eval mode is implied; dropout is off).
      workdir: where `eval_<split>[_step<step>].{json,csv}` go (process 0); None = no files.
      step: training step, recorded in the files and their names.
      split: dataset split name.
    Returns:
      dict with 'mIoU', 'mAcc', 'aAcc' (fractions), per-class 'IoU', 'Acc' ([K] float64,
      NaN where 0/0), 'class_names', the mmseg 'area_*' totals, multi-label metrics of
      RankSeg heads ('img_AP' sample-averaged ranking AP over the full ranking, 'img_recall'
      and 'img_precision' of the top-kappa, 'pixel_recall'), 'num_images', 'images_per_s'.
      Mask2Former models (`model.arch='mask2former'`) are evaluated by
      `mask_former_evaluate.evaluate` (official per-image inference, PQ); see there.
    """
    if config.model.arch == "mask2former":
        from rankseg_jax.evaluation import mask_former_evaluate

        return mask_former_evaluate.evaluate(config, model, workdir, step=step, split=split)
    info = input_pipeline.dataset_info(config)
    k = config.model.num_classes
    p, n = jax.process_index(), jax.process_count()
    engine = inference.Inferencer(config, model)
    examples, count = _examples(config, split, p, n)
    acc = metrics.SegMetricAccumulator(k)
    mla = multilabel_metrics.MultiLabelMetricAccumulator()
    seen = 0
    start = time.perf_counter()
    bar = tqdm(total=count, unit="img", desc=f"eval {split}", disable=p != 0, smoothing=0.1)
    for ex in examples:
        label = np.asarray(ex["label"])
        views = engine.views(ex["raw"]) if "raw" in ex else [(ex["image"], False)]
        hist = _label_histogram(label, k)
        gt = (hist[0] > 0).astype(np.float32) if model.use_oracle_eval else None
        res = engine.predict(views, label.shape, gt)
        acc.update(metrics.intersect_and_union_np(res.pred, label, k, info.ignore_index))
        if res.topk is not None:
            ranking = np.argsort(-res.image_logits, kind="stable")[None]
            mla.update(multilabel_metrics.multilabel_metrics_per_image(
                hist, res.topk[None], ranking))
        seen += 1
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - start
    totals, mla, n_images = reduce_totals(acc, mla, seen)
    out = metrics.compute_metrics(totals, class_names=info.class_names)
    if model.is_rankseg:
        out.update(multilabel_results(mla))
    out.update(num_images=n_images, seconds=seconds, images_per_s=seen / max(seconds, 1e-9))
    if p == 0:
        _report(config, out, workdir, step, split)
    return out


def _report(config, out: dict, workdir, step, split) -> None:
    """Console table (+ multi-label line) and, with a workdir, JSON + CSV files."""
    lines = [reports.format_table(out)]
    ml = {key: out[key] for key in ("img_AP", "img_recall", "img_precision", "pixel_recall")
          if key in out}
    if ml:
        lines.append("multi-label: " + "  ".join(f"{key}={100 * v:.2f}" for key, v in ml.items()))
    lines.append(f"{out['num_images']} images, {out['images_per_s']:.2f} img/s (process 0)")
    print("\n".join(lines), flush=True)
    if workdir is None:
        return
    os.makedirs(workdir, exist_ok=True)
    stem = f"eval_{split}" + ("" if step is None else f"_step{int(step)}")
    t = config.test
    extra = {"split": split, "step": None if step is None else int(step),
             "num_images": out["num_images"], "images_per_s": out["images_per_s"],
             "test": {"mode": t.mode, "crop_size": list(t.crop_size), "stride": list(t.stride),
                      "scales": list(t.scales), "flip": bool(t.flip),
                      "memory_light": bool(t.memory_light)},
             "multilabel": {key: reports.json_number(v) for key, v in ml.items()}}
    reports.write_metrics_json(os.path.join(workdir, stem + ".json"), out, extra=extra)
    reports.write_metrics_csv(os.path.join(workdir, stem + ".csv"), out)
