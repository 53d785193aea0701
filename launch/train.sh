#!/usr/bin/env bash
# Trains with gin configs, T5X style: model gin first, then the run gin, then
# overrides, e.g.
#   bash launch/train.sh --gin_file=models/flan_t5_tiny.gin \
#     --gin_file=runs/finetune.gin --gin.MODEL_DIR="'/tmp/run'"
# Gin files are looked up in gin_configs/ and the project root. Re-running
# with the same MODEL_DIR resumes from its latest checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_venv.sh
ensure_venv
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
exec "$VENV/bin/python" -m recjax.main train "$@"
