#!/usr/bin/env bash
# The one GPU check: build, GPU tests, kernel and model benchmarks, training step, long video,
# roofline comparison; CSVs, logs and summary.md in OUT_DIR. Runs in under 9 minutes on one H200.
#   bash scripts/gpu_check.sh OUT_DIR            # on a machine with a CUDA GPU
#   bash scripts/gpu_check.sh --dry-run OUT_DIR  # the same stages on the CPU at toy sizes
# PYTHON selects the interpreter (default python3). The stages are Python: scripts/gpu_check/.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m gpu_check "$@"
