#!/usr/bin/env bash
# One prepared session on a lent CUDA GPU (the speed issue's accelerator rows and the study's
# GPU-sized rows), run from the repository root:
#
#   bash benchmarks/gpu_session.sh bench COMMIT   # GPU tests, train-step rows, inference rows
#   bash benchmarks/gpu_session.sh rows COMMIT    # the train-step rows only
#   bash benchmarks/gpu_session.sh study COMMIT   # K = 847 rows of the synthetic study
#
# Train-step rows run one at a time: compiling them in parallel (train_step.py --parallel)
# makes every row wait for the slowest compile, and the RankSeg step's XLA:GPU compile took
# over 95 s on the first lent H200 (BENCHMARKS.md, "GPU: first session").
#
# COMMIT: the short commit of the tree (recorded in the results when the copy has no .git).
# Results go to $OUT (default /tmp/gpu_out): the tables, JSON rows and logs; `study` also
# packs benchmarks/results/study/k847_* into $OUT/study_results.tgz. Wheels in .whl/ (the
# project's pure-Python pins for the machine's Python) are installed to /tmp/site first; the
# machine's own jax with its CUDA plugin and its flax are used (flax 0.12.8 does not import
# with jax 0.11). The wheels the first lent H200 lacked (Python 3.12 image), fetched with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     grain==0.2.18 array_record==0.8.6 ml_collections==1.1.0 portpicker \
#     orbax-checkpoint==0.12.8 optax==0.2.8
# Each stage has its own time limit, so one failing stage still leaves the others' results.
set -u
PART=${1:?usage: gpu_session.sh bench|rows|study COMMIT}
case "$PART" in bench|rows|study) ;; *)
  echo "gpu_session.sh: unknown part '$PART' (want bench, rows or study)" >&2; exit 2;; esac
export RANKSEG_GIT_COMMIT=${2:-unknown}
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  rm -rf /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
T0=$(date +%s)
stamp() { echo "== $(( $(date +%s) - T0 )) s: $*"; }

run_rows() {
  # Train-step rows one after another, each in its own process under its own limit
  # (ROW_LIMIT s); a row that runs over it gets SIGABRT, whose Python traceback
  # (PYTHONFAULTHANDLER) shows where it was. Rows: benchmarks/gpu_rows.json.
  # A row's optional "xla_flags" becomes that worker's XLA_FLAGS. Order, most told per
  # device-second first: the RankSeg ViT-S row without autotuning (is the > 95 s compile
  # the device-side search? compiled for an H200 without a GPU it takes 1.2-1.45x the
  # baseline's time, BENCHMARKS.md), then the issue's MFU rows, ViT-B/16 512² at batch 32
  # (XLA plans 42 GiB of temp memory for RankSeg, 49 GiB for the baseline on an H200:
  # benchmarks/aot_compile.py), with cuDNN attention, then the ViT-S K = 1284 rows.
  python3 -c 'import json
for job in json.load(open("benchmarks/gpu_rows.json")):
    flags = job.pop("xla_flags", "")
    print(json.dumps({"dtype": "bfloat16", "remat": False, "steps": 20, "warmup": 3,
                      "overrides": [], **job}) + "\t" + flags)' > /tmp/rows.txt
  # JSON first: read collapses a leading empty field (tab is whitespace to IFS).
  while IFS=$'\t' read -r job flags; do
    stamp "row $job ${flags:+XLA_FLAGS=$flags}"
    if XLA_FLAGS="$flags" PYTHONFAULTHANDLER=1 timeout -s ABRT "${ROW_LIMIT:-180}" python3 \
        benchmarks/train_step.py --worker "$job" >> "$OUT/rows.jsonl" 2> /tmp/row.err; then
      tail -n 1 "$OUT/rows.jsonl" | cut -c1-300
    else
      tail -n 30 /tmp/row.err | tee -a "$OUT/rows.err"
    fi
  done < /tmp/rows.txt
}

if [ "$PART" = bench ]; then
  stamp versions
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
    --format=csv 2>&1 | tee "$OUT/environment.txt"
  python3 -c "import sys, jax, jaxlib, flax, optax, orbax.checkpoint as o, grain;
print(sys.version.split()[0], 'jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax',
      flax.__version__, 'optax', optax.__version__, 'grain', grain.__version__,
      jax.devices())" 2>&1 | tee -a "$OUT/environment.txt"

  stamp "GPU tests (cuDNN attention vs XLA; a training smoke test)"
  timeout 150 python3 -m pytest -q -p no:cacheprovider \
    tests/models/test_attention_implementation.py tests/train/test_speed_paths.py \
    2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"

  stamp "train steps: benchmarks/gpu_rows.json, one at a time"
  run_rows

  stamp "inference (the standard rows, float32, batch 1)"
  timeout 100 python3 benchmarks/inference.py --standard --parallel --timeout 90 \
    > "$OUT/inference.log" 2> "$OUT/inference.err"
  tail -7 "$OUT/inference.log"; tail -3 "$OUT/inference.err"
  stamp done
fi

if [ "$PART" = rows ]; then
  run_rows
  stamp done
fi

if [ "$PART" = study ]; then
  stamp "study K = 847: 3 rows x 3 seeds at once"
  mkdir -p /tmp/study "$OUT/study_logs"
  pids=()
  for seed in 0 1 2; do
    for row in k847_long_baseline k847_long_rankseg k847_long_oracle_train_eval; do
      XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "${STUDY_LIMIT:-420}" \
        python3 benchmarks/study_synthetic.py --one "$row" --seed "$seed" --grid full \
        --workroot /tmp/study > "$OUT/study_logs/${row}_seed${seed}.log" 2>&1 &
      pids+=($!)
    done
  done
  fails=0
  for p in "${pids[@]}"; do wait "$p" || fails=$((fails + 1)); done
  stamp "study runs finished, $fails failed"
  for log in "$OUT"/study_logs/*.log; do
    echo "-- $(basename "$log"): $(grep -c . "$log") lines; last: $(tail -n 1 "$log" | cut -c1-200)"
  done
  ls benchmarks/results/study/ | grep k847 || true
  tar czf "$OUT/study_results.tgz" benchmarks/results/study/k847_* 2>/dev/null
  tar czf "$OUT/study_logs.tgz" -C "$OUT" study_logs && rm -rf "$OUT/study_logs"
  stamp done
fi
