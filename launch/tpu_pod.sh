#!/usr/bin/env bash
# Runs the same training command on every worker of a Cloud TPU VM pod slice.
#   TPU_NAME=my-pod ZONE=us-central2-b bash launch/tpu_pod.sh \
#     --gin_file=models/flan_t5_xl.gin --gin_file=runs/finetune.gin \
#     --gin.MODEL_DIR="'gs://bucket/run1'" --gin.MIXTURE_OR_TASK_NAME="'beauty_rec_aux'"
# Assumes this repository is checked out at $REMOTE_DIR on every worker (e.g.
# by a startup script) and the prepared data is readable from all of them
# (RECJAX_PREPARED_DIRS on a shared file system or GCS).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REMOTE_DIR="${REMOTE_DIR:-recjax}"
args=$(printf ' %q' "$@")
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
  --command="cd $REMOTE_DIR && RECJAX_PREPARED_DIRS='${RECJAX_PREPARED_DIRS:-}' bash launch/train.sh --multi_host$args"
