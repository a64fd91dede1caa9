"""benchmarks/profile_step.py reads a profiler trace into per-category times and the step's
concurrency profile; checked on a hand-made trace whose answer is known."""

import gzip
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
profile_step = pytest.importorskip("profile_step")


def _write_trace(directory: pathlib.Path, steps: list[list[tuple[str, int, int, int]]]):
    """One 'wait for completion' span per step (100 us long, 1000 us apart) and its thunks
    (name, thread, start offset, duration), plus markers that are not thunks."""
    events = []
    for i, thunks in enumerate(steps):
        t0 = 1000 * i
        events.append({"ph": "X", "name": "ThunkExecutor::Execute (wait for completion)",
                       "pid": 1, "tid": 9, "ts": t0, "dur": 100})
        events.append({"ph": "X", "name": "ThreadpoolListener::StartRegion", "pid": 1,
                       "tid": 1, "ts": t0 + 1, "dur": 0})
        events.append({"ph": "X", "name": "end: copy.3", "pid": 1, "tid": 1, "ts": t0 + 2,
                       "dur": 0})
        for name, tid, start, dur in thunks:
            events.append({"ph": "X", "name": name, "pid": 1, "tid": tid, "ts": t0 + start,
                           "dur": dur})
    path = directory / "plugins" / "profile" / "run"
    path.mkdir(parents=True)
    with gzip.open(path / "host.trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)


def test_categories_wall_share_alone_time_and_concurrency(tmp_path):
    # Per step: dot.1 alone 0-40 us, then dot.2 and fusion.7 together 40-60, fusion.7 alone
    # 60-80, nothing 80-100.
    step = [("dot.1", 1, 0, 40), ("dot.2", 1, 40, 20), ("fusion.7", 2, 40, 40)]
    _write_trace(tmp_path, [step, step])
    out = profile_step.analyse(str(tmp_path), traced=2)
    rows = {r["category"]: r for r in out["categories"]}
    assert set(rows) == {"dot", "fusion"}
    assert out["step_ms"] == pytest.approx(0.1)
    assert out["thunks_per_step"] == 3
    assert rows["dot"]["busy_ms"] == pytest.approx(0.06)
    assert rows["dot"]["wall_share_ms"] == pytest.approx(0.05)  # 40 + 20 / 2
    assert rows["dot"]["alone_ms"] == pytest.approx(0.04)
    assert rows["fusion"]["wall_share_ms"] == pytest.approx(0.03)  # 20 / 2 + 20
    assert rows["fusion"]["alone_ms"] == pytest.approx(0.02)
    assert out["concurrency_ms"] == pytest.approx({0: 0.02, 1: 0.06, 2: 0.02})


def test_matmul_split_separates_matrix_products_from_the_rest():
    rows = [{"op": "aten::mm", "ms": 3.0}, {"op": "aten::addmm", "ms": 1.5},
            {"op": "aten::gelu", "ms": 0.5}, {"op": "aten::copy_", "ms": 0.25}]
    text = profile_step.matmul_split(rows, "op", "ms", profile_step.TORCH_MATMULS)
    assert text == "matrix products 4.5 ms/step, the rest 0.8 ms/step"
    xla = [{"category": "ynn_fusion", "w": 2.0}, {"category": "dot", "w": 1.0},
           {"category": "copy_bitcast_fusion", "w": 4.0}]
    assert profile_step.matmul_split(xla, "category", "w", profile_step.XLA_MATMULS) == (
        "matrix products 3.0 ms/step, the rest 4.0 ms/step")
