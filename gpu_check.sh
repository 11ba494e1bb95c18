#!/usr/bin/env bash
# The whole GPU check in one go, for the device machine (or any CUDA box):
#   bash gpu_check.sh [bench.py arguments...]
# GPU tests (pytest -m gpu), then bench.py; logs and tables land in $OUT (default: results/).
set -o pipefail
OUT=${OUT:-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# wheels carried to a machine with no package index (torchao, for bench.py's fp8 rows)
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# the device machine's copy of the tree has no .git: pass BENCH_COMMIT=<hash> from outside
export BENCH_COMMIT=${BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)}
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  commit: ${BENCH_COMMIT:-unknown}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, cupy; print('torch', torch.__version__, 'cupy', cupy.__version__)"
} 2>&1 | tee "$OUT/gpu_env.log"
python3 -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
tests=$?
python3 bench.py --out="$OUT" "$@" 2>&1 | tee "$OUT/bench.log"
bench=$?
echo "gpu tests exit $tests, bench exit $bench"
exit $(( tests || bench ))
