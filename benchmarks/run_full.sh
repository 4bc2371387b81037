#!/usr/bin/env bash
# The real-data benchmark behind benchmarks/results/REPORT.md, one stage after the other.
#
#   bash benchmarks/run_full.sh [DATA_HOME]          (from the repository root)
#
# Budgets (environment variables): T training seconds per search trial and per compare
# run (default 20), N trials per solver (default 16), PROBLEMS (default
# "mnist_ae regression"), THREADS torch threads per process (default 1: on a 2-core
# machine shared with other jobs, a multi-threaded process slows down by orders of
# magnitude on small operations whenever another process runs, which would distort the
# K-FAC/SGD comparison; set THREADS=2 on a dedicated machine). About 35-40 minutes on a
# 2-core CPU with the defaults. Every stage
# resumes where it stopped when the script is run again; each writes a log under
# benchmarks/results/logs/.
set -euo pipefail
DATA=${1:-${SKKFAC_DATA:-$HOME/skkfac_data}}
T=${T:-20}
N=${N:-16}
PROBLEMS=${PROBLEMS:-"mnist_ae regression"}
THREADS=${THREADS:-1}
OUT=benchmarks/results
mkdir -p "$OUT/logs"

run() {  # run <log name> <sub-command and options...>
    local name=$1
    shift
    echo "=== python -m benchmarks $* (log: $OUT/logs/$name.log)"
    python -m benchmarks "$@" --out "$OUT" --threads "$THREADS" 2>&1 | tee -a "$OUT/logs/$name.log"
}

run time_budget time-budget --problem regression --data-home "$DATA" ||
    echo "(the max_time criterion failed; see $OUT/time_budget/time_budget.txt)"
for problem in $PROBLEMS; do
    run "tune_$problem" tune --problem "$problem" --data-home "$DATA" \
        --max-time "$T" --n-trials "$N"
    run "compare_$problem" compare --problem "$problem" --data-home "$DATA"
    python -m benchmarks report --out "$OUT"
done
python -m benchmarks report --out "$OUT"
