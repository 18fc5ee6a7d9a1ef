#!/usr/bin/env bash
# Set up .venv with xearthformer and its extras on a fresh machine.
# Usage: bash ci/install.sh [EXTRAS]   (EXTRAS default "demo"; "test" for the test suite)
# torch is installed first, pinned to the CPU wheel, so that resolving the other requirements
# never pulls a multi-GB CUDA build. Set TORCH_SPEC to use another build (e.g. your GPU one).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-demo}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)
"${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}"
"${pip[@]}" -e ".[${extras}]"
if [ "$extras" = "test" ]; then
  "${pip[@]}" -r ci/requirements-test.txt
  # The official implementation is a test oracle only; its own pins (old torch, lightning) are skipped.
  "${pip[@]}" --no-deps "earthformer==0.2.1"
fi
