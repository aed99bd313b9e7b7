#!/usr/bin/env bash
# The GPU machine's software stack on a CPU: Python 3.12, torch 2.11.0 and Triton 3.6.0 from the
# package index, in a virtual environment outside the checkout; then the checks that tell whether
# the project works there before any GPU is lent (see docs/gpu.md, "The GPU machine's stack").
#
#   tools/check_gpu_stack.sh                 # build (or reuse) the venv, run the checks
#   VENV=/tmp/v PYTHON=python3.12 tools/check_gpu_stack.sh
#   CHECKS="dry-run tests" tools/check_gpu_stack.sh   # a subset: dry-run tests lesson baseline
#
# The checks: `gpu-check --quick --dry-run`; the kernel tests, the inspect tests and the four tests
# whose behaviour depends on the stack; lesson 07 (compiles for sm_90a with this Triton's ptxas);
# `python -m fused inspect --check-baseline` (every kernel compiled for sm_90a: minutes).
# The CUDA build of torch pulls about 2 GB of wheels (4.9 GB installed): not a CI step.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/work/venv312}
PYTHON=${PYTHON:-$(command -v python3.12 || echo /root/.pyenv/versions/3.12.1/bin/python)}
CHECKS=${CHECKS:-"dry-run tests lesson baseline"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONPATH=$PWD
LOG=${LOG:-$VENV-logs}
mkdir -p "$LOG"

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, triton; assert torch.__version__.startswith('2.11.0') and triton.__version__ == '3.6.0'" 2>/dev/null; then
    echo "building $VENV with $PYTHON ($("$PYTHON" --version))"
    start=$(date +%s)
    "$PYTHON" -m venv "$VENV"
    # torch 2.11 from PyPI is a CUDA build: it needs its nvidia-* wheels even to import on a CPU.
    # numpy < 2.4: Triton 3.6's interpreter breaks on newer numpy (fused says so at the first launch).
    "$VENV/bin/pip" install -q "torch==2.11.0" "triton==3.6.0" "numpy<2.4" pytest pytest-xdist hypothesis nbclient nbformat \
        ipykernel matplotlib pillow
    "$VENV/bin/pip" install -q --no-deps -e .
    echo "installed in $(( $(date +%s) - start )) s; $(du -sh "$VENV" | cut -f1) on disk"
fi
PY="$VENV/bin/python"
"$PY" -c "import sys, torch, triton, numpy; print('stack: Python', sys.version.split()[0], 'torch', torch.__version__, 'Triton', triton.__version__, 'numpy', numpy.__version__)"
status=0
run() {  # name, command...: run one check, log it, remember a failure
    local name=$1; shift
    echo "== $name: $*"
    if "$@" > "$LOG/$name.log" 2>&1; then echo "   passed ($LOG/$name.log)"; else echo "   FAILED ($LOG/$name.log)"; tail -5 "$LOG/$name.log"; status=1; fi
}
for check in $CHECKS; do
    case $check in
        dry-run) run dry-run "$PY" -m tools.gpu_check --quick --dry-run --out "$LOG/quick-plan" ;;
        tests) run tests "$PY" -m pytest -q -p no:cacheprovider tests/kernels tests/measure/test_inspect.py \
                   tests/measure/test_gpu_check.py ;;
        lesson) run lesson "$PY" -m pytest -q -p no:cacheprovider "tests/lessons/test_lessons.py::test_lesson_runs_top_to_bottom[07_compiler_view]" ;;
        baseline) run baseline "$PY" -m fused inspect --check-baseline ;;
        *) echo "unknown check $check (dry-run, tests, lesson, baseline)"; exit 2 ;;
    esac
done
exit $status
