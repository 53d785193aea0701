#!/usr/bin/env bash
# The main job, end to end on the embedded synthetic world (CPU, offline):
#   1. prepare the synthetic world (catalogue + logs -> k-core, leave-one-out
#      split, prompt task files, a SentencePiece vocabulary);
#   2. train the tiny FLAN-T5 from scratch on synthetic_rec_aux (rec tasks +
#      MIM/MLM/BPR/item-ID auxiliary tasks: the alignment method);
#   3. evaluate it on the test split: retrieval by constrained beam search
#      (20 beams over the catalogue trie), ranking of 20 candidates by
#      likelihood, rating RMSE;
#   4. train and evaluate Pop, BPR-MF and SASRec on the same split;
#   5. ILM: align an item encoder (a Q-Former over BPR-MF's item embeddings)
#      with the item texts (phase 1), then train it to feed 4 soft tokens per
#      item to the FLAN-T5 of step 2, frozen (phase 2), and evaluate it the
#      same way;
#   6. RSLLM: the FLAN-T5 of step 2 is stage 1 (text-only prompts); stage 2
#      trains LoRA adapters and a projector that puts SASRec's item embeddings
#      (an ID slot after each title) and its sequence state (a user slot after
#      the history) into the LM's input, with the next-item loss and two
#      InfoNCE losses; evaluated the same way;
#   7. print the comparison table and save results.{md,json,png}.
#
# `bash launch/quickstart.sh --all` adds the comparison rows: a tiny
# decoder-only (Llama-architecture) LM trained like the FLAN-T5 of step 2,
# the tiny FLAN-T5 trained on synthetic_rec alone (rec tasks without the
# auxiliary ones), ILM with an unaligned (phase 2 only) item encoder, and
# RSLLM's ablations (no stage 1, no user-item InfoNCE, no ID-text InfoNCE, no
# ID slots). The README says what each row costs.
#
# Everything goes to $RECJAX_QUICKSTART_DIR (default
# $RECJAX_DATA_DIR/quickstart, i.e. ~/.cache/recjax/quickstart), which is
# replaced on every run. QUICKSTART_STEPS overrides the training steps of each
# LM run (default: TRAIN_STEPS of gin_configs/runs/quickstart.gin);
# ILM_PHASE1_STEPS / ILM_PHASE2_STEPS those of ILM's phases (300 / 200),
# RSLLM_STEPS that of RSLLM's stage 2 (200).
set -euo pipefail
ALL=0
for arg in "$@"; do
  case "$arg" in
    --all) ALL=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "quickstart.sh: unknown argument '$arg' (valid: --all, --help)" >&2
       exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
source launch/_venv.sh
ensure_venv
export TF_CPP_MIN_LOG_LEVEL=3
PY="$VENV/bin/python"
export RECJAX_DATA_DIR="${RECJAX_DATA_DIR:-$HOME/.cache/recjax}"
OUT="${RECJAX_QUICKSTART_DIR:-$RECJAX_DATA_DIR/quickstart}"
DATA="$RECJAX_DATA_DIR/synthetic"
export RECJAX_SYNTHETIC_DIR="$DATA"
STEPS=()
if [[ -n "${QUICKSTART_STEPS:-}" ]]; then
  STEPS=("--gin.TRAIN_STEPS=$QUICKSTART_STEPS")
fi
START=$SECONDS
stage() { echo; echo "== [$(( (SECONDS - START) / 60 ))m$(( (SECONDS - START) % 60 ))s] $*"; }

rm -rf "$OUT"
mkdir -p "$OUT"

stage "1/7 prepare the synthetic world -> $DATA"
# Quickstart prompt settings (README, "What the quickstart does"): 10 history
# items, 20 ranking candidates, and more MIM/BPR examples per user so the
# auxiliary tasks are a real share of synthetic_rec_aux.
"$PY" -m recjax.main prepare --source=synthetic --output="$DATA" --overwrite \
  --max_history=10 --num_negatives=19 \
  --prompt=mim_examples_per_user=10 --prompt=bpr_pairs_per_user=10
