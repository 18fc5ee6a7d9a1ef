#!/usr/bin/env bash
# Install xearthformer with the demo extras into .venv and run the demo.
# Usage: bash ci/demo.sh [demo args, e.g. --output DIR or --case storms]
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/install.sh demo
.venv/bin/xearthformer demo "$@"
