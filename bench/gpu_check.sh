#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (numba-cuda and PyTorch installed, from
# the `cuda` and `bench` extras or preinstalled): the CUDA tests on the device (the
# simulator off), then the GPU benchmark (bench/bench_gpu.py). Writes everything to $OUT
# (default bench/results/gpu) and finishes in under 5 minutes.
#
#   OUT=/tmp/gpu bash bench/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export NUMBA_ENABLE_CUDASIM=0 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Wheels carried in .whl/ (for a machine with no package index: a NumPy that its Numba
# supports, say) are installed into /tmp/site first.
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
export FUSEJIT_CACHE_DIR="${FUSEJIT_CACHE_DIR:-/tmp/fusejit-gpu-cache}"

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  $PY -c "import sys, numpy, numba, torch; from importlib.metadata import version; from numba import cuda; print(sys.version.split()[0], 'numpy', numpy.__version__, 'numba', numba.__version__, 'numba-cuda', version('numba-cuda'), 'cuda-bindings', version('cuda-bindings'), 'cupy', version('cupy-cuda13x'), 'torch', torch.__version__, 'cuda available', cuda.is_available())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== CUDA tests on the device"
timeout 130 $PY -m pytest -q -n 8 -p no:cacheprovider --tb=short tests/test_cuda.py > "$OUT/cuda_tests.txt" 2>&1
tail -25 "$OUT/cuda_tests.txt"

echo "== GPU benchmark"
timeout 200 $PY bench/bench_gpu.py --budget 0.3 --json "$OUT/gpu_bench.json" 2>&1 | tee "$OUT/gpu_bench.md"
