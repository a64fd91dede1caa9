"""Pictures of predictions: palette label PNGs, image | prediction | ground truth panels, and
the paper's Fig. 1 chart of the image-level class ranking.

Colours are the dataset's palette (`DatasetInfo.palette`, see `data/palettes.py`); ignored
ground-truth pixels are drawn as the image darkened, never in a class colour.

* `write_label_pngs`: the predicted class ids as a PNG that is both data and picture: mode 'P'
  (8-bit indices = class ids, the palette attached) when K <= 256, so any viewer shows colours
  while `np.asarray(Image.open(p))` gives the ids back. K > 256 ids do not fit 8 bits: a 16-bit
  grayscale PNG of the ids plus a separate RGB colour PNG.
* `panel_figure`: the image, the prediction over it, and the ground truth over it (when
  given), with a legend of every class present in either; a class only in the prediction is
  named in red (a false positive), one only in the ground truth is marked "missed".
* `score_chart_figure`: the paper's Fig. 1: the top-20 classes by multi-label score (sigmoid
  of the image logits), bars ranked from the top, the kappa cut marked (below 20 as a line,
  beyond 20 as a note giving kappa and the score at rank kappa, so the chart reads the same at
  kappa = 50 or 100). With ground truth, true positives are named in black with bars in their
  ground-truth-map colour, false positives are named in red with red hatched bars, and the
  ground-truth classes ranked below 20 are listed with their rank; without it nothing is
  marked.
Figures are `matplotlib.figure.Figure`s (no pyplot state), saved by `save`.
"""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image

TOP = 20  # bars of the score chart (paper Fig. 1)
LEGEND_MAX = 30  # legend entries of a panel (by area); the rest are counted
FP_RED = "#d62728"
NEUTRAL = "#8c8c8c"
_ALPHA = 0.75  # class colour weight over the image (the texture stays visible)


# --------------------------------------------------------------------------- label maps


