"""The one window plan of test-time inference (whole image, mmseg slide windows, TTA views).

Every inference path (memory-light evaluation, the literal full-K path, prediction and
`jax.export`) places windows and maps window logits back to the image through these
functions, so they cannot disagree:

* `window_boxes` gives the windows of a view: the whole image, or mmseg-0.17 `slide_inference`
  placement (`slide_windows`).
* `view_matrices` gives, per window and axis, the separable linear map from the head's
  low-resolution grid to the original (bucket-padded) image: the bilinear resize of
  `encode_decode` to the window, the overlap average of `slide_inference` and the final
  bilinear resize to the original size, optionally un-flipped.
"""

from __future__ import annotations

import numpy as np

from rankseg_jax import resize

Box = tuple[int, int, int, int]  # (y1, y2, x1, x2)


def slide_windows(height: int, width: int, crop: tuple[int, int],
                  stride: tuple[int, int]) -> list[Box]:
    """mmseg window placement: list of (y1, y2, x1, x2), row-major.

    grids = max(size - crop + stride - 1, 0) // stride + 1; the last window is shifted back to
    end at the border; windows are never larger than the image.
    """
    (ch, cw), (sh, sw) = crop, stride
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    boxes = []
    for i in range(rows):
        for j in range(cols):
            y2 = min(i * sh + ch, height)
            x2 = min(j * sw + cw, width)
            boxes.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return boxes


def window_boxes(mode: str, height: int, width: int, crop: tuple[int, int],
                 stride: tuple[int, int]) -> list[Box]:
    """The windows of `test.mode` ('whole': the image itself; 'slide': mmseg placement)."""
    if mode == "whole":
        return [(0, height, 0, width)]
    return slide_windows(height, width, tuple(crop), tuple(stride))


def axis_counts(size: int, spans) -> np.ndarray:
    """Number of windows covering each index of an axis. spans: (start, end) per window."""
    c = np.zeros(size)
    for a, b in sorted(set(spans)):
        c[a:b] += 1
    return c


def bucket(n: int, multiple: int) -> int:
    """n rounded up to a multiple of `multiple` (<= 1 disables)."""
    return n if multiple <= 1 else -(-n // multiple) * multiple


def window_matrix(grid: int, span: tuple[int, int], size: int, counts: np.ndarray,
                  ori: int, padded: int, flip: bool = False) -> np.ndarray:
    """Separable map of one window along one axis: head grid -> original (padded) axis.

    grid: head grid length of the window (ceil(crop / patch)); span: (start, end) of the window
    in the test-resolution axis of length `size`; counts: [size] windows covering each index;
    ori: original length; padded: ori rounded up (rows >= ori are zero); flip: reverse the
    valid rows (un-flip a horizontally flipped input). Returns float64 [padded, grid].
    """
    y1, y2 = span
    emb = np.zeros((size, grid))
    emb[y1:y2] = resize.bilinear_matrix(grid, y2 - y1)  # encode_decode: grid -> crop size
    emb /= counts[:, None]  # slide average (count is separable: rows x cols)
    out = np.zeros((padded, grid))
    out[:ori] = resize.bilinear_matrix(size, ori) @ emb  # inference(rescale=True)
    if flip:
        out[:ori] = out[:ori][::-1]
    return out


def view_matrices(boxes: list[Box], size: tuple[int, int], grids: tuple[int, int],
                  ori: tuple[int, int], padded: tuple[int, int], flip: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Row and column maps of every window of one view.

    boxes: the view's windows; size: (h, w) of the view; grids: (gh, gw) head grid of a
    window; ori / padded: original size and its bucket-padded size; flip: the view is
    horizontally flipped. Returns (A_h [n, Hp, gh], A_w [n, Wp, gw]) float64, such that a
    window's logits L [gh, gw] land on the image as A_h[n] @ L @ A_w[n].T.
    """
    (h, w), (gh, gw) = size, grids
    rows = axis_counts(h, [(b[0], b[1]) for b in boxes])
    cols = axis_counts(w, [(b[2], b[3]) for b in boxes])
    ah = np.stack([window_matrix(gh, b[:2], h, rows, ori[0], padded[0]) for b in boxes])
    aw = np.stack([window_matrix(gw, b[2:], w, cols, ori[1], padded[1], flip) for b in boxes])
    return ah, aw
