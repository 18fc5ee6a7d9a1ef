#!/usr/bin/env bash
# Build the documentation offline into docs/_build/html, with warnings as errors.
# Installs xearthformer (demo + data extras) and ci/requirements-docs.txt into .venv first;
# the tutorial notebooks are executed during the build in their fast mode.
# Usage: bash ci/docs.sh [extra sphinx-build args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/install.sh "demo,data"
.venv/bin/python -m pip install --disable-pip-version-check -q -r ci/requirements-docs.txt
rm -rf docs/_build docs/generated
export XEF_TUTORIAL_FAST=1 OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
.venv/bin/python -m sphinx -b html -W --keep-going docs docs/_build/html "$@"
echo "ci/docs.sh: built docs/_build/html/index.html"
