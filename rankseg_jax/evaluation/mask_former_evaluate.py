"""Mask2Former(+RankSeg) dataset evaluation: mIoU, PQ / SQ / RQ and RankSeg multi-label metrics.

`evaluate(config, model, workdir)` (reached through `evaluate.evaluate` for
`model.arch='mask2former'`) runs the official test path on every image of the split, one image
at a time as the official batch-1 test loader (`mask_former_engine.MaskFormerInferencer`), and
accumulates, per `model.mask2former`:
* semantic_on: mIoU / mAcc / aAcc of `sem_seg.argmax(0)` against the semantic label (mmseg
  areas, int64). Classes predicted but absent from the labels count as IoU 0, as in the
  detectron2 v0.6 release the official runs used (`sem_seg_evaluation.py`; later detectron2
  versions leave them out);
* panoptic_on, on datasets with panoptic annotations (`data/panoptic.py` examples: 'panoptic'
  + 'segments_info'): PQ / SQ / RQ for All, Things and Stuff with panopticapi's rules
  (`panoptic_quality.py`: IoU > 0.5 matching, void and crowd handling, GT JSON areas);
  panoptic_on on a dataset without them (e.g. the semantic synthetic data) evaluates the
  semantic side only and says so;
* RankSeg models: `img_AP` over the full class ranking, `img_recall` and `img_precision` of the
  top-kappa against the image's ground-truth class set (`train_net.py:94-124`), plus
  `pixel_recall` (the share of labelled pixels whose class is in the top-kappa).

The ground-truth class set (`gt_classes`) is what the official test mapper attaches
(`detectron2_custom.py:189-208`): the categories of the non-crowd segments of the panoptic
annotation; for semantic datasets the classes of the label map at its original size (the
official mapper takes them from the label resized with the image, so tiny classes can vanish
there; not reproduced). It feeds the multi-label metrics and the `-gt` oracle's forward, and
nothing else: plain and RankSeg predictions never see ground truth.

Multi-host: process p evaluates examples p, p+P, ... of the split; area totals, PQ counts
(exact integers) and multi-label sums are summed with `evaluate.allgather_sum`, so the result
does not depend on the process count. Every process must call `evaluate`; process 0 prints the
tables and writes `eval_<split>[_step<N>].{json,csv}` (semantic, with the multi-label and PQ
summaries under 'extra') and `eval_<split>[_step<N>]_pq.{json,csv}` (PQ per class with
things/stuff). With `test.save_panoptic` each process also writes its panoptic predictions in
COCO panoptic format (`panoptic_io`): `eval_<split>[_step<N>]_panoptic/<name>.png` and
`eval_<split>[_step<N>]_panoptic.json` (`..._panoptic.p<i>.json` per process when there are
several).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import time

import grain
import jax
import numpy as np
from tqdm import tqdm

from rankseg_jax.data import pipeline as input_pipeline
from rankseg_jax.data.panoptic import PanopticArrayRecordSource, PanopticFolderSource
from rankseg_jax.evaluation import evaluate as seg_evaluate
from rankseg_jax.evaluation import metrics, panoptic_io, panoptic_quality, reports
from rankseg_jax.evaluation import multilabel as multilabel_metrics
from rankseg_jax.evaluation.mask_former_engine import MaskFormerInferencer

log = logging.getLogger(__name__)

_PQ_KEYS = {"All": "", "Things": "_th", "Stuff": "_st"}


# --------------------------------------------------------------------------- data


def eval_source(config, split: str):
    """The random-access source of `split`: panoptic datasets (registry `is_panoptic`) read
    with their panoptic annotations (`data/panoptic.py`), every other one through
    `pipeline.make_source`."""
    info = input_pipeline.dataset_info(config)
    d = config.data
    if info.is_panoptic and d.format in ("folder", "array_record"):
        if not d.root:
            raise ValueError(f"data.root is empty; data.format={d.format!r} needs a dataset "
                             "root")
        cls = PanopticFolderSource if d.format == "folder" else PanopticArrayRecordSource
        return cls(d.root, info, split)
    return input_pipeline.make_source(config, split)


def source_info(config, source):
    """The `DatasetInfo` of a source (its own `.info` when it has one, e.g. the panoptic and
    synthetic panoptic sources), else the registry's for the config."""
    info = getattr(source, "info", None)
    return info if info is not None else input_pipeline.dataset_info(config)


