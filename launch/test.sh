#!/usr/bin/env bash
# Runs the test suite: creates or reuses .venv, installs recjax[test], runs pytest.
# Extra arguments go to pytest, e.g. `bash launch/test.sh tests/test_split.py -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_venv.sh
ensure_venv test
export TF_CPP_MIN_LOG_LEVEL=3
exec "$VENV/bin/python" -m pytest "${@:-tests}"
