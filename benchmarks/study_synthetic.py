"""Does ranking help? The paper's ablations on the synthetic benchmark, 3 seeds each.

    python benchmarks/study_synthetic.py                      # default grid, seeds 0,1,2
    python benchmarks/study_synthetic.py --budget=60          # stop starting runs after 60 min
    python benchmarks/study_synthetic.py --grid=quick         # K = 48 only (600 steps)
    python benchmarks/study_synthetic.py --grid=full          # + ablations, K = 847 (GPU)
    python benchmarks/study_synthetic.py --report_only        # regenerate the doc only
    python benchmarks/study_synthetic.py --list               # the runs and their state

Each run is one `configs/study_synthetic.py:<variant>` training in a fresh process (the
trainer uses every core; runs go one after another) and writes
`benchmarks/results/study/<row>_seed<s>.json`. A run whose result file exists is skipped, so
the command can be re-run until the grid is complete; an interrupted run resumes from its
workdir checkpoint. The oracle-at-evaluation rows evaluate the RankSeg row's final weights
with ground-truth selection (the same model `oracle=eval` would train), so they cost one
evaluation. Finally `docs/synthetic_study.md` and its plot are regenerated from every result
file (`study_report.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

RESULTS = os.path.join(ROOT, "benchmarks", "results", "study")
CONFIG = "configs/study_synthetic.py"
SEEDS = (0, 1, 2)
GRIDS = ("quick", "default", "full")


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the study: K, its `kind` (baseline, rankseg, mt, mt_ls, kappa<t>,
    oracle_eval, oracle_train_eval), the config variant flags, the smallest grid holding it,
    its run phase (cheap first), `long` (the 4x longer schedule of the extension) and `seeds`:
    the seeds it runs in grids below "full" (None: every seed asked for).
    Oracle-at-eval rows are evaluated on the weights of their family's RankSeg row."""

    k: int
    kind: str
    flags: str
    grid: str
    phase: int
    long: bool = False
    seeds: tuple[int, ...] | None = None

    @property
    def prefix(self) -> str:
        """The family: rows compared with each other (same K and schedule)."""
        return f"k{self.k}" + ("_long" if self.long else "")

    @property
    def name(self) -> str:
        return f"{self.prefix}_{self.kind}"

    @property
    def from_row(self) -> str:
        return f"{self.prefix}_rankseg" if self.kind == "oracle_eval" else ""

    def variant(self, seed: int) -> str:
        steps = f"steps={LONG_STEPS}" if self.long else ""
        return ",".join(filter(None, (f"k={self.k}", f"seed={seed}", self.flags, steps)))


# The extension (fixed when the pre-set 600 steps left every method near the floor at
# K = 150, before any longer run): the same benchmark and rows, trained 4x longer.
LONG_STEPS = 2400


def _rows() -> tuple[Row, ...]:
    def family(k, grid, phase, long=False, seeds=None):
        return [Row(k, "baseline", "baseline", grid, phase, long, seeds),
                Row(k, "rankseg", "", grid, phase, long, seeds),
                Row(k, "oracle_eval", "oracle=eval", grid, phase, long, seeds)]

    # "quick": the small K at the pre-set 600 steps (run first, 3 seeds).
    rows = family(48, "quick", 0) + [Row(48, "oracle_train_eval", "oracle=train_eval",
                                         "quick", 0)]
    # "default" = what the CPU budget ran: K = 150 at 600 steps (seed 0, at the floor: the
    # reason for the extension), then K = 150 at LONG_STEPS (baseline / RankSeg / oracle at
    # eval, 3 seeds as the budget allows; oracle at train+eval, seed 0).
    rows += family(150, "default", 0, seeds=(0,))
    rows += family(150, "default", 1, long=True) + [
        Row(150, "oracle_train_eval", "oracle=train_eval", "default", 1, True, (0,))]
    # "full" (a GPU or a larger budget): paper Table 1 steps and Table 4 (kappa sweep) at
    # K = 150, and K = 847 (ADE20K-847), all at LONG_STEPS.
    rows += [Row(150, "mt", "ablation=mt", "full", 2, True),
             Row(150, "mt_ls", "ablation=mt_ls", "full", 2, True)]
    rows += [Row(150, f"kappa{t}", f"topk={t}", "full", 2, True) for t in (8, 25, 100)]
    rows += family(847, "full", 3, long=True) + [
        Row(847, "oracle_train_eval", "oracle=train_eval", "full", 3, True)]
    return tuple(rows)


