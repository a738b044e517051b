#!/usr/bin/env bash
# Sets up this checkout for use, tests and benchmarks:
#   1. torch: an installed torch is kept as it is; where there is none, torch==2.13.0 is
#      installed (pinned, so pip takes the local CPU wheel instead of the newest multi-GB CUDA build);
#   2. the other dependencies (requirements.txt);
#   3. the package, editable, built against that torch (--no-build-isolation), which compiles
#      vos_kernels._C (CPU kernels; CUDA kernels too where torch has CUDA and nvcc is found).
# Environment: PYTHON (default python3), and the build knobs documented in setup.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if $PY -c "import torch" >/dev/null 2>&1; then
  echo "[setup] keeping the installed torch $($PY -c 'import torch; print(torch.__version__)')"
else
  echo "[setup] no torch found: installing torch==2.13.0"
  $PY -m pip install --quiet torch==2.13.0
fi
echo "[setup] installing requirements.txt"
$PY -m pip install --quiet -r requirements.txt
echo "[setup] building vos_kernels._C and installing the package (editable)"
$PY -m pip install --quiet --no-build-isolation --no-deps -e .
$PY -c "import vos_kernels; [print(f'[setup] backend {k:9s} {\"yes\" if ok else \"no \"}  {why}') for k, (ok, why) in vos_kernels.available_backends().items()]"
