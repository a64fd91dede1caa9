"""Pictures of panoptic predictions: segment colours, the overlay and the image | panoptic panel.

Colours: a stuff segment takes its class colour (the dataset palette, as the semantic
pictures); the instances of a thing class take the class colour, then alternately lighter and
darker shades of it (instance 0 = the class colour, 1 = lighter, 2 = darker, 3 = lighter
still, ...), so instances of one class are told apart and still read as that class. Segment
boundaries are drawn in white, so touching instances of one class separate even where their
shades are close; void (id 0) shows the image darkened, as ignored pixels do in
`visualize.overlay`.
"""

from __future__ import annotations

import numpy as np

from rankseg_jax.evaluation import visualize

_ALPHA = 0.75  # segment colour weight over the image (as visualize.overlay)
_SHADE_STEP = 0.3  # share of the way to white / black per lighter / darker step


def instance_colour(colour, index: int) -> np.ndarray:
    """Shade `index` (0, 1, 2, ...) of a class colour uint8 [3]: 0 itself, odd lighter, even
    darker, each step `_SHADE_STEP` further towards white / black (at most 0.8 of the way)."""
    c = np.asarray(colour, np.float64)
    step = min(_SHADE_STEP * ((index + 1) // 2), 0.8)
    if index == 0:
        out = c
    elif index % 2:
        out = c + (255.0 - c) * step
    else:
        out = c * (1.0 - step)
    return np.round(out).astype(np.uint8)


def segment_colours(segments_info, palette: np.ndarray) -> dict[int, np.ndarray]:
    """{segment id: uint8 [3] colour} (module doc). segments_info: [{'id', 'category_id'
    (contiguous id), 'isthing'}] in id order; palette: uint8 [K, 3]."""
    seen: dict[int, int] = {}
    out = {}
    for s in segments_info:
        cat = int(s["category_id"])
        if s.get("isthing", False):
            out[int(s["id"])] = instance_colour(palette[cat], seen.get(cat, 0))
            seen[cat] = seen.get(cat, 0) + 1
        else:
            out[int(s["id"])] = np.asarray(palette[cat], np.uint8)
    return out


def panoptic_overlay(image: np.ndarray, panoptic_seg: np.ndarray, segments_info,
                     palette: np.ndarray) -> np.ndarray:
    """The image with every segment's colour over it and white segment boundaries: uint8
    [H, W, 3]. image: uint8 [H, W, 3]; panoptic_seg: int [H, W] segment ids (0 = void)."""
    colours = segment_colours(segments_info, palette)
    ids = np.asarray(panoptic_seg)
    table = np.zeros((max([0, *colours]) + 1, 3), np.float32)
    for sid, c in colours.items():
        table[sid] = c
    known = np.isin(ids, list(colours)) & (ids > 0)
    img = image.astype(np.float32)
    out = np.where(known[..., None], (1 - _ALPHA) * img + _ALPHA * table[np.where(known, ids, 0)],
                   0.35 * img)
    edge = np.zeros(ids.shape, bool)
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[1:, :] |= ids[1:, :] != ids[:-1, :]
    out[edge] = 255.0
    return out.astype(np.uint8)


def panoptic_figure(image: np.ndarray, panoptic_seg: np.ndarray, segments_info,
                    palette: np.ndarray, names, title: str = ""):
    """Image | panoptic overlay with a legend of the segments (largest first; instances
    numbered per class, e.g. 'bed #2'; ground-truth crowd regions marked); returns a
    matplotlib Figure."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    h, w = panoptic_seg.shape
    colours = segment_colours(segments_info, palette)
    area = np.bincount(np.asarray(panoptic_seg).reshape(-1),
                       minlength=max([0, *colours]) + 1)
    number: dict[int, int] = {}
    entries = []
    for s in segments_info:
        cat, sid = int(s["category_id"]), int(s["id"])
        label = names[cat]
        if s.get("iscrowd", 0):
            label += " (crowd)"
        elif s.get("isthing", False):
            number[cat] = number.get(cat, 0) + 1
            label += f" #{number[cat]}"
        else:
            label += " (stuff)"
        entries.append((int(area[sid]), label, colours[sid]))
    entries.sort(key=lambda e: -e[0])
    shown, rest = entries[:visualize.LEGEND_MAX], len(entries) - visualize.LEGEND_MAX
    ncol, img_w = 3, 4.2
    img_h = img_w * h / w
    rows = -(-(len(shown) + (rest > 0)) // ncol)
    legend_h = 0.15 + 0.22 * rows
    fig = Figure(figsize=(2 * img_w, img_h + 0.4 + legend_h), dpi=100)
    top = 1 - 0.35 / fig.get_figheight()
    bottom = legend_h / fig.get_figheight()
    views = [("image", image),
             (f"panoptic ({len(segments_info)} segments)",
              panoptic_overlay(image, panoptic_seg, segments_info, palette))]
    for i, (name, view) in enumerate(views):
        ax = fig.add_axes((i / 2 + 0.005, bottom, 0.5 - 0.01, top - bottom))
        ax.imshow(view, interpolation="nearest")
        ax.set_title(name, fontsize=11)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9, x=0.005, ha="left", y=0.999, va="top")
    handles = [Patch(facecolor=np.asarray(c) / 255.0, edgecolor="black", linewidth=0.5,
                     label=label) for _, label, c in shown]
    if rest > 0:
        handles.append(Patch(facecolor="white", edgecolor="white", label=f"... {rest} more"))
    if handles:
        fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.01, 0.0), ncol=ncol,
                   fontsize=9, frameon=False, handlelength=1.4, columnspacing=1.6)
    return fig
