#!/bin/bash
# Data-parallel training of YOLACT / YOLACT++ on NUM_DEVICES devices of this machine.
#
#   bash scripts/run_distribute_train.sh CONFIG MINDRECORD_DIR DEVICE_TARGET NUM_DEVICES \
#       [RANK_TABLE_FILE] [train.py args...]
#
#   CONFIG: a variant name (src/config/variants.py) or a YAML file.
#   MINDRECORD_DIR: --output_dir of create_mindrecord.py (holds the train split).
#   DEVICE_TARGET: Ascend (one process per device, HCCL with the RANK_TABLE_FILE, required),
#       GPU or CPU (started by msrun; no rank table).
#   The remaining arguments go to train.py, e.g. --batch_size 16 (the total over all devices).
#
# Environment: MASTER_PORT (msrun, default 8118); PYTHON (default python).
# Checkpoints go to --output_dir (default <repo>/output/<config name>), one log per rank to
# <output_dir>/log/worker_<rank>.log.

usage() {
    echo "Usage: bash $0 CONFIG MINDRECORD_DIR DEVICE_TARGET NUM_DEVICES [RANK_TABLE_FILE] [train.py args...]" >&2
    echo "       DEVICE_TARGET: Ascend (RANK_TABLE_FILE required), GPU or CPU (msrun)" >&2
    exit 1
}

fail() {
    echo "$0: error: $*" >&2
    exit 1
}

[ $# -ge 4 ] || usage
CONFIG=$1
MINDRECORD_DIR=$2
DEVICE_TARGET=$3
NUM_DEVICES=$4
shift 4

case $DEVICE_TARGET in
    CPU|GPU|Ascend) ;;
    *) echo "$0: error: DEVICE_TARGET '$DEVICE_TARGET': expected Ascend, GPU or CPU" >&2; usage ;;
esac
[[ $NUM_DEVICES =~ ^[1-9][0-9]*$ ]] || {
    echo "$0: error: NUM_DEVICES '$NUM_DEVICES': expected a positive integer" >&2; usage; }

REPO=$(realpath "$(dirname "$0")/..")
PYTHON=${PYTHON:-python}
PYTHON_PATH=$(command -v "$PYTHON") || fail "'$PYTHON' not found; activate the environment or set PYTHON"
# msrun starts the workers as plain 'python': put the chosen interpreter's folder first.
export PATH=$(dirname "$PYTHON_PATH"):$PATH
export ONEDNN_MAX_CPU_ISA=${ONEDNN_MAX_CPU_ISA:-AVX2}

case $CONFIG in
    *.yaml|*.yml)
        [ -f "$CONFIG" ] || fail "config file $CONFIG does not exist"
        CONFIG=$(realpath "$CONFIG") ;;
esac
[ -d "$MINDRECORD_DIR" ] || fail "MINDRECORD_DIR $MINDRECORD_DIR does not exist"
MINDRECORD_DIR=$(realpath "$MINDRECORD_DIR")
[ -f "$MINDRECORD_DIR/train/dataset_info.json" ] \
    || fail "$MINDRECORD_DIR has no train split ($MINDRECORD_DIR/train/dataset_info.json); run create_mindrecord.py --split train"

