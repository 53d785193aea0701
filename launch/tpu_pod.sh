#!/usr/bin/env bash
# Runs one recjax command on every worker of a Cloud TPU VM pod slice, with the
# same gin flags as on one machine (T5X style):
#
#   TPU_NAME=my-pod ZONE=us-central2-b bash launch/tpu_pod.sh train \
#     --gin_file=models/flan_t5_xxl.gin --gin_file=runs/finetune.gin \
#     --gin.MODEL_DIR="'gs://bucket/run1'" --gin.MIXTURE_OR_TASK_NAME="'beauty_rec_aux'" \
#     --gin.partitioning.Partitioner.num_partitions=16 --gin.BATCH_SIZE=256
#   TPU_NAME=my-pod ZONE=us-central2-b bash launch/tpu_pod.sh eval \
#     --gin_file=models/flan_t5_xxl.gin --gin_file=runs/eval.gin \
#     --gin.CHECKPOINT_PATH="'gs://bucket/run1'" --gin.EVAL_OUTPUT_DIR="'gs://bucket/run1_eval'"
#   TPU_NAME=my-pod ZONE=us-central2-b bash launch/tpu_pod.sh infer \
#     --gin_file=models/flan_t5_xxl.gin --gin_file=runs/infer.gin \
#     --gin.CHECKPOINT_PATH="'gs://bucket/run1'" --gin.INFER_OUTPUT_DIR="'gs://bucket/run1_infer'"
#
# COMMAND is train (the default when the first argument is a flag), eval or
# infer; it runs as launch/COMMAND.sh --multi_host on all workers at once
# (gcloud ... ssh --worker=all). Each worker calls jax.distributed.initialize(),
# which finds the pod's coordinator, process count and index from the TPU
# metadata, and reads its own SeqIO shard (ShardInfo = process index / count).
# Check first that the configuration fits the slice, on any machine:
#   recjax aot --gin_file=models/flan_t5_xxl.gin --topology=v5e-256 ...
#
# Assumes this repository is checked out at $REMOTE_DIR on every worker (e.g.
# by a startup script; the launch scripts create the venv on first use) and
# that MODEL_DIR, checkpoints and prepared data are on storage every worker
# reads (GCS or a shared file system; RECJAX_PREPARED_DIRS names prepared dirs
# to register). DRY_RUN=1 prints the gcloud command instead of running it.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REMOTE_DIR="${REMOTE_DIR:-recjax}"
command=train
case "${1:-}" in
  train|eval|infer) command="$1"; shift ;;
  -*|"") ;;
  *) echo "tpu_pod.sh: unknown command '$1' (train, eval or infer)" >&2; exit 2 ;;
esac
args=$(printf ' %q' "$@")
env_vars=""
for var in RECJAX_PREPARED_DIRS RECJAX_DATA_DIR; do  # passed on when set here
  [ -n "${!var:-}" ] && env_vars+="$var=$(printf %q "${!var}") "
done
remote="cd $REMOTE_DIR && ${env_vars}bash launch/$command.sh --multi_host$args"
cmd=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all
     --command="$remote")
if [ -n "${DRY_RUN:-}" ]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
exec "${cmd[@]}"
