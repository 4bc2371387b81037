#!/usr/bin/env bash
# The whole protocol behind benchmarks/results/REPORT.md, for a quiet machine; resumable.
#
#   bash benchmarks/run_full.sh [DATA_HOME]                 (from the repository root)
#   FRESH=1 bash benchmarks/run_full.sh [DATA_HOME]         (first run over old results)
#
# Stages, each with the per-problem default budgets of benchmarks/budgets.py (every
# registered solver: K-FAC, SGD-Nesterov, Adam ...):
#   time-budget check; then for mnist_ae, regression (keggundirected), protein, cifar10:
#   tune (24 trials per solver of 60 s / 30 s / 30 s, 12 trials of 90 s for cifar10),
#   compare (2 best configurations x 3 seeds of 120 s / 60 s / 60 s; 1 x 3 of 240 s for
#   cifar10), report; the batch-size study on mnist_ae (Figures 2-4) after its search;
#   GPU=1 adds the GPU check (python -m benchmarks gpu --device cuda).
# Expected duration on 2 CPU cores: about 8 hours (searches ~4 h; comparisons ~3 h, of
# which the held-out and training-set evaluations, outside the training clock, are about
# half; batch-size study ~0.5 h). Stop it at any time (Ctrl-C): running the script again
# resumes every stage where it stopped (finished trials, runs and points are kept).
#
# FRESH=1 discards a stage's earlier results the first time this script runs that stage
# (a marker in $OUT/logs/ remembers it), so an interrupted FRESH=1 run also resumes.
# Environment: PROBLEMS (default "mnist_ae regression protein cifar10"), THREADS torch
# threads per process (default: all cores; 1 on a machine shared with other jobs),
# OUT (default benchmarks/results), BATCH_SIZE=0 skips the batch-size study, EXTRA more
# options for tune, compare and batch-size (smoke test of this script in ~2 minutes:
# PROBLEMS=digits EXTRA=--quick OUT=/tmp/smoke bash benchmarks/run_full.sh).
set -euo pipefail
DATA=${1:-${SKKFAC_DATA:-$HOME/skkfac_data}}
PROBLEMS=${PROBLEMS:-"mnist_ae regression protein cifar10"}
THREADS=${THREADS:-$(nproc)}
OUT=${OUT:-benchmarks/results}
FRESH=${FRESH:-0}
EXTRA=${EXTRA:-}
BATCH_SIZE=${BATCH_SIZE:-1}
GPU=${GPU:-0}
mkdir -p "$OUT/logs"
echo "run_full.sh: data $DATA, problems '$PROBLEMS', $THREADS thread(s), results in $OUT;" \
     "load average now: $(cut -d' ' -f1-3 /proc/loadavg)"

run() {  # run <stage name> <sub-command and options...>
    local name=$1
    shift
    local fresh=()
    if [[ $1 =~ ^(tune|compare|batch-size)$ ]]; then
        # shellcheck disable=SC2206  # EXTRA holds several options
        fresh=($EXTRA)
        if [[ $FRESH == 1 && ! -e "$OUT/logs/$name.started" ]]; then
            fresh+=(--fresh)
        fi
    fi
    touch "$OUT/logs/$name.started"
    echo "=== python -m benchmarks $* ${fresh[*]} (log: $OUT/logs/$name.log)"
    python -m benchmarks "$@" "${fresh[@]}" --data-home "$DATA" --out "$OUT" \
        --threads "$THREADS" 2>&1 | tee -a "$OUT/logs/$name.log"
}

run time_budget time-budget --problem regression ||
    echo "(the max_time criterion failed; see $OUT/time_budget/time_budget.txt)"
for problem in $PROBLEMS; do
    run "tune_$problem" tune --problem "$problem"
    run "compare_$problem" compare --problem "$problem"
    python -m benchmarks report --out "$OUT"
    if [[ ($problem == mnist_ae || $problem == digits) && $BATCH_SIZE == 1 ]]; then
        run "batch_size_$problem" batch-size --problem "$problem"
        python -m benchmarks report --out "$OUT"
    fi
done
if [[ $GPU == 1 ]]; then
    run gpu gpu --device cuda
fi
python -m benchmarks report --out "$OUT"
echo "run_full.sh finished: $OUT/REPORT.md"
