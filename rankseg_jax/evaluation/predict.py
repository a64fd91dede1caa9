"""Prediction on image files: readable label maps, panels and the Fig. 1 score chart.

`predict(config, model, input_path, output_dir, label_dir=None)` accepts one image or a
folder of images (any format OpenCV reads). Images are decoded by the project's one decoder
(`data/decode.py`: EXIF orientation applied, as in training and evaluation), keep-ratio
resized to the test scale (and the `test.scales` / `test.flip` augmentations), inferred with
the configured whole/slide mode and resized back to their own size (`inference.Inferencer`).

Written per image, `<out>/<stem>_*` (drawing in `visualize.py`):
* `_labels.png`: the predicted training ids, a palette PNG (mode 'P': ids as indices, the
  dataset's colours attached) when K <= 256; for K > 256 a 16-bit grayscale PNG of the ids
  plus `_labels_color.png`;
* `_panel.png`: image | prediction | ground truth (with `label_dir`), legend of the classes
  present in either;
* `_scores.png` (RankSeg models): the top-20 classes by multi-label score with the kappa cut
  (paper Fig. 1); with `label_dir`, true positives in black and their map colour, false
  positives in red.
A summary of what was written (counts and paths) is printed at the end.

Output names: `<stem>` is the input file's stem. Two inputs with the same stem (`same.jpg`,
`same.png`) would overwrite each other's outputs, so such inputs keep their extension in the
stem (`same_jpg_*`, `same_png_*`); if names still clash, `predict` refuses before any work
with an error listing them.

Ground truth: `label_dir` holds label files in the dataset's format, found by image stem:
`<stem><data label_suffix>` (e.g. `_labelTrainIds.png`), else `<stem>.<any extension>`.
They are converted to training ids exactly as the dataset sources do (reduce_zero_label,
16-bit reading). A missing, unreadable or differently sized label is reported and that image
is drawn without ground truth.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib

import numpy as np

from rankseg_jax.data import pipeline as input_pipeline
from rankseg_jax.data.decode import BadExampleError, read_image_file
from rankseg_jax.data.sources import decode_label
from rankseg_jax.evaluation import inference, visualize

log = logging.getLogger(__name__)


def list_inputs(input_path: pathlib.Path) -> list[pathlib.Path]:
    if input_path.is_dir():
        return sorted(p for p in input_path.iterdir() if p.is_file() and not p.name.startswith("."))
    if input_path.is_file():
        return [input_path]
    raise FileNotFoundError(f"predict input {str(input_path)!r} does not exist")


def output_stems(files: list[pathlib.Path]) -> list[str]:
    """Output name stems, one per input file, never two alike (module doc).

    Files sharing a stem (compared case-insensitively, as some file systems do) get
    `<stem>_<extension>`. Raises ValueError listing the inputs whose names still clash.
    """
    def key(s):
        return s.lower()

    count: dict[str, int] = {}
    for f in files:
        count[key(f.stem)] = count.get(key(f.stem), 0) + 1
    stems = [f"{f.stem}_{f.suffix.lstrip('.')}" if count[key(f.stem)] > 1 else f.stem
             for f in files]
    owners: dict[str, list[str]] = {}
    for f, s in zip(files, stems, strict=True):
        owners.setdefault(key(s), []).append(f.name)
    clashes = [names for names in owners.values() if len(names) > 1]
    if clashes:
        raise ValueError("predict: these inputs would write to the same output names; rename "
                         "one of each group: " + "; ".join(", ".join(c) for c in clashes))
    return stems


def find_label(label_dir: pathlib.Path, stem: str, label_suffix: str) -> pathlib.Path | None:
    """The ground-truth file of image `stem` in `label_dir`, or None (module doc)."""
    exact = label_dir / f"{stem}{label_suffix}"
    if exact.is_file():
        return exact
    hits = sorted(p for p in label_dir.iterdir()
                  if p.is_file() and p.stem == stem and p.suffix)
    return hits[0] if hits else None


@dataclasses.dataclass
class Tally:
    images: int = 0
    with_gt: int = 0
    skipped: list = dataclasses.field(default_factory=list)
    gt_problems: list = dataclasses.field(default_factory=list)
    written: dict = dataclasses.field(default_factory=dict)  # kind -> paths

    def add(self, kind: str, paths: list[str]) -> None:
        self.written.setdefault(kind, []).extend(paths)


def ground_truth(label_dir, stem, shape, info):
    """(gt int32 [H, W] or None, problem message or None)."""
    path = find_label(pathlib.Path(label_dir), stem, info.label_suffix)
    if path is None:
        return None, f"{stem}: no label in {label_dir}"
    try:
        gt = decode_label(path.read_bytes(), info, str(path))
    except BadExampleError as e:
        return None, str(e)
    if gt.shape != shape:
        return None, (f"{path}: label size {gt.shape} != image size {shape} (images are "
                      "decoded with their EXIF orientation applied, labels never)")
    return gt, None


def read_inputs(files, stems, single: bool, tally: Tally, label_dir, info):
    """Yields (path, stem, image uint8 [H, W, 3], gt int32 [H, W] or None) per readable input.

    An unreadable file raises when it is the only input (`single`), else it is logged and
    recorded in `tally.skipped`; a missing or mismatched label is logged and recorded in
    `tally.gt_problems` (gt None). Counting the images is the caller's (it may still skip)."""
    for path, stem in zip(files, stems, strict=True):
        try:
            image = read_image_file(path)
        except BadExampleError as e:
            if single:
                raise
            log.warning("skipping %s", e)
            tally.skipped.append(str(e))
            continue
        gt = None
        if label_dir is not None:
            gt, problem = ground_truth(label_dir, path.stem, image.shape[:2], info)
            if problem:
                log.warning("%s", problem)
                tally.gt_problems.append(problem)
        yield path, stem, image, gt


