#!/usr/bin/env bash
# Install everything the tests need into .venv and run the whole suite on all cores.
# Usage: bash ci/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/install.sh test
set +e
.venv/bin/python -m pytest -n "${XEF_TEST_WORKERS:-auto}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "ci/test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