def eval_examples(config, source, process_index: int = 0, process_count: int = 1):
    """(iterable of raw examples of process p: indices p, p+P, ... of the first
    `test.max_images`, number of them). Bad examples raise under
    data.bad_example_policy='fail' and are logged and left out under 'skip'."""
    t = config.test
    total = len(source) if not t.max_images else min(len(source), t.max_images)
    count = len(range(process_index, total, process_count))
    ds = grain.MapDataset.source(seg_evaluate._RawSource(source,
                                                         config.data.bad_example_policy))
    ds = ds[:total][process_index::process_count].filter(lambda ex: ex is not None)
    d = config.data
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=d.read_threads,
                                                prefetch_buffer_size=d.prefetch)), count


def gt_classes(example: dict, num_classes: int) -> np.ndarray:
    """The image's ground-truth class set, bool [K] (module doc): non-crowd segment categories
    of a panoptic example, else the classes of its label map."""
    present = np.zeros(num_classes, bool)
    if "segments_info" in example:
        cats = [int(s["category_id"]) for s in example["segments_info"]
                if not int(s.get("iscrowd", 0))]
        present[cats] = True
        return present
    present[:] = seg_evaluate._label_histogram(np.asarray(example["label"]), num_classes)[0] > 0
    return present


# --------------------------------------------------------------------------- accumulation


@dataclasses.dataclass
class EvalTotals:
    """Sums of one process (or, after `reduce`, of all): mmseg areas, PQ counts, multi-label
    (sum, count) pairs, the number of images and of images with panoptic ground truth."""

    seg: metrics.SegMetricAccumulator
    pq: panoptic_quality.PQAccumulator
    ml: multilabel_metrics.MultiLabelMetricAccumulator
    images: int = 0
    panoptic_images: int = 0

    @classmethod
    def empty(cls, info) -> EvalTotals:
        """Zero totals for the dataset `info` (K classes, its thing classes and names)."""
        k = info.num_classes
        return cls(metrics.SegMetricAccumulator(k),
                   panoptic_quality.PQAccumulator(k, info.thing_classes, info.class_names),
                   multilabel_metrics.MultiLabelMetricAccumulator())

    def merge(self, other: EvalTotals) -> EvalTotals:
        """Adds another process's totals (what `reduce` does across hosts)."""
        self.seg.merge(other.seg)
        self.pq.merge(other.pq)
        self.ml.merge(other.ml)
        self.images += other.images
        self.panoptic_images += other.panoptic_images
        return self

    def reduce(self) -> EvalTotals:
        """All-process totals (collective: every process calls it). Integer counts are exact;
        multi-label sums travel as 1e-9 fixed point (`evaluate.reduce_totals`)."""
        areas, ml, images = seg_evaluate.reduce_totals(self.seg, self.ml, self.images)
        seg = metrics.SegMetricAccumulator(self.seg.num_classes)
        seg.totals = areas
        pq = panoptic_quality.PQAccumulator(self.pq.num_categories,
                                            np.flatnonzero(self.pq.isthing),
                                            self.pq.class_names)
        vec = seg_evaluate.allgather_sum(np.concatenate(
            [*(np.asarray(t, np.int64) for t in self.pq.totals), [self.panoptic_images]]))
        k = self.pq.num_categories
        pq.totals = panoptic_quality.PQStats(*vec[:-1].reshape(5, k))
        pq.num_images = int(vec[-1])
        return EvalTotals(seg, pq, ml, images, int(vec[-1]))


class PanopticWriter:
    """Writes panoptic predictions in COCO panoptic format: `<folder>/<name>.png` per image
    and, on `close`, `json_path` {'annotations', 'categories'} (category ids through
    `info.category_ids`, identity for datasets without them)."""

    def __init__(self, folder, json_path, info):
        self.folder, self.json_path = pathlib.Path(folder), pathlib.Path(json_path)
        k = info.num_classes
        self.category_map = tuple(info.category_ids) or tuple(range(k))
        things = set(info.thing_classes)
        self.categories = [{"id": int(self.category_map[i]), "name": info.class_names[i],
                            "isthing": int(i in things)} for i in range(k)]
        self.annotations: list[dict] = []

    def write(self, name: str, panoptic_seg: np.ndarray, segments_info: list) -> None:
        """Writes one image's PNG (image_id = file stem = `name`)."""
        self.annotations.append(panoptic_io.write_panoptic_prediction(
            self.folder, name, name, panoptic_seg, segments_info, self.category_map))

    def close(self) -> None:
        """Writes the predictions JSON."""
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        panoptic_io.write_predictions_json(self.json_path, self.annotations,
                                           categories=self.categories)


