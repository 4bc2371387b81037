#!/usr/bin/env bash
# The GPU checks of skkfac in one command, for a machine with a CUDA GPU and no network.
#
#     bash benchmarks/gpu_suite.sh OUT_DIR          # on the GPU machine (< 6 minutes)
#     bash benchmarks/gpu_suite.sh OUT_DIR --cpu    # rehearsal on a CPU-only machine
#
# Needs only what is installed there (torch, scikit-learn, pandas, joblib, pytest) and
# the repository: nothing is installed and nothing on the way imports scikit-optimize.
# Writes five files to OUT_DIR:
#   env.txt        machine, versions, GPU; proof that `import skkfac` needs no skopt
#   tests.txt      pytest: tests/test_cuda.py (devices, CUDA->CPU pickle, host syncs,
#                  K-FAC vs SGD cost on the autoencoder, TF32), tests/test_cuda_exact.py (the
#                  exactness tests on the GPU), tests/test_devices.py, tests/test_kfac_exact.py,
#                  tests/test_mixed_precision.py (bf16-mixed: rho on exact problems, state)
#   syncs.txt      the measurements printed by tests/test_cuda.py: host synchronisations
#                  per update, K-FAC/SGD cost, factor error with TF32 allowed
#   step_cost.txt  benchmarks/step_cost.py on the GPU (seconds per update, phases, memory),
#                  float32 and bf16-mixed
#   status.txt     exit status of each step
# Each step has its own time limit; a failing step does not stop the others.
set -u
out=${1:?usage: bash benchmarks/gpu_suite.sh OUT_DIR [--cpu]}
mode=${2:-gpu}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$repo" || exit 1
python=${PYTHON:-python3}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} MKL_NUM_THREADS=${MKL_NUM_THREADS:-4}
if [ "$mode" = "--cpu" ]; then
    device=cpu; batches="250 1000"; repeats=3
else
    device=cuda; batches="1000 4096 10000"; repeats=10
fi
: >"$out/status.txt"

step() {  # step NAME SECONDS FILE COMMAND...: run with a time limit, log to FILE
    local name=$1 limit=$2 file=$3
    shift 3
    local start=$SECONDS
    timeout "$limit" "$@" >>"$out/$file" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - start)) s" | tee -a "$out/status.txt"
}

{
    date -u
    uname -a
    nvidia-smi 2>&1 | head -15
    git log --oneline -1 2>/dev/null
} >"$out/env.txt" 2>&1
step environment 60 env.txt "$python" -c "
import sys, platform, torch, sklearn, skkfac
print('python', platform.python_version(), 'torch', torch.__version__, 'sklearn', sklearn.__version__)
print('cuda available:', torch.cuda.is_available(), 'devices:', torch.cuda.device_count())
if torch.cuda.is_available():
    print('gpu:', torch.cuda.get_device_name(), 'capability', torch.cuda.get_device_capability())
print('float32 matmul precision:', torch.get_float32_matmul_precision())
assert 'skopt' not in sys.modules, 'import skkfac pulled in scikit-optimize'
print('import skkfac: no skopt')
"
if [ "$device" = cuda ] && ! "$python" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "no CUDA device: run with --cpu to rehearse" | tee -a "$out/status.txt"
    exit 1
fi

step pytest 270 tests.txt "$python" -m pytest -q -p no:cacheprovider -rs --durations=10 \
    tests/test_cuda.py tests/test_cuda_exact.py tests/test_devices.py tests/test_kfac_exact.py \
    tests/test_mixed_precision.py
grep -E "^\[(sync|cost|precision)\]" "$out/tests.txt" >"$out/syncs.txt"

step step_cost 150 step_cost.txt "$python" -m benchmarks step-cost --device "$device" \
    --batch-sizes $batches --repeats "$repeats" --precision float32 bf16-mixed
! grep -qv ": exit 0 in" "$out/status.txt"
