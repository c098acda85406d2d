#!/usr/bin/env bash
# The GPU benchmark in one script: on a CUDA machine, the matcher and training-step benchmarks with
# AMP (bf16) at batch 4 and 512^2, then the tests marked gpu; writes reports/bench/gpu.json.
#   bench/gpu.sh                       # on the GPU machine, from the repository root or anywhere
#   DEVICE=cpu bench/gpu.sh --quick    # the same chain on CPU at 64^2 (what the test suite checks)
# Extra arguments go to `python -m bench.gpu` (--amp, --batch, --out).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
exec "$PY" -m bench.gpu --device "${DEVICE:-cuda}" "$@"