def evaluate_example(engine: MaskFormerInferencer, example: dict, totals: EvalTotals,
                     ignore_index: int, writer: PanopticWriter | None = None) -> None:
    """Predicts one raw example ({'image' uint8 [H, W, 3], 'label' int [H, W], 'name', and for
    panoptic data 'panoptic' + 'segments_info'}) and adds it to `totals`."""
    k = totals.seg.num_classes
    label = np.asarray(example["label"])
    present = gt_classes(example, k)
    res = engine.predict(np.asarray(example["image"]),
                         present.astype(np.float32) if engine.gt_oracle else None)
    if res.sem is not None:
        totals.seg.update(metrics.intersect_and_union_np(res.sem, label, k, ignore_index))
    if res.topk is not None:
        ranking = np.argsort(-res.image_logits, kind="stable")[None]
        per = multilabel_metrics.multilabel_metrics_per_image(
            present[None].astype(np.int64), res.topk[None], ranking)
        per["pixel_recall"] = multilabel_metrics.pixel_recall_per_image(
            seg_evaluate._label_histogram(label, k), res.topk[None])
        totals.ml.update(per)
    if res.panoptic is not None:
        if writer is not None:
            writer.write(str(example["name"]), res.panoptic, res.segments_info)
        if "panoptic" in example:
            totals.pq.update(panoptic_quality.pq_image_stats(
                example["panoptic"], panoptic_quality.segment_table(example["segments_info"]),
                res.panoptic, panoptic_quality.segment_table(res.segments_info), k))
            totals.panoptic_images += 1
    totals.images += 1


def accumulate(engine: MaskFormerInferencer, examples, info, *, writer=None,
               progress=None) -> EvalTotals:
    """Sums of `evaluate_example` over an iterable of raw examples (one process's share);
    `progress`: optional object with `update(1)` (a tqdm bar)."""
    totals = EvalTotals.empty(info)
    for ex in examples:
        evaluate_example(engine, ex, totals, info.ignore_index, writer)
        if progress is not None:
            progress.update(1)
    return totals


# --------------------------------------------------------------------------- results


def results(totals: EvalTotals, *, semantic: bool, rankseg: bool) -> dict:
    """Metrics of (reduced) totals.

    Returns a dict with, when `semantic`, the `metrics.compute_metrics` entries ('mIoU',
    'mAcc', 'aAcc', per-class 'IoU', 'Acc', 'class_names', areas); when `rankseg`, 'img_AP',
    'img_recall', 'img_precision', 'pixel_recall'; when any image had panoptic ground truth,
    'PQ', 'SQ', 'RQ', 'PQ_th', ..., 'RQ_st' (fractions) and 'panoptic' (the full
    `panoptic_quality.compute_pq` dict); and 'num_images', 'num_panoptic_images'.
    """
    out: dict = {}
    if semantic:
        out.update(metrics.compute_metrics(totals.seg.totals,
                                           class_names=totals.pq.class_names))
    if rankseg:
        out.update(seg_evaluate.multilabel_results(totals.ml))
    if totals.panoptic_images:
        pq = totals.pq.compute()
        out["panoptic"] = pq
        for group, suffix in _PQ_KEYS.items():
            out.update({f"{key.upper()}{suffix}": pq[group][key] for key in ("pq", "sq", "rq")})
    out.update(num_images=totals.images, num_panoptic_images=totals.panoptic_images)
    return out


def _stem(split: str, step) -> str:
    return f"eval_{split}" + ("" if step is None else f"_step{int(step)}")