if [ "$DEVICE_TARGET" = Ascend ]; then
    [ $# -ge 1 ] || fail "Ascend needs a RANK_TABLE_FILE (hccl_tools.py output)"
    RANK_TABLE_FILE=$1
    shift
    [ -f "$RANK_TABLE_FILE" ] || fail "RANK_TABLE_FILE $RANK_TABLE_FILE does not exist"
    RANK_TABLE_FILE=$(realpath "$RANK_TABLE_FILE")
    TABLE_DEVICES=$(grep -o '"device_id"' "$RANK_TABLE_FILE" | wc -l)
    [ "$TABLE_DEVICES" -eq "$NUM_DEVICES" ] \
        || fail "RANK_TABLE_FILE $RANK_TABLE_FILE lists $TABLE_DEVICES devices, NUM_DEVICES is $NUM_DEVICES"
else
    MSRUN=$(command -v msrun) || fail "msrun not found next to $PYTHON_PATH or in PATH (it comes with MindSpore >= 2.3)"
fi
EXTRA_ARGS=("$@")

# The output folder: train.py's --output_dir when given (the last one wins, as in argparse).
CONFIG_NAME=$(basename "$CONFIG")
OUTPUT_DIR=$REPO/output/${CONFIG_NAME%.*}
for ((i = 0; i < ${#EXTRA_ARGS[@]}; i++)); do
    case ${EXTRA_ARGS[i]} in
        --output_dir) OUTPUT_DIR=${EXTRA_ARGS[i + 1]} ;;
        --output_dir=*) OUTPUT_DIR=${EXTRA_ARGS[i]#--output_dir=} ;;
    esac
done
[ -n "$OUTPUT_DIR" ] || usage
mkdir -p "$OUTPUT_DIR/log" || fail "cannot create the output folder $OUTPUT_DIR"
OUTPUT_DIR=$(realpath "$OUTPUT_DIR")
LOG_DIR=$OUTPUT_DIR/log
TRAIN_ARGS=(--config "$CONFIG" --mindrecord_dir "$MINDRECORD_DIR" --device_target "$DEVICE_TARGET"
            --distribute --output_dir "$OUTPUT_DIR" "${EXTRA_ARGS[@]}")

echo "training $CONFIG on $NUM_DEVICES x $DEVICE_TARGET with $MINDRECORD_DIR; logs: $LOG_DIR/worker_<rank>.log"
if [ "$DEVICE_TARGET" = Ascend ]; then
    export RANK_TABLE_FILE RANK_SIZE=$NUM_DEVICES
    # Background processes of a script ignore Ctrl+C: pass it on as SIGTERM, on which each
    # rank saves a checkpoint and stops.
    PIDS=()
    stop_ranks() {
        echo "$0: stopping the ranks ..." >&2
        [ ${#PIDS[@]} -eq 0 ] || kill -TERM "${PIDS[@]}" 2> /dev/null
    }
    trap stop_ranks INT TERM
    for ((rank = 0; rank < NUM_DEVICES; rank++)); do
        DEVICE_ID=$rank RANK_ID=$rank "$PYTHON" "$REPO/train.py" "${TRAIN_ARGS[@]}" \
            > "$LOG_DIR/worker_$rank.log" 2>&1 &
        PIDS+=($!)
    done
    STATUS=0
    for rank in "${!PIDS[@]}"; do
        # A trapped signal ends 'wait' early: wait again until the rank has exited.
        while true; do
            wait "${PIDS[rank]}"
            CODE=$?
            kill -0 "${PIDS[rank]}" 2> /dev/null || break
        done
        if [ $CODE -ne 0 ]; then
            STATUS=$CODE
            echo "$0: rank $rank exited with $CODE; see $LOG_DIR/worker_$rank.log" >&2
        fi
    done
else
    # msrun answers Ctrl+C by SIGKILLing its workers (and exits 0), and kills every worker as
    # soon as one exits non-zero. So msrun runs in a session of its own, out of the
    # terminal's reach, and a stop goes as SIGTERM to rank 0 alone: it finishes its step with
    # the others, saves a checkpoint and exits, then msrun ends the rest (they hold the same
    # weights and write nothing).
    setsid "$MSRUN" --worker_num="$NUM_DEVICES" --local_worker_num="$NUM_DEVICES" \
        --master_port="${MASTER_PORT:-8118}" --join=True --log_dir="$LOG_DIR" \
        "$REPO/train.py" "${TRAIN_ARGS[@]}" &
    MSRUN_PID=$!
    STOPPED_BY=
    stop_rank0() {
        STOPPED_BY=$1
        echo "$0: stopping rank 0, which saves a checkpoint ..." >&2
        local worker
        for worker in $(pgrep -P "$MSRUN_PID"); do
            # msrun's scheduler process has RANK_ID=0 too; rank 0 is the worker.
            if [ "$(tr '\0' '\n' < "/proc/$worker/environ" 2> /dev/null \
                    | grep -cxE 'RANK_ID=0|MS_ROLE=MS_WORKER')" -eq 2 ]; then
                kill -TERM "$worker" 2> /dev/null
                return
            fi
        done
        # No rank 0 yet (msrun is starting): nothing to save, stop msrun itself.
        kill -TERM "$MSRUN_PID" 2> /dev/null
    }
    trap 'stop_rank0 130' INT
    trap 'stop_rank0 143' TERM
    # Poll instead of 'wait': bash defers a SIGINT trap until the waited-for child exits.
    while kill -0 "$MSRUN_PID" 2> /dev/null; do
        sleep 1
    done
    wait "$MSRUN_PID"
    STATUS=$?
    if [ -n "$STOPPED_BY" ]; then
        echo "$0: stopped; resume with --resume auto (logs: $LOG_DIR/worker_<rank>.log)" >&2
        STATUS=$STOPPED_BY
    elif [ $STATUS -ne 0 ]; then
        echo "$0: training failed (exit $STATUS); see $LOG_DIR/worker_<rank>.log" >&2
    fi
fi
exit $STATUS