"$PY" -m recjax.main show --task=synthetic_rec,synthetic_rec_aux -n 0
# The same world with an item slot after each mention (title, id, then the
# slot ILM fills with soft tokens), in the LM's vocabulary: synthetic_slots_*.
SLOTS="$RECJAX_DATA_DIR/synthetic_slots"
export RECJAX_SYNTHETIC_SLOTS_DIR="$SLOTS"
"$PY" -m recjax.main prepare --source=synthetic --name=synthetic_slots \
  --output="$SLOTS" --overwrite --max_history=10 --num_negatives=19 \
  --prompt=item_slots=append --vocab="$DATA/vocab/spiece.model"
# ...and for RSLLM: an ID slot after each mention and a user slot after each
# history (the rec tasks only): synthetic_rsllm_*.
RSLLM_DATA="$RECJAX_DATA_DIR/synthetic_rsllm"
export RECJAX_SYNTHETIC_RSLLM_DIR="$RSLLM_DATA"
"$PY" -m recjax.main prepare --source=synthetic --name=synthetic_rsllm \
  --output="$RSLLM_DATA" --overwrite --max_history=10 --num_negatives=19 \
  --tasks=retrieval,ranking,rating --prompt=item_slots=append \
  --prompt=user_slot=true --vocab="$DATA/vocab/spiece.model"

# `recjax eval` of $OUT/train_NAME on the test split into $OUT/eval_NAME:
#   evaluate NAME MODEL_GIN MIXTURE LENGTHS [gin files and flags after eval.gin]
evaluate() {
  local name=$1 gin=$2 mix=$3 lengths=$4
  shift 4
  "$PY" -m recjax.main eval --gin_file="$gin" --gin_file=runs/eval.gin "$@" \
    --gin.ACTIVATION_DTYPE="'float32'" --gin.evaluate.auto_vocab_size=True \
    --gin.MIXTURE_OR_TASK_NAME="'$mix'" --gin.TASK_FEATURE_LENGTHS="$lengths" \
    --gin.CHECKPOINT_PATH="'$OUT/train_$name'" \
    --gin.EVAL_OUTPUT_DIR="'$OUT/eval_$name'"
}
# The small second-stage runs on the tiny FLAN-T5 (ILM phase 2, RSLLM stage 2).
SECOND_STAGE=(--gin.BATCH_SIZE=16 --gin.DROPOUT_RATE=0.0
  --gin.ACTIVATION_DTYPE="'float32'" --gin.train.auto_vocab_size=True
  --gin.EVAL_PERIOD=50 --gin.EVAL_STEPS=4 --gin.SAVING_PERIOD=200
  --gin.KEEP_CHECKPOINTS=1 --gin.train.log_every=25)

# Runs: "label|model gin|mixture|dir". The default trains one row per
# method; --all adds the comparison rows.
RUNS=("tiny FLAN-T5, rec+aux|models/flan_t5_tiny.gin|synthetic_rec_aux|t5_rec_aux")
if (( ALL )); then
  RUNS+=("tiny decoder-only, rec+aux (\`--all\`)|models/decoder_tiny.gin|synthetic_rec_aux|dec_rec_aux"
         "tiny FLAN-T5, rec (\`--all\`)|models/flan_t5_tiny.gin|synthetic_rec|t5_rec")
fi

for RUN in "${RUNS[@]}"; do
  IFS='|' read -r LABEL GIN MIX NAME <<< "$RUN"
  stage "2/7 train $LABEL ($GIN on $MIX) -> $OUT/train_$NAME"
  "$PY" -m recjax.main train --gin_file="$GIN" \
    --gin_file=runs/quickstart.gin \
    --gin.MIXTURE_OR_TASK_NAME="'$MIX'" \
    --gin.MODEL_DIR="'$OUT/train_$NAME'" "${STEPS[@]}"
done

for RUN in "${RUNS[@]}"; do
  IFS='|' read -r LABEL GIN MIX NAME <<< "$RUN"
  stage "3/7 evaluate $LABEL on the test split -> $OUT/eval_$NAME"
  evaluate "$NAME" "$GIN" synthetic_rec "{'inputs': 512, 'targets': 16}"
done

