#!/usr/bin/env bash
# Evaluates a checkpoint with gin configs, T5X style: model gin first, then the run gin, then
# overrides, e.g.
#   bash launch/eval.sh --gin_file=models/flan_t5_tiny.gin \
#     --gin_file=runs/eval.gin --gin.CHECKPOINT_PATH="'/tmp/run'" \
#     --gin.EVAL_OUTPUT_DIR="'/tmp/run_eval'"
# Gin files are looked up in gin_configs/ and the project root.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_venv.sh
ensure_venv
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
exec "$VENV/bin/python" -m recjax.main eval "$@"
