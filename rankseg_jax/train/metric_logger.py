"""Training logs: a tqdm bar (terminal and Colab), `<workdir>/log.txt`, TensorBoard and
`<workdir>/metrics.jsonl`.

Units: accuracies, IoUs and recall/precision are logged in percent (as mmseg prints them) and
their names say so: `mIoU_pct`, `acc_seg_pct`, `img_recall_pct`, ... in metrics.jsonl and
TensorBoard (`val/mIoU_pct`), `mIoU=45.12%` on the console and in log.txt. Evaluation returns
fractions (`evaluate.evaluate`); the conversion happens here, once.

`RunFiles` owns the files: for a local workdir they are written in place; for a cloud one
(`gs://...`) they are written to a local staging folder and uploaded whole by `sync()` (object
stores cannot append), after the existing ones were downloaded, so a restarted run appends.
log.txt holds the run's Python logging output (`rankseg_jax` INFO and up, other libraries'
warnings) and every console line of this logger, appended across restarts.
Only the process constructed with enabled=True (process 0) writes anything.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import shutil
import tempfile
import time

from tqdm.auto import tqdm

from rankseg_jax import paths

JSONL = "metrics.jsonl"
LOG_FILE = "log.txt"
TENSORBOARD = "tensorboard"
# Metrics that evaluation / the train step give as fractions in [0, 1].
FRACTIONS = frozenset({"mIoU", "mAcc", "aAcc", "mDice", "mFscore", "mPrecision", "mRecall",
                       "img_AP", "img_recall", "img_precision", "pixel_recall",
                       *(f"{m}{s}" for m in ("PQ", "SQ", "RQ") for s in ("", "_th", "_st"))})
# Already in percent (mmseg's `accuracy`).
PERCENTS = frozenset({"acc_seg"})
_CONSOLE = logging.getLogger("rankseg_jax.console")  # log.txt only (the console has tqdm)
_CONSOLE.propagate = False


def in_percent(values: dict) -> dict:
    """Scalar values with fractions converted to percent and percent metrics renamed
    `<name>_pct`; other values unchanged."""
    out = {}
    for k, v in values.items():
        if k in FRACTIONS:
            out[f"{k}_pct"] = 100.0 * float(v)
        elif k in PERCENTS:
            out[f"{k}_pct"] = float(v)
        else:
            out[k] = v
    return out


def _fmt_eta(seconds: float | None) -> str:
    return "estimating" if seconds is None else str(
        datetime.timedelta(seconds=int(max(seconds, 0))))


def _fmt(k: str, v: float) -> str:
    return f"{k[:-4]}={v:.2f}%" if k.endswith("_pct") else f"{k}={v:.4g}"


class _LogFilter(logging.Filter):
    """rankseg_jax INFO and up; other libraries' warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("rankseg_jax") or record.levelno >= logging.WARNING