# SASRec is capped at 3 epochs to fit the time budget (its default is 30
# with early stopping; `recjax baseline --model=sasrec` without --epochs).
for SPEC in pop bpr "sasrec --epochs=3"; do
  MODEL=${SPEC%% *}
  stage "4/7 baseline $MODEL -> $OUT/baseline_$MODEL"
  # shellcheck disable=SC2086
  "$PY" -m recjax.main baseline --model=$SPEC --data="$DATA" \
    --output="$OUT/baseline_$MODEL"
done

# ILM (gin_configs/runs/ilm_phase{1,2}.gin): phase 1 aligns the item encoder
# with the item texts; phase 2 trains it (and only it) to feed the frozen
# FLAN-T5 of step 2 on synthetic_slots_rec_conv (rec tasks + multi-turn
# conversations). ILM inputs hold titles, ids and 4 slot tokens per item:
# 768 input tokens fit the 30-item ranking prompts.
ILM_LENGTHS="{'inputs': 768, 'targets': 16, 'slot_items': 32}"
stage "5/7 ILM phase 1: item encoder over BPR-MF's embeddings -> $OUT/ilm_phase1"
"$PY" -m recjax.main train --gin_file=runs/ilm_phase1.gin \
  --gin.MIXTURE_OR_TASK_NAME="'synthetic_slots_item_text'" \
  --gin.CF_EMBEDDINGS_DIR="'$OUT/baseline_bpr'" \
  --gin.MODEL_DIR="'$OUT/ilm_phase1'" --gin.TRAIN_STEPS="${ILM_PHASE1_STEPS:-300}" \
  --gin.KEEP_CHECKPOINTS=1 --gin.train.log_every=50
ILM_RUNS=("ILM (tiny FLAN-T5 frozen)|'$OUT/ilm_phase1'|ilm")
if (( ALL )); then
  ILM_RUNS+=("ILM, unaligned encoder (\`--all\`)|None|ilm_unaligned")
fi
for RUN in "${ILM_RUNS[@]}"; do
  IFS='|' read -r LABEL ENCODER NAME <<< "$RUN"
  stage "5/7 ILM phase 2: $LABEL -> $OUT/train_$NAME"
  "$PY" -m recjax.main train --gin_file=models/flan_t5_tiny.gin \
    --gin_file=runs/ilm_phase2.gin \
    --gin.MIXTURE_OR_TASK_NAME="'synthetic_slots_rec_conv'" \
    --gin.CF_EMBEDDINGS_DIR="'$OUT/baseline_bpr'" \
    --gin.INITIAL_CHECKPOINT_PATH="'$OUT/train_t5_rec_aux'" \
    --gin.ITEM_ENCODER_CHECKPOINT="$ENCODER" \
    --gin.TASK_FEATURE_LENGTHS="$ILM_LENGTHS" \
    --gin.TRAIN_STEPS="${ILM_PHASE2_STEPS:-200}" "${SECOND_STAGE[@]}" \
    --gin.MODEL_DIR="'$OUT/train_$NAME'"
  stage "5/7 evaluate $LABEL on the test split -> $OUT/eval_$NAME"
  evaluate "$NAME" models/flan_t5_tiny.gin synthetic_slots_rec "$ILM_LENGTHS" \
    --gin_file=runs/ilm_model.gin --gin.CF_EMBEDDINGS_DIR="'$OUT/baseline_bpr'"
done

# RSLLM (gin_configs/runs/rsllm_stage{1,2}.gin): stage 1 is the text-only
# FLAN-T5 of step 2; stage 2 trains LoRA + the projector over SASRec (step 4)
# on synthetic_rsllm_rec (title, id and ID slot per item: 768 input tokens fit
# the 30-item ranking prompts). Runs: "label|initial checkpoint|extra gin
# flag|dir"; the "no ID slots" ablation is stage 2's recipe (LoRA, AdamW) on
# the text-only prompts.
RSLLM_LENGTHS="{'inputs': 768, 'targets': 16, 'slot_items': 48}"
RSLLM_RUNS=("RSLLM (tiny FLAN-T5, stage 1 + 2)|'$OUT/train_t5_rec_aux'||rsllm")
if (( ALL )); then
  RSLLM_RUNS+=(
    "RSLLM, no stage 1 (\`--all\`)|None|--gin.LORA=None|rsllm_no_stage1"
    "RSLLM, no user-item InfoNCE (\`--all\`)|'$OUT/train_t5_rec_aux'|--gin.USER_ITEM_WEIGHT=0.0|rsllm_no_ui"
    "RSLLM, no ID-text InfoNCE (\`--all\`)|'$OUT/train_t5_rec_aux'|--gin.ID_TEXT_WEIGHT=0.0|rsllm_no_it"
    "RSLLM, no ID slots (\`--all\`)|'$OUT/train_t5_rec_aux'|text|rsllm_no_slots")
