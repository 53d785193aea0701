#!/usr/bin/env bash
# Runs the test suite: creates or reuses .venv, installs recjax[test,tpu_aot,beam]
# (tpu_aot: libtpu, so tests/test_aot.py compiles for a TPU slice; beam: Apache
# Beam, so tests/test_beam_prepare.py runs the pipelines), runs pytest.
# Extra arguments go to pytest, e.g. `bash launch/test.sh tests/test_split.py -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_venv.sh
ensure_venv test,tpu_aot,beam
export TF_CPP_MIN_LOG_LEVEL=3
exec "$VENV/bin/python" -m pytest "${@:-tests}"
