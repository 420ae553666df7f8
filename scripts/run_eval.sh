#!/usr/bin/env bash
# COCO evaluation (box and mask AP) of a checkpoint with eval.py, on one device, or sharded
# over NUM_DEVICES devices of this machine by msrun (eval.py --distribute: rank r detects
# every NUM_DEVICES-th image from the r-th, rank 0 gathers the results and evaluates once;
# the AP is the one device's).
#
#   bash scripts/run_eval.sh CONFIG CKPT ANN_FILE IMAGE_DIR [DEVICE_TARGET [NUM_DEVICES]] [eval.py args...]
#
#   CONFIG         variant name (e.g. yolact_plus_resnet50) or a .yaml file
#   CKPT           checkpoint of that config (trained or converted)
#   ANN_FILE       COCO-format annotations, e.g. annotations/instances_val2017.json, or an
#                  image-info file (image_info_test-dev2017.json: upload zips, no AP here)
#   IMAGE_DIR      the images, e.g. val2017/ (or a create_mindrecord.py output folder)
#   DEVICE_TARGET  CPU (default), GPU or Ascend
#   NUM_DEVICES    processes, one per device (default 1)
#   eval.py args   e.g. --classwise, --max_images 500, --batch_size 4
#
# Results: ./eval_results_bbox.json and _segm.json (--output_json PREFIX moves them); log:
# ./eval.log, or ./eval_log/worker_<rank>.log (rank 0 holds the AP) with several devices.
# Environment: PYTHON (default python); MASTER_PORT, msrun's port (default 8119, next to
# training's 8118). Exit code: eval.py's (2: bad input, named in one line), 130 on Ctrl+C.

usage() {
    echo "Usage: bash $0 CONFIG CKPT ANN_FILE IMAGE_DIR [DEVICE_TARGET [NUM_DEVICES]] [eval.py args...]" >&2
    echo "       DEVICE_TARGET: CPU (default), GPU or Ascend; NUM_DEVICES > 1 runs eval.py --distribute under msrun" >&2
    exit 1
}

fail() {
    echo "$0: error: $*" >&2
    exit 1
}

[ $# -ge 4 ] || usage
CONFIG=$1
CKPT=$2
ANN_FILE=$3
IMAGE_DIR=$4
shift 4
DEVICE_TARGET=CPU
NUM_DEVICES=1
if [ $# -ge 1 ] && [[ $1 != -* ]]; then
    DEVICE_TARGET=$1
    shift
    if [ $# -ge 1 ] && [[ $1 != -* ]]; then
        NUM_DEVICES=$1
        shift
    fi
fi
case $DEVICE_TARGET in
    CPU|GPU|Ascend) ;;
    *) fail "DEVICE_TARGET '$DEVICE_TARGET': expected CPU, GPU or Ascend" ;;
esac
[[ $NUM_DEVICES =~ ^[1-9][0-9]*$ ]] || fail "NUM_DEVICES '$NUM_DEVICES': expected a positive integer"

REPO=$(realpath "$(dirname "$0")/..")
PYTHON=${PYTHON:-python}
PYTHON_PATH=$(command -v "$PYTHON") || fail "'$PYTHON' not found; activate the environment or set PYTHON"
# MindSpore's oneDNN convolutions are 30-150x slower on AVX-512 CPUs without this cap.
export ONEDNN_MAX_CPU_ISA=${ONEDNN_MAX_CPU_ISA:-AVX2}

case $CONFIG in
    *.yaml|*.yml)
        [ -f "$CONFIG" ] || fail "config file $CONFIG does not exist"
        CONFIG=$(realpath "$CONFIG") ;;
esac
[ -f "$CKPT" ] || fail "CKPT $CKPT: file not found"
[ -f "$ANN_FILE" ] || fail "ANN_FILE $ANN_FILE: file not found"
[ -d "$IMAGE_DIR" ] || fail "IMAGE_DIR $IMAGE_DIR: folder not found"
CKPT=$(realpath "$CKPT")
ANN_FILE=$(realpath "$ANN_FILE")
IMAGE_DIR=$(realpath "$IMAGE_DIR")
# A MindRecord output folder holds a split folder with dataset_info.json.
if [ -f "$IMAGE_DIR/val/dataset_info.json" ]; then
    SOURCE=(--mindrecord_dir "$IMAGE_DIR")
else
    SOURCE=(--image_dir "$IMAGE_DIR")
fi
# The default results place comes first: an --output_json among the user's arguments wins.
EVAL_ARGS=(--config "$CONFIG" --ckpt "$CKPT" --ann_file "$ANN_FILE" "${SOURCE[@]}"
           --device_target "$DEVICE_TARGET" --output_json "$(pwd)/eval_results" "$@")

# Ctrl+C reaches eval.py (or msrun, which then kills its workers and exits 0): remember it,
# so that the exit code says the run was stopped.
STOPPED=
trap 'STOPPED=130' INT
trap 'STOPPED=143' TERM
STATUS=0
if [ "$NUM_DEVICES" -eq 1 ]; then
    LOG=$(pwd)/eval.log
    echo "evaluating $CKPT on $ANN_FILE ($DEVICE_TARGET); log: $LOG"
    "$PYTHON" "$REPO/eval.py" "${EVAL_ARGS[@]}" > "$LOG" 2>&1 || STATUS=$?
    LOGS=("$LOG")
else
    MSRUN=$(command -v msrun) || fail "msrun not found next to $PYTHON_PATH or in PATH (it comes with MindSpore >= 2.3)"
    # msrun starts the workers as plain 'python': put the chosen interpreter's folder first.
    export PATH=$(dirname "$PYTHON_PATH"):$PATH
    LOG_DIR=$(pwd)/eval_log
    mkdir -p "$LOG_DIR" || fail "cannot create the log folder $LOG_DIR"
    rm -f "$LOG_DIR"/worker_*.log
    LOG=$LOG_DIR/worker_0.log
    echo "evaluating $CKPT on $ANN_FILE ($NUM_DEVICES x $DEVICE_TARGET); logs: $LOG_DIR/worker_<rank>.log"
    "$MSRUN" --worker_num="$NUM_DEVICES" --local_worker_num="$NUM_DEVICES" \
        --master_port="${MASTER_PORT:-8119}" --join=True --log_dir="$LOG_DIR" \
        "$REPO/eval.py" "${EVAL_ARGS[@]}" --distribute > "$LOG_DIR/msrun.log" 2>&1 || STATUS=$?
    LOGS=("$LOG_DIR"/worker_*.log)
fi
if [ -n "$STOPPED" ]; then
    echo "$0: stopped (logs: ${LOGS[*]})" >&2
    exit "$STOPPED"
fi
if [ "$STATUS" -ne 0 ]; then
    # eval.py's own one-line error, from whichever rank printed it: its exit code is 2 (bad
    # input), which msrun turns into 1.
    ERROR=$(grep -h "^eval.py: error:" "${LOGS[@]}" 2> /dev/null | head -n 1)
    [ -z "$ERROR" ] || STATUS=2
    echo "${ERROR:-$0: error: evaluation failed (exit $STATUS)}" >&2
    echo "$0: logs: ${LOGS[*]}" >&2
    exit "$STATUS"
fi
# The AP table (and the per-class one) when there is one, else the last lines (test-dev);
# MindSpore's own log lines start with "[".
if grep -qE '^ +AP +AP50' "$LOG"; then
    sed -n '/^ \{1,\}AP \{1,\}AP50/,$p' "$LOG" | grep -v '^\['
else
    tail -n 3 "$LOG"
fi
exit 0
