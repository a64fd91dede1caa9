"""benchmarks/common.run_workers: parallel workers compile together but never time together,
a dead worker does not hold the others, and a worker over its limit is reported, not lost."""

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
common = pytest.importorskip("common")

# A stand-in worker: "compiles" (sleeps `compile`), then times (sleeps `time`) inside
# common.timing_turn(), and prints its timing window as JSON; `fail` exits before timing.
WORKER = """
import json, sys, time
sys.path.insert(0, {bench!r})
import common
job = json.loads(sys.argv[2])
time.sleep(job["compile"])
compiled_at = time.time()
if job.get("fail"):
    sys.exit("compile failed: " + str(job["name"]))
with common.timing_turn():
    start = time.time()
    time.sleep(job["time"])
    end = time.time()
print(json.dumps({{**job, "start": start, "end": end, "compiled_at": compiled_at}}))
"""


@pytest.fixture()
def worker(tmp_path):
    path = tmp_path / "worker.py"
    path.write_text(WORKER.format(bench=str(ROOT / "benchmarks")))
    return str(path)


def test_parallel_workers_time_one_at_a_time_after_every_compile(worker):
    jobs = [{"name": i, "compile": c, "time": 0.3} for i, c in enumerate([0.1, 0.6, 0.2])]
    jobs.append({"name": 3, "compile": 0.05, "time": 0, "fail": True})
    rows = common.run_workers(worker, jobs, parallel=True, timeout_s=60)
    assert "compile failed: 3" in rows[3]["error"]
    timed = sorted(rows[:3], key=lambda r: r["start"])
    # Nobody times before the slowest compile (0.6 s) is done, and no two windows overlap.
    assert timed[0]["start"] >= max(r["compiled_at"] for r in timed)
    for a, b in zip(timed, timed[1:], strict=False):
        assert b["start"] >= a["end"] - 1e-3, (a, b)


def test_serial_and_parallel_report_a_worker_over_its_limit(worker):
    for parallel in (False, True):
        rows = common.run_workers(worker, [{"name": 0, "compile": 5, "time": 0}],
                                  parallel=parallel, timeout_s=0.5)
        assert rows[0]["error"].startswith("killed after"), rows
        assert rows[0]["name"] == 0


def test_a_slow_compile_is_killed_without_taking_the_others_down(worker):
    jobs = [{"name": 0, "compile": 0.1, "time": 0.2}, {"name": 1, "compile": 30, "time": 0},
            {"name": 2, "compile": 0.2, "time": 0.2}]
    rows = common.run_workers(worker, jobs, parallel=True, timeout_s=3)
    assert rows[1]["error"] == "killed after 3 s (compiling)"
    assert "error" not in rows[0] and "error" not in rows[2], rows
    assert rows[2]["start"] >= rows[0]["end"] - 1e-3 or rows[0]["start"] >= rows[2]["end"] - 1e-3


def test_timing_turn_does_nothing_outside_run_workers(monkeypatch):
    monkeypatch.delenv(common.SYNC_DIR, raising=False)
    with common.timing_turn():
        reached = True
    assert reached