def colourize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Class-id map int [H, W] -> uint8 [H, W, 3] palette colours; ids outside [0, K) black."""
    k = len(palette)
    valid = (label >= 0) & (label < k)
    out = np.asarray(palette, np.uint8)[np.where(valid, label, 0)]
    out[~valid] = 0
    return out


def write_label_pngs(stem: str, pred: np.ndarray, palette: np.ndarray) -> list[str]:
    """Writes the class-id map `pred` int [H, W] of K = len(palette) classes.

    K <= 256: `<stem>_labels.png`, mode 'P' (indices = ids, the palette attached).
    K > 256: `<stem>_labels.png`, 16-bit grayscale ids, and `<stem>_labels_color.png`, RGB.
    Returns the written paths.
    """
    k = len(palette)
    path = f"{stem}_labels.png"
    if k <= 256:
        im = Image.fromarray(pred.astype(np.uint8), mode="P")
        flat = np.zeros((256, 3), np.uint8)
        flat[:k] = palette
        im.putpalette(flat.reshape(-1).tolist())
        im.save(path)
        return [path]
    Image.fromarray(pred.astype(np.uint16)).save(path)  # PIL stores it as I;16
    colour = f"{stem}_labels_color.png"
    Image.fromarray(colourize(pred, palette)).save(colour)
    return [path, colour]


# --------------------------------------------------------------------------- panel


def _boundaries(label: np.ndarray) -> np.ndarray:
    edge = np.zeros(label.shape, bool)
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[1:, :] |= label[1:, :] != label[:-1, :]
    return edge


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """The image with class colours over it: uint8 [H, W, 3].

    Valid ids blend their colour over the image, region boundaries are white, ids outside
    [0, K) (ignore) show the image darkened.
    """
    k = len(palette)
    valid = (label >= 0) & (label < k)
    img = image.astype(np.float32)
    out = np.where(valid[..., None],
                   (1 - _ALPHA) * img + _ALPHA * colourize(label, palette), 0.35 * img)
    out[_boundaries(label)] = 255.0
    return out.astype(np.uint8)


def class_areas(label: np.ndarray | None, k: int) -> np.ndarray:
    """Pixels per class id of an id map (ids outside [0, K) ignored): int64 [K]; zeros for
    None."""
    if label is None:
        return np.zeros(k, np.int64)
    valid = label[(label >= 0) & (label < k)]
    return np.bincount(valid.reshape(-1), minlength=k)


def legend_entries(pred: np.ndarray, gt: np.ndarray | None,
                   num_classes: int) -> list[tuple[int, str]]:
    """Classes present in the prediction or the ground truth, largest total area first.

    Returns [(class id, status)], status 'both', 'pred' (prediction only) or 'gt' (ground
    truth only; without ground truth every class is 'pred').
    """
    area_p, area_g = class_areas(pred, num_classes), class_areas(gt, num_classes)
    ids = np.flatnonzero(area_p + area_g)
    ids = ids[np.argsort(-(area_p + area_g)[ids], kind="stable")]
    status = []
    for c in ids.tolist():
        if gt is None or (area_p[c] and not area_g[c]):
            status.append((c, "pred"))
        elif area_p[c]:
            status.append((c, "both"))
        else:
            status.append((c, "gt"))
    return status


def panel_figure(image: np.ndarray, pred: np.ndarray, palette: np.ndarray,
                 names, gt: np.ndarray | None = None, title: str = ""):
    """Image | prediction | ground truth (if given) with a legend; returns a Figure.

    image: uint8 [H, W, 3]; pred: int [H, W] ids; gt: int [H, W] ids (ignore allowed);
    names: K class names.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    k = len(palette)
    h, w = pred.shape
    views = [("image", image), ("prediction", overlay(image, pred, palette))]
    if gt is not None:
        views.append(("ground truth", overlay(image, gt, palette)))
    entries = legend_entries(pred, gt, k)
    shown, rest = entries[:LEGEND_MAX], len(entries) - LEGEND_MAX
    ncol = 4 if gt is not None else 3  # legend columns
    img_w = 4.2  # inches per view; small images are enlarged (nearest neighbour)
    img_h = img_w * h / w
    rows = -(-(len(shown) + (rest > 0)) // ncol)
    legend_h = 0.15 + 0.22 * rows
    fig = Figure(figsize=(img_w * len(views), img_h + 0.4 + legend_h), dpi=100)
    top = 1 - 0.35 / fig.get_figheight()
    bottom = legend_h / fig.get_figheight()
    for i, (name, view) in enumerate(views):
        ax = fig.add_axes((i / len(views) + 0.005, bottom, 1 / len(views) - 0.01, top - bottom))
        ax.imshow(view, interpolation="nearest")
        ax.set_title(name, fontsize=11)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9, x=0.005, ha="left", y=0.999, va="top")
    handles, colours = [], []
    for c, status in shown:
        label = names[c] + {"both": "", "pred": "", "gt": "  (missed)"}[status]
        if status == "pred" and gt is not None:
            label += "  (not in GT)"
        handles.append(Patch(facecolor=np.asarray(palette[c]) / 255.0, edgecolor="black",
                             linewidth=0.5, label=label))
        colours.append(FP_RED if status == "pred" and gt is not None
                       else "#555555" if status == "gt" else "black")
    if rest > 0:
        handles.append(Patch(facecolor="white", edgecolor="white", label=f"... {rest} more"))
        colours.append("black")
    if handles:
        leg = fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.01, 0.0),
                         ncol=ncol, fontsize=9,
                         frameon=False, handlelength=1.4, columnspacing=1.6)
        for text, colour in zip(leg.get_texts(), colours, strict=True):
            text.set_color(colour)
    return fig


