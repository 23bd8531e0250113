#!/usr/bin/env bash
# Install metazoo and its test tools into the current Python.
# torch is installed first and pinned so that pip takes the CPU build that lies on disk on
# machines that have one, instead of resolving "torch>=2.1" to a multi-GB CUDA download.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==${METAZOO_TORCH_VERSION:-2.13.0}"
fi
"$PY" -m pip install -q -e ".[test]"
