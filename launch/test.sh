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
# Test files run in parallel worker processes (pytest-xdist; a file's tests
# stay in one worker, which builds its module fixtures once): one per CPU, at
# most 4 (each worker holds JAX and TensorFlow). RECJAX_TEST_WORKERS=N sets
# the count; 0 runs everything in this process.
WORKERS="${RECJAX_TEST_WORKERS:-$(n=$(nproc); echo $(( n < 4 ? n : 4 )))}"
PARALLEL=()
if [[ "$WORKERS" != 0 ]]; then
  # Files in conftest.py's order (the longest first), not xdist's
  # most-tests-first.
  PARALLEL=(-n "$WORKERS" --dist loadfile --no-loadscope-reorder)
fi
if [[ $# -eq 0 ]]; then set -- tests; fi
exec "$VENV/bin/python" -m pytest "${PARALLEL[@]}" "$@"
