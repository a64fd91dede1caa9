#!/usr/bin/env bash
# One prepared session on a lent CUDA GPU (the speed issue's accelerator rows and the study's
# GPU-sized rows), run from the repository root:
#
#   bash benchmarks/gpu_session.sh bench COMMIT   # checks + train-step and inference rows
#   bash benchmarks/gpu_session.sh study COMMIT   # K = 847 rows of the synthetic study
#
# COMMIT: the short commit of the tree (recorded in the results when the copy has no .git).
# Results go to $OUT (default /tmp/gpu_out): the tables, JSON rows and logs; `study` also
# packs benchmarks/results/study/k847_* into $OUT/study_results.tgz. Wheels in .whl/ (the
# project's pure-Python pins for the machine's Python) are installed to /tmp/site first; the
# machine's own jax with its CUDA plugin is used. Each stage has its own time limit, so one
# failing stage still leaves the others' results.
set -u
PART=${1:?usage: gpu_session.sh bench|study COMMIT}
export RANKSEG_GIT_COMMIT=${2:-unknown}
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
T0=$(date +%s)
stamp() { echo "== $(( $(date +%s) - T0 )) s: $*"; }

if [ "$PART" = bench ]; then
  stamp versions
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
    --format=csv 2>&1 | tee "$OUT/environment.txt"
  python3 -c "import sys, jax, jaxlib, flax, optax, orbax.checkpoint as o, grain;
print(sys.version.split()[0], 'jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax',
      flax.__version__, 'optax', optax.__version__, 'grain', grain.__version__,
      jax.devices())" 2>&1 | tee -a "$OUT/environment.txt"

  stamp "GPU tests (cuDNN attention vs XLA; a training smoke test)"
  timeout 100 python3 -m pytest -q -p no:cacheprovider -x \
    tests/models/test_attention_implementation.py tests/train/test_speed_paths.py \
    2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"

  stamp "train steps (compiled in parallel, timed one at a time)"
  cat > /tmp/gpu_train_jobs.json <<'EOF'
[{"preset": "b16", "size": 512, "k": 150, "kappa": 50, "batch": 8, "dtype": "bfloat16"},
 {"preset": "b16", "size": 512, "k": 150, "kappa": 0, "batch": 8, "dtype": "bfloat16"},
 {"preset": "b16", "size": 512, "k": 150, "kappa": 50, "batch": 8, "dtype": "bfloat16",
  "overrides": ["model.attention=cudnn"]},
 {"preset": "b16", "size": 512, "k": 150, "kappa": 0, "batch": 8, "dtype": "bfloat16",
  "overrides": ["model.attention=cudnn"]},
 {"preset": "b16", "size": 512, "k": 150, "kappa": 50, "batch": 32, "dtype": "bfloat16",
  "overrides": ["model.attention=cudnn"]},
 {"preset": "b16", "size": 512, "k": 150, "kappa": 50, "batch": 8, "dtype": "float32"},
 {"preset": "s16", "size": 256, "k": 150, "kappa": 50, "batch": 8, "dtype": "bfloat16"},
 {"preset": "s16", "size": 256, "k": 1284, "kappa": 50, "batch": 8, "dtype": "bfloat16"},
 {"preset": "s16", "size": 256, "k": 1284, "kappa": 0, "batch": 8, "dtype": "bfloat16"},
 {"preset": "s16", "size": 256, "k": 150, "kappa": 50, "batch": 1, "dtype": "float32"},
 {"preset": "m2f", "size": 128, "k": 30, "kappa": 30, "batch": 8, "dtype": "bfloat16"},
 {"preset": "m2f", "size": 128, "k": 30, "kappa": 0, "batch": 8, "dtype": "bfloat16"}]
EOF
  timeout 280 python3 benchmarks/train_step.py --jobs /tmp/gpu_train_jobs.json --parallel \
    --timeout 260 --steps 20 --warmup 3 > "$OUT/train.log" 2> "$OUT/train.err"
  tail -16 "$OUT/train.log"; tail -5 "$OUT/train.err"

  stamp "the headline row again, alone (compile and autotuning without contention)"
  echo '[{"preset": "b16", "size": 512, "k": 150, "kappa": 50, "batch": 8, "dtype": "bfloat16",
          "overrides": ["model.attention=cudnn"]}]' > /tmp/gpu_alone.json
  timeout 90 python3 benchmarks/train_step.py --jobs /tmp/gpu_alone.json --steps 20 \
    --warmup 3 > "$OUT/train_alone.log" 2>> "$OUT/train.err"
  tail -3 "$OUT/train_alone.log"

  stamp "inference (the standard rows, float32, batch 1)"
  timeout 100 python3 benchmarks/inference.py --standard --parallel --timeout 90 \
    > "$OUT/inference.log" 2> "$OUT/inference.err"
  tail -7 "$OUT/inference.log"; tail -3 "$OUT/inference.err"
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
