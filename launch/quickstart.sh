#!/usr/bin/env bash
# The main job on the embedded default, offline on a CPU:
#   1. creates .venv if missing and installs recjax;
#   2. prepares the synthetic world (catalogue + interaction logs) into
#      $RECJAX_DATA_DIR/synthetic (default ~/.cache/recjax/synthetic): k-core,
#      leave-one-out split, prompt task files, a SentencePiece vocabulary;
#   3. prints decoded examples of every registered task and the mixture rates.
# Extra arguments go to `recjax prepare` (e.g. --option=num_users=5000).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_venv.sh
ensure_venv
export TF_CPP_MIN_LOG_LEVEL=3
PY="$VENV/bin/python"
DATA_DIR="${RECJAX_DATA_DIR:-$HOME/.cache/recjax}"
export RECJAX_DATA_DIR="$DATA_DIR"

echo "== 1/2 prepare the synthetic world -> $DATA_DIR/synthetic"
"$PY" -m recjax.main prepare --source=synthetic --output="$DATA_DIR/synthetic" \
  --overwrite "$@"
echo
echo "== 2/2 registered mixtures, and two decoded validation examples of every task"
"$PY" -m recjax.main show --task=synthetic_rec,synthetic_rec_aux -n 0
"$PY" -m recjax.main show --split=validation -n 2 \
  --task=synthetic_retrieval,synthetic_ranking,synthetic_rating,synthetic_mim,synthetic_mlm,synthetic_bpr,synthetic_ie
