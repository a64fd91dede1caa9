"""Prediction on image files: label maps, colour overlays, and the top-kappa score chart.

`predict(config, model, input_path, output_dir, label_dir=None)` accepts one image or a
folder (any format PIL reads). Each image is keep-ratio resized to the test scale (and the
`test.scales` / `test.flip` augmentations), inferred with the configured whole/slide mode and
resized back to its own size (`inference.Inferencer`). Written per image `<stem>`:

* `<stem>_labels.png`: training-id label map, 8-bit when K <= 256, else 16-bit (PIL 'I;16');
* `<stem>_overlay.png`: image blended with the dataset palette, legend of the classes shown;
* `<stem>_scores.png` (RankSeg): bar chart of the top-kappa sigmoid scores (paper Fig. 1);
  with `label_dir`, bars are green for classes in the ground truth (true positives) and red
  otherwise, and ground-truth classes missed by the top-kappa are listed.

Labels in `label_dir` are found by image stem (any extension) and converted to training ids
exactly as the dataset sources do (reduce_zero_label, 16-bit reading).
"""

from __future__ import annotations

import logging
import os
import pathlib

import numpy as np
from PIL import Image

from rankseg_jax.data import pipeline as input_pipeline
from rankseg_jax.data.sources import _read_raw_label, to_train_ids
from rankseg_jax.evaluation import inference

_LEGEND_MAX = 20  # classes shown in an overlay legend (by area)


def _list_inputs(input_path: pathlib.Path) -> list[pathlib.Path]:
    if input_path.is_dir():
        return sorted(p for p in input_path.iterdir() if p.is_file() and not p.name.startswith("."))
    if input_path.is_file():
        return [input_path]
    raise FileNotFoundError(f"predict input {str(input_path)!r} does not exist")


def read_image(path: pathlib.Path) -> np.ndarray:
    """Reads any PIL-readable image as uint8 [H, W, 3] RGB; raises ValueError naming it."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), np.uint8)
    except Exception as e:  # PIL raises many types for corrupt / non-image files
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def _find_label(label_dir: pathlib.Path, stem: str) -> pathlib.Path | None:
    hits = sorted(p for p in label_dir.glob(stem + ".*") if p.is_file())
    return hits[0] if hits else None


def write_label_png(path: str | os.PathLike, pred: np.ndarray, num_classes: int) -> None:
    """Label map as PNG: uint8 when all ids fit (K <= 256), else 16-bit grayscale."""
    if num_classes <= 256:
        Image.fromarray(pred.astype(np.uint8), mode="L").save(path)
    else:
        Image.fromarray(pred.astype(np.uint16)).save(path)  # PIL stores it as I;16


def _overlay(path, image, pred, palette, names, alpha=0.5) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as mpatches
    import matplotlib.pyplot as plt

    colour = palette[np.clip(pred, 0, len(palette) - 1)]
    blend = (image.astype(np.float32) * (1 - alpha) + colour * alpha).astype(np.uint8)
    ids, area = np.unique(pred, return_counts=True)
    shown = ids[np.argsort(-area, kind="stable")][:_LEGEND_MAX]
    h, w = pred.shape
    # Small images are shown enlarged (at least 4 inches wide); the legend gets 2.5 inches.
    disp_w = max(4.0, w / 100)
    disp_h = max(disp_w * h / w, 0.18 * len(shown) + 0.4)
    fig = plt.figure(figsize=(disp_w + 2.5, disp_h), dpi=100)
    ax = fig.add_axes((0, 0, disp_w / (disp_w + 2.5), 1))
    ax.imshow(blend)
    ax.axis("off")
    handles = [mpatches.Patch(color=palette[c] / 255.0, label=f"{c}: {names[c]}")
               for c in shown]
    fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
    fig.savefig(path)
    plt.close(fig)


def _score_chart(path, scores, topk, names, gt=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = 1.0 / (1.0 + np.exp(-scores[topk].astype(np.float64)))
    if gt is None:
        colours = ["tab:blue"] * len(topk)
    else:
        colours = ["tab:green" if gt[c] else "tab:red" for c in topk]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(topk) + 1.5), 3.5), dpi=100)
    ax.bar(np.arange(len(topk)), probs, color=colours)
    ax.set_xticks(np.arange(len(topk)))
    ax.set_xticklabels([names[c] for c in topk], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("sigmoid score")
    title = f"top-{len(topk)} classes"
    if gt is not None:
        missed = [names[c] for c in np.flatnonzero(gt) if c not in set(topk.tolist())]
        title += (f"\ngreen: in GT, red: not in GT; {int(gt[topk].sum())}/{int(gt.sum())} GT "
                  "classes kept" + (f"\nmissed: {', '.join(missed[:5])}"
                                    + (" ..." if len(missed) > 5 else "") if missed else ""))
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def predict(config, model, input_path, output_dir, *, label_dir=None) -> list[str]:
    """Predicts every image of `input_path` (a file or a folder) into `output_dir`.

    Args:
      config: full config (model.*, data.* for scale/normalisation/palette, test.*).
      model: a `Segmentor`.
      input_path: an image file, or a folder whose readable images are all predicted
        (unreadable files are logged and skipped there; a single unreadable file raises
        ValueError naming it).
      output_dir: created if needed.
      label_dir: optional folder of label files named like the images (by stem).
    Returns:
      Paths of the written files, in order.
    """
    info = input_pipeline.dataset_info(config)
    k = config.model.num_classes
    input_path, out_dir = pathlib.Path(input_path), pathlib.Path(output_dir)
    files = _list_inputs(input_path)
    single = input_path.is_file()
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = inference.Inferencer(config, model)
    palette = np.asarray(info.palette, np.uint8)
    written: list[str] = []
    for path in files:
        try:
            image = read_image(path)
        except ValueError as e:
            if single:
                raise
            logging.warning("skipping %s", e)
            print(f"skipping unreadable file: {e}", flush=True)
            continue
        gt = None
        if label_dir is not None:
            label_path = _find_label(pathlib.Path(label_dir), path.stem)
            if label_path is None:
                logging.warning("no label for %s in %s", path.name, label_dir)
            else:
                label = to_train_ids(_read_raw_label(label_path.read_bytes(), info,
                                                     str(label_path)), info)
                valid = label[(label >= 0) & (label < k)]
                gt = np.bincount(valid.reshape(-1), minlength=k) > 0
        res = engine.predict(engine.views(image), image.shape[:2],
                             gt.astype(np.float32) if gt is not None and
                             model.use_oracle_eval else None)
        stem = out_dir / path.stem
        write_label_png(f"{stem}_labels.png", res.pred, k)
        _overlay(f"{stem}_overlay.png", image, res.pred, palette, info.class_names)
        written += [f"{stem}_labels.png", f"{stem}_overlay.png"]
        if res.topk is not None:
            _score_chart(f"{stem}_scores.png", res.image_logits, res.topk, info.class_names, gt)
            written.append(f"{stem}_scores.png")
    return written
