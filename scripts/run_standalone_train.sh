#!/bin/bash
# Train YOLACT / YOLACT++ on one device.
#
#   bash scripts/run_standalone_train.sh
#       the built-in CPU demo: generates the synthetic shapes data set in <repo>/data/synthetic,
#       converts it to MindRecord in <repo>/data/synthetic_mindrecord (each step only when
#       its output is missing or older than its input),
#       trains the yolact_plus_demo config on CPU from scratch, validating every 400
#       iterations (its best checkpoint kept), evaluates the last checkpoint on the synthetic
#       val split with eval.py, prints its box and mask AP and plots the run (metrics.png).
#   bash scripts/run_standalone_train.sh CONFIG MINDRECORD_DIR [DEVICE_TARGET] [train.py args...]
#       CONFIG: a variant name (src/config/variants.py) or a YAML file;
#       MINDRECORD_DIR: --output_dir of create_mindrecord.py (holds the train split);
#       DEVICE_TARGET: CPU (default), GPU or Ascend; the rest goes to train.py unchanged,
#       e.g. --batch_size 4 --resume auto --opts train.lr=0.002
#       Environment: DEVICE_ID (GPU/Ascend, default 0).
#       Log: <output_dir>/train.log.
#   bash scripts/run_standalone_train.sh DEVICE_ID [train.py args...]
#       the model zoo's form (a number as the first argument): trains on device DEVICE_ID with
#       the settings of the environment:
#         CONFIG          variant name or YAML file (default yolact_plus_resnet50)
#         MINDRECORD_DIR  --output_dir of create_mindrecord.py (required)
#         DEVICE_TARGET   Ascend (default), GPU or CPU
#       e.g. CONFIG=yolact_plus_resnet50 MINDRECORD_DIR=/data/coco_mindrecord \
#            bash scripts/run_standalone_train.sh 0
#       A missing or wrong setting is one error line naming the variable (exit 1).
#       Log: <output_dir>/device<DEVICE_ID>/train.log, next to env.log (what it was started
#       with). Unlike the zoo's script it runs in the foreground (prefix nohup, append & to
#       detach) and does not copy the sources.
#
# Environment: PYTHON (default python).
# Checkpoints go to --output_dir (default <repo>/output/<config name>).
# Ctrl+C: train.py saves a checkpoint and exits 130; resume with --resume auto.

usage() {
    echo "Usage: bash $0 [CONFIG MINDRECORD_DIR [DEVICE_TARGET] [train.py args...]]" >&2
    echo "       bash $0 DEVICE_ID [train.py args...]   (CONFIG, MINDRECORD_DIR, DEVICE_TARGET from the environment)" >&2
    echo "       (no arguments: the synthetic CPU demo)" >&2
    exit 1
}

ZOO=
source "$(dirname "$0")/launcher_common.sh"

prepare_demo_data() {
    local data=$REPO/data/synthetic
    MINDRECORD_DIR=$REPO/data/synthetic_mindrecord
    # Regenerates only when the data there came from other arguments or an older generator.
    echo "synthetic data set in $data"
    (cd "$REPO" && "$PYTHON" tools/make_synthetic.py --out "$data" --overwrite --keep_current) \
        || fail "generating the synthetic data set in $data failed"
    local split annotations
    for split in train val; do
        annotations=$data/annotations/instances_$split.json
        if [ "$MINDRECORD_DIR/$split/dataset_info.json" -nt "$annotations" ]; then
            echo "using the $split MindRecord in $MINDRECORD_DIR/$split"
            continue
        fi
        "$PYTHON" "$REPO/create_mindrecord.py" --ann_file "$annotations" \
            --image_dir "$data/$split" --output_dir "$MINDRECORD_DIR" --split "$split" \
            --num_shards 1 --overwrite || fail "converting the $split split failed"
    done
}

DEMO=
if [ $# -eq 0 ]; then
    CONFIG=yolact_plus_demo
    DEVICE_TARGET=CPU
    DEMO=1
    prepare_demo_data
    EXTRA_ARGS=(--eval_every 400)
elif [[ $1 =~ ^[0-9]+$ ]]; then
    ZOO=1
    export DEVICE_ID=$1 RANK_ID=0 RANK_SIZE=1
    EXTRA_ARGS=("${@:2}")
    settings_from_env
elif [ $# -eq 1 ]; then
    usage
else
    CONFIG=$1
    MINDRECORD_DIR=$2
    DEVICE_TARGET=${3:-CPU}
    EXTRA_ARGS=("${@:4}")
    resolve_config
    check_mindrecord_dir
fi

case $DEVICE_TARGET in
    CPU|GPU|Ascend) ;;
    *) echo "$0: error: DEVICE_TARGET '$DEVICE_TARGET': expected CPU, GPU or Ascend" >&2; usage ;;
esac
if [ "$DEVICE_TARGET" != CPU ]; then
    export DEVICE_ID=${DEVICE_ID:-0}
fi

resolve_output_dir
if [ -n "$ZOO" ]; then
    write_env_log "$OUTPUT_DIR/device$DEVICE_ID"
    LOG=$OUTPUT_DIR/device$DEVICE_ID/train.log
    echo "training $CONFIG on $DEVICE_TARGET device $DEVICE_ID with $MINDRECORD_DIR; log: $LOG"
else
    LOG=$OUTPUT_DIR/train.log
    echo "training $CONFIG on $DEVICE_TARGET with $MINDRECORD_DIR; log: $LOG"
fi
TRAIN_START=$SECONDS
# tee ignores Ctrl+C, so that it still records train.py saving its checkpoint and stopping.
"$PYTHON" "$REPO/train.py" --config "$CONFIG" --mindrecord_dir "$MINDRECORD_DIR" \
    --device_target "$DEVICE_TARGET" --output_dir "$OUTPUT_DIR" "${EXTRA_ARGS[@]}" 2>&1 \
    | (trap '' INT; tee "$LOG")
STATUS=${PIPESTATUS[0]}
if [ "$STATUS" -ne 0 ]; then
    echo "$0: train.py stopped with exit code $STATUS (2: bad input or diverged, 130: interrupted, resume with --resume auto); log: $LOG" >&2
    exit "$STATUS"
fi
echo "training took $(((SECONDS - TRAIN_START) / 60)) min $(((SECONDS - TRAIN_START) % 60)) s; log: $LOG"
[ -n "$DEMO" ] || exit 0

# The demo's last checkpoint is the one train.py names on its last line.
CKPT=$(sed -n 's/^done; last checkpoint: //p' "$LOG" | tail -n 1)
[ -f "$CKPT" ] || fail "no checkpoint named at the end of $LOG"
echo "evaluating $CKPT on the synthetic val split; log: $OUTPUT_DIR/eval.log"
"$PYTHON" "$REPO/eval.py" --config "$CONFIG" --ckpt "$CKPT" --device_target CPU \
    --ann_file "$REPO/data/synthetic/annotations/instances_val.json" \
    --mindrecord_dir "$MINDRECORD_DIR" --split val 2>&1 | tee "$OUTPUT_DIR/eval.log"
STATUS=${PIPESTATUS[0]}
[ "$STATUS" -eq 0 ] || exit "$STATUS"
"$PYTHON" "$REPO/tools/plot_metrics.py" "$OUTPUT_DIR"