def semantic_outputs(base: str, path: pathlib.Path, image: np.ndarray, pred: np.ndarray, gt,
                     gt_present, image_logits, kappa: int, palette: np.ndarray,
                     class_names) -> dict[str, list[str]]:
    """Writes the label PNG(s), the panel and (when `image_logits` [K] is given: RankSeg) the
    Fig. 1 score chart of one image under `base`; returns {kind: [paths]}.

    pred / gt: int32 [H, W] class ids (gt may be None); gt_present: bool [K] or None."""
    title = f"{path.name} ({image.shape[0]}x{image.shape[1]})"
    files_out = {"labels": visualize.write_label_pngs(base, pred, palette)}
    fig = visualize.panel_figure(image, pred, palette, class_names, gt, title)
    files_out["panel"] = [visualize.save(fig, f"{base}_panel.png")]
    if image_logits is not None:
        fig = visualize.score_chart_figure(image_logits, kappa, class_names, palette,
                                           gt_present, title)
        files_out["scores"] = [visualize.save(fig, f"{base}_scores.png")]
    return files_out


def summary(tally: Tally, input_path, out_dir, kappa, has_labels, more=None) -> str:
    """The printed summary; `more`: {kind: description} of further kinds written."""
    lines = [f"predict: {tally.images} image(s) from {input_path} -> {out_dir}"]
    what = {"labels": "label maps (class ids; palette PNG, or 16-bit + colour PNG for K > 256)",
            "panel": "panels (image | prediction" + (" | ground truth)" if has_labels else ")"),
            "scores": f"score charts (top-{visualize.TOP} classes, kappa = {kappa})",
            **(more or {})}
    for kind, text in what.items():
        paths = tally.written.get(kind, [])
        if paths:
            lines.append(f"  {len(paths):4d} {text}, e.g. {paths[0]}")
    if has_labels:
        lines.append(f"  ground truth used for {tally.with_gt} of {tally.images} image(s)")
        lines += [f"    {m}" for m in tally.gt_problems[:10]]
    if tally.skipped:
        lines.append(f"  skipped {len(tally.skipped)} unreadable file(s):")
        lines += [f"    {m}" for m in tally.skipped[:10]]
    return "\n".join(lines)


def predict(config, model, input_path, output_dir, *, label_dir=None) -> list[str]:
    """Predicts every image of `input_path` (a file or a folder) into `output_dir`.

    Args:
      config: full config (model.*, data.* for scale/normalisation/palette, test.*).
      model: a `Segmentor`.
      input_path: an image file, or a folder whose readable images are all predicted
        (unreadable files are reported and skipped there; a single unreadable file raises
        ValueError naming it).
      output_dir: created if needed.
      label_dir: optional folder of ground-truth label files (module doc).
    Returns:
      Paths of the written files, in order. Prints a summary. Mask2Former models
      (`model.arch='mask2former'`) are predicted by `mask_former_predict.predict` (official
      test sizing, semantic and panoptic outputs); see there.
    """
    if config.model.arch == "mask2former":
        from rankseg_jax.evaluation import mask_former_predict

        return mask_former_predict.predict(config, model, input_path, output_dir,
                                           label_dir=label_dir)
    info = input_pipeline.dataset_info(config)
    k = config.model.num_classes
    input_path, out_dir = pathlib.Path(input_path), pathlib.Path(output_dir)
    files = list_inputs(input_path)
    stems = output_stems(files)
    single = input_path.is_file()
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = inference.Inferencer(config, model)
    palette = np.asarray(info.palette, np.uint8)
    kappa = config.model.rankseg.topk
    tally = Tally()
    written: list[str] = []
    for path, stem, image, gt in read_inputs(files, stems, single, tally, label_dir, info):
        tally.images += 1
        tally.with_gt += gt is not None
        gt_present = None if gt is None else visualize.class_areas(gt, k) > 0
        res = engine.predict(engine.views(image), image.shape[:2],
                             gt_present.astype(np.float32) if gt_present is not None
                             and model.use_oracle_eval else None)
        base = os.fspath(out_dir / stem)
        files_out = semantic_outputs(base, path, image, res.pred, gt, gt_present,
                                     res.image_logits if res.topk is not None else None,
                                     kappa, palette, info.class_names)
        for kind, paths in files_out.items():
            tally.add(kind, paths)
            written += paths
    print(summary(tally, input_path, out_dir, kappa, label_dir is not None), flush=True)
    return written