# --------------------------------------------------------------------------- Fig. 1 chart


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def score_chart_figure(image_logits: np.ndarray, kappa: int, names, palette: np.ndarray,
                       gt_present: np.ndarray | None = None, title: str = ""):
    """The Fig. 1 chart (module doc); returns a Figure.

    image_logits: float [K] multi-label logits; kappa: classes kept by the model;
    names: K class names; palette: uint8 [K, 3]; gt_present: optional bool [K], the classes
    in the ground truth.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    k = len(image_logits)
    scores = _sigmoid(image_logits)
    order = np.argsort(-scores, kind="stable")
    top = order[:min(TOP, k)]
    n = len(top)
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(1, k + 1)
    kappa_score = scores[order[min(kappa, k) - 1]]
    lines = [title] if title else []
    lines.append(f"top-{n} of K = {k} classes by multi-label score, κ = {kappa}")
    if kappa >= n:
        lines.append(f"all {n} shown are kept; the κ cut is after rank {min(kappa, k)} "
                     f"(score {kappa_score:.2f})")
    if gt_present is not None:
        gt_ids = np.flatnonzero(gt_present)
        kept = int((rank[gt_ids] <= kappa).sum())
        tp_n = int(gt_present[top].sum())
        lines.append(f"ground truth: {len(gt_ids)} classes, {kept} within κ; top-{n}: {tp_n} "
                     f"true (black), {n - tp_n} false positives (red)")
        below = sorted(gt_ids[rank[gt_ids] > n].tolist(), key=lambda c: rank[c])
        if below:
            shown = ", ".join(f"{names[c]} (#{rank[c]}{', beyond κ' if rank[c] > kappa else ''})"
                              for c in below[:5])
            more = f" and {len(below) - 5} more" if len(below) > 5 else ""
            lines.append(f"ground-truth classes ranked below {n}: {shown}{more}")
    lines = [w for line in lines for w in textwrap.wrap(line, 92, subsequent_indent="    ")]
    # Layout in inches: header lines, the bars, the x axis, the legend (with ground truth).
    head = 0.2 + 0.19 * len(lines)
    bar_h = 0.28 * (n + (kappa >= n)) + 0.1
    foot = 0.55 + 0.3 * (gt_present is not None)
    height = head + bar_h + foot
    fig = Figure(figsize=(7.5, height), dpi=100)
    ax = fig.add_axes((0.3, foot / height, 0.66, bar_h / height))
    y = np.arange(n)
    if gt_present is None:
        face = [NEUTRAL] * n
        hatch, edge, text_colour = [""] * n, ["none"] * n, ["black"] * n
    else:
        tp = gt_present[top].astype(bool)
        face = [np.asarray(palette[c]) / 255.0 if t else "white"
                for c, t in zip(top, tp, strict=True)]
        hatch = ["" if t else "///" for t in tp]
        edge = ["black" if t else FP_RED for t in tp]
        text_colour = ["black" if t else FP_RED for t in tp]
    bars = ax.barh(y, scores[top], color=face, edgecolor=edge, linewidth=0.8)
    for bar, h in zip(bars, hatch, strict=True):
        bar.set_hatch(h)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r + 1}. {names[c]}" for r, c in enumerate(top)], fontsize=9)
    for tick, colour in zip(ax.get_yticklabels(), text_colour, strict=True):
        tick.set_color(colour)
    # Rank 1 at the top; when the cut falls below the chart, one more row holds its mark.
    ax.set_ylim(n - 0.5 + 0.9 * (kappa >= n), -0.5)
    ax.set_xlim(0, 1)
    ax.set_xlabel("multi-label score (sigmoid of the image logit)", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    # The kappa cut: a line between ranks kappa and kappa+1, or, when it falls below the
    # chart, a line at its bottom edge saying so.
    cut_y = min(kappa, n) - 0.5
    ax.axhline(cut_y, color="black", linestyle="--", linewidth=1.4)
    if kappa < n:
        ax.text(0.995, cut_y - 0.05, f"κ = {kappa}: kept ↑  dropped ↓", ha="right",
                va="bottom", fontsize=9, transform=ax.get_yaxis_transform(),
                bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1))
    else:
        note = (f"↓ κ = {kappa}: ranks {n + 1}-{min(kappa, k)} are kept too; the cut is after "
                f"rank {min(kappa, k)}" if min(kappa, k) > n
                else f"κ = {kappa}: all {k} classes are kept (nothing is cut)")
        ax.text(0.5, cut_y + 0.45, note, ha="center", va="center", fontsize=9,
                transform=ax.get_yaxis_transform())
    if gt_present is not None:
        fig.legend(handles=[Patch(facecolor="#bbbbbb", edgecolor="black",
                                  label="in ground truth (bar: its colour in the map)"),
                            Patch(facecolor="white", edgecolor=FP_RED, hatch="///",
                                  label="not in ground truth")],
                   loc="lower center", ncol=2, fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
    fig.text(0.01, 1 - 0.08 / height, "\n".join(lines), ha="left", va="top", fontsize=9,
             linespacing=1.35)
    return fig


def save(fig, path: str) -> str:
    """Saves a Figure as PNG; returns the path."""
    fig.savefig(path)
    return path