fi
for RUN in "${RSLLM_RUNS[@]}"; do
  IFS='|' read -r LABEL INIT EXTRA NAME <<< "$RUN"
  if [[ "$EXTRA" == text ]]; then  # the text model, continued with LoRA
    MODEL_GINS=(--gin_file=runs/finetune.gin --gin_file=runs/lora.gin)
    MIX=synthetic_rec; LENGTHS="{'inputs': 512, 'targets': 16}"; EXTRA=()
    EVAL_GINS=(--gin_file=runs/lora.gin)
  else
    MODEL_GINS=(--gin_file=runs/rsllm_stage2.gin
                --gin.SASREC_DIR="'$OUT/baseline_sasrec'")
    MIX=synthetic_rsllm_rec; LENGTHS="$RSLLM_LENGTHS"
    EXTRA=(${EXTRA:+"$EXTRA"})
    EVAL_GINS=(--gin_file=runs/lora.gin --gin_file=runs/rsllm_model.gin
               --gin.SASREC_DIR="'$OUT/baseline_sasrec'" "${EXTRA[@]}")
  fi
  stage "6/7 RSLLM stage 2: $LABEL -> $OUT/train_$NAME"
  "$PY" -m recjax.main train --gin_file=models/flan_t5_tiny.gin \
    "${MODEL_GINS[@]}" "${EXTRA[@]}" \
    --gin.MIXTURE_OR_TASK_NAME="'$MIX'" \
    --gin.INITIAL_CHECKPOINT_PATH="$INIT" \
    --gin.TASK_FEATURE_LENGTHS="$LENGTHS" \
    --gin.TRAIN_STEPS="${RSLLM_STEPS:-200}" "${SECOND_STAGE[@]}" \
    --gin.MODEL_DIR="'$OUT/train_$NAME'"
  stage "6/7 evaluate $LABEL on the test split -> $OUT/eval_$NAME"
  evaluate "$NAME" models/flan_t5_tiny.gin "$MIX" "$LENGTHS" "${EVAL_GINS[@]}"
done

stage "7/7 results -> $OUT/results.{md,json,png}"
REPORT=()
for RUN in "${RUNS[@]}"; do
  IFS='|' read -r LABEL GIN MIX NAME <<< "$RUN"
  REPORT+=(--lm "$LABEL=$OUT/eval_$NAME" --curves "$LABEL=$OUT/train_$NAME")
done
for RUN in "${ILM_RUNS[@]}"; do
  IFS='|' read -r LABEL ENCODER NAME <<< "$RUN"
  REPORT+=(--lm "$LABEL=$OUT/eval_$NAME" --curves "$LABEL=$OUT/train_$NAME")
done
for RUN in "${RSLLM_RUNS[@]}"; do
  IFS='|' read -r LABEL INIT EXTRA NAME <<< "$RUN"
  REPORT+=(--lm "$LABEL=$OUT/eval_$NAME" --curves "$LABEL=$OUT/train_$NAME")
done
"$PY" -m recjax.infer.report "${REPORT[@]}" \
  --baseline "Pop=$OUT/baseline_pop" \
  --baseline "BPR-MF=$OUT/baseline_bpr" \
  --baseline "SASRec=$OUT/baseline_sasrec" \
  --output "$OUT"
echo
echo "Done in $(( (SECONDS - START) / 60 ))m$(( (SECONDS - START) % 60 ))s. Table: $OUT/results.md  Plot: $OUT/results.png"