class RunFiles:
    """The workdir's log files and their logging handler (see the module docstring).

    workdir: local path or cloud URI. enabled: False on processes other than 0 (no files).
    """

    def __init__(self, workdir, *, enabled: bool = True):
        self.enabled = enabled
        self.workdir = paths.as_path(workdir, "workdir")
        self.remote = not paths.is_local(workdir)
        self.handler: logging.Handler | None = None
        self._last_sync = time.monotonic()
        if not enabled:
            self.local = None
            return
        if self.remote:
            self.local = tempfile.mkdtemp(prefix="rankseg_run_")
            for name in (JSONL, LOG_FILE):  # append across restarts
                src = self.workdir / name
                if src.exists():
                    with open(os.path.join(self.local, name), "wb") as f:
                        f.write(src.read_bytes())
        else:
            self.local = os.fspath(self.workdir)
            os.makedirs(self.local, exist_ok=True)
        self.handler = logging.FileHandler(os.path.join(self.local, LOG_FILE), mode="a",
                                           encoding="utf-8")
        self.handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
        self.handler.addFilter(_LogFilter())
        self.handler.setLevel(logging.INFO)
        logging.getLogger().addHandler(self.handler)
        _CONSOLE.addHandler(self.handler)
        _CONSOLE.setLevel(logging.INFO)

    def path(self, name: str) -> str:
        """Where to write `name` now (local file or staging copy)."""
        return os.path.join(self.local, name)

    def sync(self, *, every_s: float = 0.0) -> None:
        """Uploads the staged files of a cloud workdir (no-op when local), at most every
        `every_s` seconds."""
        if not (self.enabled and self.remote) or time.monotonic() - self._last_sync < every_s:
            return
        self._last_sync = time.monotonic()
        if self.handler is not None:
            self.handler.flush()
        for root, _, files in os.walk(self.local):
            for name in files:
                src = os.path.join(root, name)
                dst = self.workdir / os.path.relpath(src, self.local)
                dst.parent.mkdir(parents=True, exist_ok=True)
                with open(src, "rb") as f:
                    dst.write_bytes(f.read())

    def close(self) -> None:
        if not self.enabled:
            return
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
            _CONSOLE.removeHandler(self.handler)
            self.handler.close()
        self.sync()
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)
        self.handler = None


class MetricLogger:
    """Console + log.txt + TensorBoard + JSONL writer for scalar metrics.

    files: the run's `RunFiles` (None: a private one, closed with this logger).
    """

    def __init__(self, workdir, *, total_steps: int, initial_step: int = 0,
                 enabled: bool = True, files: RunFiles | None = None):
        self.enabled = enabled
        self._own_files = files is None
        self.files = files if files is not None else RunFiles(workdir, enabled=enabled)
        self._bar = self._tb = self._jsonl = None
        if not enabled:
            return
        self._bar = tqdm(total=total_steps, initial=initial_step, desc="train",
                         dynamic_ncols=True, mininterval=1.0)
        try:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(self.files.path(TENSORBOARD))
        except ImportError:  # pragma: no cover - tensorboardX is a requirement
            self._tb = None
        self._jsonl = open(self.files.path(JSONL), "a", encoding="utf-8")

    def info(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message)
            _CONSOLE.info(message)

    def _write(self, split: str, step: int, values: dict) -> None:
        clean = {k: float(v) for k, v in in_percent(values).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)}
        record = {"step": step, "split": split,
                  "time": datetime.datetime.now().isoformat(timespec="seconds")}
        record.update({k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(f"{split}/{k}", v, step)
            self._tb.flush()

    def log_train(self, step: int, values: dict, eta_s: float | None) -> None:
        """values: finalized train metrics (+ lr, step_time, images_per_s); eta_s: None while
        no compiled step has been timed yet."""
        if not self.enabled:
            return
        self._write("train", step, values)
        shown = {k: v for k, v in in_percent(values).items()
                 if k in ("loss", "loss_seg", "loss_img", "acc_seg_pct", "img_recall_pct",
                          "img_precision_pct", "lr")}
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
        self.info(f"step {step}: " + ", ".join(_fmt(k, v) for k, v in shown.items())
                  + f", {values['images_per_s']:.1f} img/s, {values['step_time']:.3f} s/step"
                  + f", ETA {_fmt_eta(eta_s)}")

    def log_eval(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        self._write("val", step, values)
        pct = in_percent(values)
        keys = [f"{k}_pct" for k in ("mIoU", "mAcc", "aAcc", "PQ") if f"{k}_pct" in pct]
        self.info(f"eval step {step}: " + ", ".join(_fmt(k, float(pct[k])) for k in keys))
        self.files.sync()

    def advance(self, step: int) -> None:
        if self.enabled:
            self._bar.update(step - self._bar.n)
            self.files.sync(every_s=60.0)

    def close(self) -> None:
        if not self.enabled:
            return
        self._bar.close()
        if self._tb is not None:
            self._tb.close()
        self._jsonl.close()
        if self._own_files:
            self.files.close()
        else:
            self.files.sync()