ROWS = _rows()
BY_NAME = {r.name: r for r in ROWS}


def result_path(name: str, seed: int) -> str:
    return os.path.join(RESULTS, f"{name}_seed{seed}.json")


def in_grid(row: Row, grid: str, seed: int) -> bool:
    """Whether (row, seed) belongs to `grid` (the "full" grid runs every row at every seed)."""
    if GRIDS.index(row.grid) > GRIDS.index(grid):
        return False
    return grid == "full" or row.seeds is None or seed in row.seeds


def expected(grid: str, seeds) -> list[tuple[Row, int]]:
    """Every (row, seed) whose result the grid writes, derived rows included."""
    return [(r, s) for r in ROWS for s in seeds if in_grid(r, grid, s)]


def jobs(grid: str, seeds) -> list[tuple[Row, int, list[Row]]]:
    """(trained row, seed, [rows whose results the job writes]) in run order: phase (the
    600-step rows, the longer K = 150 rows, the full grid's ablations, K = 847), then seed,
    then row, so a phase is complete (every seed) before the costlier one starts."""
    out = []
    for phase in sorted({r.phase for r in ROWS}):
        for seed in seeds:
            for row in ROWS:
                if row.phase != phase or row.from_row or not in_grid(row, grid, seed):
                    continue
                derived = [r for r in ROWS if r.from_row == row.name and in_grid(r, grid, seed)]
                out.append((row, seed, [row, *derived]))
    return out


def missing(outputs: list[Row], seed: int) -> list[Row]:
    return [r for r in outputs if not os.path.exists(result_path(r.name, seed))]


# --------------------------------------------------------------------------- one run


def _summary(ev: dict) -> dict:
    keys = ("mIoU", "mAcc", "aAcc", "img_AP", "img_recall", "img_precision", "pixel_recall")
    out = {k: float(ev[k]) for k in keys if k in ev}
    iou = [v for v in ev["IoU"] if v == v]
    out["classes_scored"] = len(iou)  # classes present in the val GT or predicted
    out["num_images"] = int(ev["num_images"])
    return out


def _write(row: Row, seed: int, payload: dict) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    path = result_path(row.name, seed)
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)


def run_one(row: Row, seed: int, outputs: list[Row], workroot: str) -> None:
    """Trains `row` for `seed`, writes the result of every row in `outputs` not yet written
    (the row itself and its oracle-at-eval rows), then deletes the workdir."""
    import jax

    import rankseg_jax
    from benchmarks.common import git_commit
    from configs import study_synthetic
    from rankseg_jax.evaluation import evaluate
    from rankseg_jax.train import loop

    workdir = os.path.join(workroot, f"{row.name}_seed{seed}")
    config = study_synthetic.get_config(row.variant(seed))
    common = {"seed": seed, "steps": int(config.train.steps), "K": row.k,
              "kappa": int(config.model.rankseg.topk) if config.model.rankseg.enabled else None,
              "commit": git_commit(), "jax": jax.__version__,
              "device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
              "date": datetime.date.today().isoformat()}
    start = time.perf_counter()
    result = loop.train_and_evaluate(config, workdir)
    train_s = time.perf_counter() - start
    if result["preempted"] or result["eval"] is None:
        raise SystemExit(f"{row.name} seed {seed} stopped at step {result['step']} (its "
                         f"checkpoint in {workdir} resumes it); re-run the study")
    todo = missing(outputs, seed)
    if row in todo:
        _write(row, seed, {**common, "row": row.name, "variant": row.variant(seed),
                           "command": f"python main.py --config={CONFIG}:{row.variant(seed)} "
                                      f"--workdir=WORKDIR",
                           "metrics": _summary(result["eval"]), "train_seconds": train_s,
                           "final_train": result["train"]})
    for other in todo:
        if other is row:
            continue
        ocfg = study_synthetic.get_config(other.variant(seed))
        start = time.perf_counter()
        ocfg, model = rankseg_jax.load_model(workdir, ocfg)
        ev = evaluate.evaluate(ocfg, model, None)
        _write(other, seed, {
            **common, "row": other.name, "variant": other.variant(seed),
            "command": f"python main.py --mode=eval --config={CONFIG}:{other.variant(seed)} "
                       f"--workdir=WORKDIR  # WORKDIR of {row.name}, seed {seed}",
            "weights_of": row.name, "metrics": _summary(ev),
            "eval_seconds": time.perf_counter() - start})
    shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- the grid