def evaluate(config, model, workdir=None, *, step=None, split="val", source=None) -> dict:
    """Evaluates a `MaskFormer` on `split` of `config.data` (module doc).

    Args:
      config: full config (data.*, model.*, test.max_images, test.size_bucket,
        test.save_panoptic).
      model: a `MaskFormer` (deterministic inference; no ground truth except the `-gt` oracle).
      workdir: where the report files go (process 0); None = no files.
      step: training step, recorded in the files and their names.
      split: dataset split name.
      source: optional random-access source to evaluate instead of the config's dataset (its
        `.info` gives classes, things and names when it has one).
    Returns:
      `results(...)` plus 'seconds' and 'images_per_s' (process 0's rate).
    """
    source = eval_source(config, split) if source is None else source
    info = source_info(config, source)
    p, n = jax.process_index(), jax.process_count()
    engine = MaskFormerInferencer(config, model, info.thing_classes)
    examples, count = eval_examples(config, source, p, n)
    writer = None
    if config.test.save_panoptic and engine.panoptic_on and workdir is not None:
        stem = _stem(split, step)
        name = f"{stem}_panoptic" + ("" if n == 1 else f".p{p}") + ".json"
        writer = PanopticWriter(os.path.join(workdir, f"{stem}_panoptic"),
                                os.path.join(workdir, name), info)
    start = time.perf_counter()
    bar = tqdm(total=count, unit="img", desc=f"eval {split}", disable=p != 0, smoothing=0.1)
    local = accumulate(engine, examples, info, writer=writer, progress=bar)
    bar.close()
    if writer is not None:
        writer.close()
    seconds = time.perf_counter() - start
    totals = local.reduce()
    if engine.panoptic_on and not totals.panoptic_images and p == 0:
        log.warning("model.mask2former.panoptic_on, but dataset %r has no panoptic "
                    "annotations: PQ is not computed", info.name)
    # Under test-time augmentation only `sem_seg` is predicted (as officially): no ranking.
    out = results(totals, semantic=engine.semantic_on,
                  rankseg=engine.is_rankseg and not engine.tta)
    out.update(seconds=seconds, images_per_s=local.images / max(seconds, 1e-9))
    if p == 0:
        _report(config, out, workdir, step, split)
    return out


def _report(config, out: dict, workdir, step, split) -> None:
    """Console tables (semantic, multi-label line, PQ) and, with a workdir, JSON + CSV files."""
    lines = []
    if "mIoU" in out:
        lines.append(reports.format_table(out))
    ml = {key: out[key] for key in ("img_AP", "img_recall", "img_precision", "pixel_recall")
          if key in out}
    if ml:
        lines.append("multi-label: " + "  ".join(f"{key}={100 * v:.2f}" for key, v in ml.items()))
    pq = out.get("panoptic")
    if pq is not None:
        lines.append(panoptic_quality.format_pq_table(pq))
    lines.append(f"{out['num_images']} images, {out['images_per_s']:.2f} img/s (process 0)")
    print("\n".join(lines), flush=True)
    if workdir is None:
        return
    os.makedirs(workdir, exist_ok=True)
    stem = os.path.join(workdir, _stem(split, step))
    mf = config.model.mask2former
    extra = {"split": split, "step": None if step is None else int(step),
             "num_images": out["num_images"], "images_per_s": out["images_per_s"],
             "test": {"min_size": min(config.data.test_scale),
                      "max_size": max(config.data.test_scale),
                      "size_divisibility": mf.size_divisibility,
                      "aug_min_sizes": list(config.test.aug_min_sizes),
                      "aug_max_size": config.test.aug_max_size, "flip": bool(config.test.flip),
                      "semantic_on": bool(mf.semantic_on), "panoptic_on": bool(mf.panoptic_on),
                      "object_mask_threshold": mf.object_mask_threshold,
                      "overlap_threshold": mf.overlap_threshold},
             "multilabel": {key: reports.json_number(v) for key, v in ml.items()}}
    if pq is not None:
        extra["panoptic"] = {g: {k: reports.json_number(v) if k != "n" else v
                                 for k, v in pq[g].items()} for g in _PQ_KEYS}
        extra["num_panoptic_images"] = out["num_panoptic_images"]
        panoptic_quality.write_pq_json(stem + "_pq.json", pq, extra=extra)
        panoptic_quality.write_pq_csv(stem + "_pq.csv", pq)
    if "mIoU" in out:
        reports.write_metrics_json(stem + ".json", out, extra=extra)
        reports.write_metrics_csv(stem + ".csv", out)
