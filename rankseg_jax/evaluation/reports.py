"""Evaluation reports: the console table, JSON and CSV files of `compute_metrics` output."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from typing import Any


def _fmt(x: float, digits: int) -> str:
    return "nan" if x is None or math.isnan(x) else f"{100 * x:.{digits}f}"


def format_table(
    metrics: dict,
    class_names: Sequence[str] | None = None,
    keys: Sequence[str] = ("IoU", "Acc"),
    digits: int = 2,
) -> str:
    """Console table: one row per class (name, IoU, Acc in %), then the summary row.

    Args:
        metrics: output of :func:`compute_metrics`.
        class_names: defaults to ``metrics['class_names']``.
        keys: per-class columns.
        digits: decimals of the percentages.

    Returns:
        A multi-line string (no trailing newline).
    """
    names = list(class_names) if class_names is not None else list(metrics["class_names"])
    header = ["Class", *keys]
    rows = [[n, *(_fmt(float(metrics[k][i]), digits) for k in keys)] for i, n in enumerate(names)]
    summary_header = ["aAcc", *("m" + k for k in keys)]
    summary = [_fmt(metrics["aAcc"], digits), *(_fmt(metrics["m" + k], digits) for k in keys)]

    return "\n".join(["per class results:", text_table(header, rows, True),
                      "Summary:", text_table(summary_header, [summary], False)])


def text_table(head: Sequence[Any], body: Sequence[Sequence[Any]], name_col: bool) -> str:
    """A boxed text table: header row, then body rows (no trailing newline).

    With `name_col`, the first column is left-aligned (names); all others are right-aligned so
    that decimal points line up.
    """
    widths = [max(len(str(r[c])) for r in [head, *body]) for c in range(len(head))]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    line = lambda r: "| " + " | ".join(  # noqa: E731
        str(v).ljust(w) if (name_col and c == 0) else str(v).rjust(w)
        for c, (v, w) in enumerate(zip(r, widths, strict=True))
    ) + " |"
    return "\n".join([sep, line(head), sep, *(line(r) for r in body), sep])


def json_number(x):
    """JSON has no NaN: write null (strict JSON parsers reject NaN literals)."""
    x = float(x)
    return None if math.isnan(x) else x


_PER_CLASS = ("IoU", "Acc", "Dice", "Fscore", "Precision", "Recall")


_AREAS = ("area_intersect", "area_union", "area_pred", "area_label")


def write_metrics_json(path: str | os.PathLike, metrics: dict, extra: dict | None = None) -> None:
    """Write metrics as JSON: summaries, ``per_class`` {name: {IoU, Acc, ..., areas}}.

    NaN becomes ``null``. ``extra`` (JSON-serializable) is stored under ``"extra"``.
    """
    summary_keys = ["aAcc", *("m" + k for k in _PER_CLASS)]
    doc: dict[str, Any] = {k: json_number(metrics[k]) for k in summary_keys if k in metrics}
    per_class = {}
    for i, name in enumerate(metrics["class_names"]):
        row = {k: json_number(metrics[k][i]) for k in _PER_CLASS if k in metrics}
        row.update({k: int(metrics[k][i]) for k in _AREAS if k in metrics})
        per_class[name] = row
    doc["per_class"] = per_class
    if extra is not None:
        doc["extra"] = extra
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)


def write_metrics_csv(path: str | os.PathLike, metrics: dict) -> None:
    """Write one CSV row per class: class, IoU, Acc, Dice, Fscore, Precision, Recall, areas.

    Values are fractions (not %) written with ``repr`` (round-trips float64 exactly), NaN as
    ``nan``. Two summary rows follow: ``mean`` (the nanmeans mIoU, mAcc, ...) and ``aAcc``
    (overall pixel accuracy, in the ``Acc`` column).
    """
    cols = [k for k in _PER_CLASS if k in metrics]
    areas = [k for k in _AREAS if k in metrics]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", *cols, *areas])
        for i, name in enumerate(metrics["class_names"]):
            w.writerow([name, *(repr(float(metrics[k][i])) for k in cols),
                        *(int(metrics[k][i]) for k in areas)])
        w.writerow(["mean", *(repr(float(metrics["m" + k])) for k in cols), *([""] * len(areas))])
        w.writerow(["aAcc", *(repr(float(metrics["aAcc"])) if k == "Acc" else "" for k in cols),
                    *([""] * len(areas))])
