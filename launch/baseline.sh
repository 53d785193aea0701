#!/usr/bin/env bash
# Trains and evaluates a classical recommender (Pop, BPR-MF or SASRec) on a
# prepared directory with RecBole's protocol, e.g.
#   bash launch/baseline.sh --model=sasrec --data="$HOME/.cache/recjax/synthetic" \
#     --output=/tmp/baselines/sasrec --epochs=5
# Writes metrics.json (test Recall/NDCG@K under "test") and the embeddings;
# see recjax/baselines/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_venv.sh
ensure_venv
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
exec "$VENV/bin/python" -m recjax.main baseline "$@"
