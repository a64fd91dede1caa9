"""Training logs: a tqdm bar (terminal and Colab), TensorBoard and `<workdir>/metrics.jsonl`.

Only the process constructed with enabled=True (process 0) writes anything.
"""

from __future__ import annotations

import datetime
import json
import math
import pathlib

from tqdm.auto import tqdm

JSONL = "metrics.jsonl"


def _fmt_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class MetricLogger:
    """Console + TensorBoard + JSONL writer for scalar metrics."""

    def __init__(self, workdir, *, total_steps: int, initial_step: int = 0,
                 enabled: bool = True):
        self.enabled = enabled
        self.workdir = pathlib.Path(workdir)
        self._bar = self._tb = self._jsonl = None
        if not enabled:
            return
        self._bar = tqdm(total=total_steps, initial=initial_step, desc="train",
                         dynamic_ncols=True, mininterval=1.0)
        try:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
        except ImportError:  # pragma: no cover - tensorboardX is a requirement
            self._tb = None
        self._jsonl = open(self.workdir / JSONL, "a", encoding="utf-8")

    def info(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message)

    def _write(self, split: str, step: int, values: dict) -> None:
        clean = {k: float(v) for k, v in values.items()
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

    def log_train(self, step: int, values: dict, eta_s: float) -> None:
        if not self.enabled:
            return
        self._write("train", step, values)
        shown = {k: values[k] for k in ("loss", "loss_seg", "loss_img", "acc_seg", "img_recall",
                                        "img_precision", "lr") if k in values}
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
        tqdm.write(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items())
                   + f", {values['images_per_s']:.1f} img/s, {values['step_time']:.3f} s/step"
                   + f", ETA {_fmt_eta(eta_s)}")

    def log_eval(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        self._write("val", step, values)
        keys = [k for k in ("mIoU", "mAcc", "aAcc") if k in values]
        tqdm.write(f"eval step {step}: " + ", ".join(f"{k}={float(values[k]):.4g}" for k in keys))

    def advance(self, step: int) -> None:
        if self.enabled:
            self._bar.update(step - self._bar.n)

    def close(self) -> None:
        if not self.enabled:
            return
        self._bar.close()
        if self._tb is not None:
            self._tb.close()
        self._jsonl.close()
