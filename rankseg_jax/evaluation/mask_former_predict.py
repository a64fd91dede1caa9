"""Mask2Former(+RankSeg) prediction on image files (`predict.predict` for
`model.arch='mask2former'`).

Every image of `input_path` (a file or a folder) is decoded by the project's one decoder
(`data/decode.py`, EXIF orientation applied), run through the official test path
(`mask_former_engine.MaskFormerInferencer`: short side to min(data.test_scale), long side at
most max(data.test_scale), padded to 32, batch 1; with `test.aug_min_sizes` the official
multi-scale + flip average, which has no ranking, so no `_scores.png`) and written at its own
size, as `<out>/<stem>_*` (input naming and ground truth lookup as `predict.py`):
* `_labels.png`: the semantic prediction (`sem_seg.argmax(0)`; with semantic_on=False the
  class of each panoptic segment, void = 255) as a palette PNG (`visualize.write_label_pngs`);
* `_panel.png`: image | prediction | ground truth (with `label_dir`), legend of the classes;
* `_scores.png` (RankSeg models): the Fig. 1 chart of the multi-label ranking;
* panoptic_on: `<out>/panoptic/<stem>.png`, the COCO panoptic PNG (id = R + 256 G + 256^2 B),
  `<out>/panoptic.json` ({'annotations': one per image with image_id = file_name stem =
  `<stem>`, 'categories'}: what panopticapi's `pq_compute` reads, category ids mapped to the
  dataset's), and `_panoptic.png`: image | panoptic overlay (stuff in its class colour,
  instances in shades of theirs, white boundaries; `panoptic_visualize.py`) with a legend of
  the segments.
Thing classes are the dataset's (`DatasetInfo.thing_classes`); a dataset without a thing/stuff
split (e.g. the semantic synthetic data) makes every segment stuff (one segment per class).

The `-gt` oracle (`model.mask2former.gt_oracle`) needs the ground-truth classes of each image:
they come from `label_dir` (the classes of the label map), which is then required; an image
without a usable label is skipped and reported.
"""

from __future__ import annotations

import logging
import os
import pathlib

import numpy as np

from rankseg_jax.data import pipeline as input_pipeline
from rankseg_jax.data.panoptic import IGNORE_INDEX
from rankseg_jax.evaluation import panoptic_visualize, visualize
from rankseg_jax.evaluation import predict as seg_predict
from rankseg_jax.evaluation.mask_former_engine import MaskFormerInferencer
from rankseg_jax.evaluation.mask_former_evaluate import PanopticWriter

log = logging.getLogger(__name__)


def semantic_from_segments(panoptic_seg: np.ndarray, segments_info) -> np.ndarray:
    """int32 [H, W]: each pixel's segment class, void (and ids without a segment) 255."""
    table = np.full(max([0, *(int(s["id"]) for s in segments_info)]) + 1, IGNORE_INDEX,
                    np.int32)
    for s in segments_info:
        table[int(s["id"])] = int(s["category_id"])
    ids = np.asarray(panoptic_seg)
    return np.where(ids < len(table), table[np.minimum(ids, len(table) - 1)], IGNORE_INDEX)


def predict(config, model, input_path, output_dir, *, label_dir=None) -> list[str]:
    """Predicts every image of `input_path` into `output_dir` (module doc).

    Args:
      config: full config (model.*, data.{test_scale, mean, std, name} for sizing, palette and
        thing classes, test.size_bucket).
      model: a `MaskFormer`.
      input_path: an image file or a folder (unreadable files of a folder are reported and
        skipped; a single unreadable file raises naming it).
      output_dir: created if needed.
      label_dir: optional folder of semantic ground-truth labels in the dataset's format
        (required for the `-gt` oracle).
    Returns:
      Paths of the written files, in order (the panoptic JSON last). Prints a summary.
    """
    info = input_pipeline.dataset_info(config)
    k = config.model.num_classes
    input_path, out_dir = pathlib.Path(input_path), pathlib.Path(output_dir)
    files = seg_predict.list_inputs(input_path)
    stems = seg_predict.output_stems(files)
    engine = MaskFormerInferencer(config, model, info.thing_classes)
    if engine.gt_oracle and label_dir is None:
        raise ValueError("model.mask2former.gt_oracle (the -gt oracle) predicts with the "
                         "ground-truth classes of each image: pass label_dir (--labels)")
    if engine.panoptic_on and not info.thing_classes:
        log.warning("dataset %r has no thing classes: every panoptic segment is stuff",
                    info.name)
    single = input_path.is_file()
    out_dir.mkdir(parents=True, exist_ok=True)
    palette = np.asarray(info.palette, np.uint8)
    kappa = config.model.rankseg.topk
    writer = (PanopticWriter(out_dir / "panoptic", out_dir / "panoptic.json", info)
              if engine.panoptic_on else None)
    tally = seg_predict.Tally()
    written: list[str] = []
    for path, stem, image, gt in seg_predict.read_inputs(files, stems, single, tally,
                                                         label_dir, info):
        if engine.gt_oracle and gt is None:
            tally.skipped.append(f"{path}: the -gt oracle needs its ground truth")
            continue
        tally.images += 1
        tally.with_gt += gt is not None
        gt_present = None if gt is None else visualize.class_areas(gt, k) > 0
        res = engine.predict(image, gt_present.astype(np.float32) if engine.gt_oracle
                             else None)
        sem = res.sem if res.sem is not None else semantic_from_segments(res.panoptic,
                                                                         res.segments_info)
        base = os.fspath(out_dir / stem)
        files_out = seg_predict.semantic_outputs(
            base, path, image, sem, gt, gt_present,
            res.image_logits if res.topk is not None else None, kappa, palette,
            info.class_names)
        title = f"{path.name} ({image.shape[0]}x{image.shape[1]})"
        if writer is not None:
            writer.write(stem, res.panoptic, res.segments_info)
            files_out["panoptic"] = [os.fspath(writer.folder / f"{stem}.png")]
            fig = panoptic_visualize.panoptic_figure(image, res.panoptic, res.segments_info,
                                                     palette, info.class_names, title)
            files_out["panoptic_panel"] = [visualize.save(fig, f"{base}_panoptic.png")]
        for kind, paths in files_out.items():
            tally.add(kind, paths)
            written += paths
    more = {}
    if writer is not None:
        writer.close()
        written.append(os.fspath(writer.json_path))
        more = {"panoptic": f"COCO panoptic PNGs (segments in {writer.json_path})",
                "panoptic_panel": "panoptic panels (image | segments)"}
    print(seg_predict.summary(tally, input_path, out_dir, kappa, label_dir is not None, more),
          flush=True)
    return written