def run_grid(grid: str, seeds, workroot: str, budget_min: float) -> bool:
    """Runs the missing jobs one after another; returns True when the grid is complete."""
    todo = [(r, s, o) for r, s, o in jobs(grid, seeds) if missing(o, s)]
    print(f"{len(todo)} runs to do ({grid} grid, seeds {list(seeds)})", flush=True)
    os.makedirs(workroot, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=ROOT,
               # Seeds of one row compile the same programs: compile once, reuse from disk.
               JAX_COMPILATION_CACHE_DIR=os.path.join(workroot, "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1")
    start = time.time()
    for i, (row, seed, _) in enumerate(todo):
        if budget_min and time.time() - start > 60 * budget_min:
            print(f"budget of {budget_min} min spent; re-run to continue", flush=True)
            return False
        log = os.path.join(workroot, f"{row.name}_seed{seed}.log")
        t = time.time()
        print(f"[{i + 1}/{len(todo)}] {row.name} seed {seed} ...", end=" ", flush=True)
        with open(log, "w") as f:
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", row.name,
                                   "--seed", str(seed), "--grid", grid, "--workroot", workroot],
                                  cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        if proc.returncode:
            with open(log) as f:
                tail = f.read()[-3000:]
            print(f"FAILED (exit {proc.returncode}); log {log}:\n{tail}", flush=True)
            return False
        print(f"{time.time() - t:.0f} s", flush=True)
    return not any(missing(o, s) for _, s, o in jobs(grid, seeds))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", choices=GRIDS, default="default",
                   help="quick: K=48 at 600 steps; default (the CPU budget): + K=150 at 600 "
                        "(seed 0) and 2400 steps; full: + K=150 Table 1 steps and kappa "
                        "sweep, K=847, every row at every seed")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    p.add_argument("--budget", type=float, default=0.0,
                   help="minutes after which no new run starts (0 = run the whole grid)")
    p.add_argument("--workroot", default="/tmp/rankseg_study",
                   help="workdirs, logs and the compilation cache (deleted per finished run)")
    p.add_argument("--report_only", action="store_true")
    p.add_argument("--list", action="store_true")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",") if s]
    if a.one:
        row = BY_NAME[a.one]
        outputs = next(o for r, s, o in jobs(a.grid, [a.seed]) if r == row)
        run_one(row, a.seed, outputs, a.workroot)
        return 0
    if a.list:
        for row, seed, outputs in jobs(a.grid, seeds):
            todo = missing(outputs, seed)
            print(f"{row.name:24s} seed {seed}: {'to do' if todo else 'done'} "
                  f"({', '.join(r.name for r in outputs)})")
        return 0
    complete = True
    if not a.report_only:
        complete = run_grid(a.grid, seeds, a.workroot, a.budget)
    from benchmarks import study_report
    print("wrote", study_report.write_report(ROWS, RESULTS, seeds, expected(a.grid, seeds)))
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
