#!/bin/bash
# Data-parallel training of YOLACT / YOLACT++ on one or many machines.
#
#   bash scripts/run_distribute_train.sh CONFIG MINDRECORD_DIR DEVICE_TARGET NUM_DEVICES \
#       [RANK_TABLE_FILE] [train.py args...]
#     CONFIG: a variant name (src/config/variants.py) or a YAML file.
#     MINDRECORD_DIR: --output_dir of create_mindrecord.py (holds the train split).
#     DEVICE_TARGET: Ascend, GPU or CPU.
#     NUM_DEVICES: the devices (processes) of THIS machine.
#     RANK_TABLE_FILE (Ascend only): start one process per device of this server's entry
#       with HCCL's rank table (hccl_tools.py output). Without it every device target is
#       started by msrun (MindSpore >= 2.3; no rank table needed on Ascend either).
#     The remaining arguments go to train.py, e.g. --batch_size 16 (the total over all devices).
#     Logs: <output_dir>/log/worker_<rank>.log, one per rank (msrun also writes scheduler.log
#     on the MASTER_ADDR machine).
#
#   bash scripts/run_distribute_train.sh RANK_TABLE_FILE DEVICE_NUM [train.py args...]
#     the model zoo's form (a .json file and a number): Ascend, one process per device of this
#     server's entry in RANK_TABLE_FILE; DEVICE_NUM is the number of devices of this server
#     and must match the table. Settings from the environment:
#       CONFIG          variant name or YAML file (default yolact_plus_resnet50)
#       MINDRECORD_DIR  --output_dir of create_mindrecord.py (required)
#       DEVICE_TARGET   Ascend (the default; the only target of a rank table)
#     e.g. CONFIG=yolact_plus_resnet50 MINDRECORD_DIR=/data/coco_mindrecord \
#          bash scripts/run_distribute_train.sh /path/hccl_8p.json 8
#     A missing or wrong setting is one error line naming the variable (exit 1).
#     Logs: <output_dir>/train_parallel<RANK_ID>/train.log and env.log, one folder per rank.
#     Unlike the zoo's script it waits for the ranks (prefix nohup, append & to detach) and
#     does not copy the sources.
#
# Rank tables that list several servers (v1.0: {"server_list": [{"server_id": IP,
# "device": [{"device_id", "device_ip", "rank_id"}, ...]}, ...]}): the launcher on each server
# starts the devices of the entry whose server_id is one of this host's addresses
# (hostname -I), or the entry SERVER_ID names; each process gets the table's device_id and
# (global) rank_id, RANK_SIZE is the device count of the whole table.
#
# Several machines with msrun: run the same command on every machine, with
#   WORKER_NUM   processes over all machines (default NUM_DEVICES: one machine); msrun
#                starts NUM_DEVICES on each, so WORKER_NUM = machines x NUM_DEVICES
#   NODE_RANK    this machine's index, 0 .. machines-1 (ranks NODE_RANK*NUM_DEVICES + i)
#   MASTER_ADDR  the address of the machine that runs msrun's scheduler (default 127.0.0.1;
#                msrun starts the scheduler on the machine that owns this address)
#   MASTER_PORT  the scheduler's port, the same on every machine (default 8118)
#   CLUSTER_TIME_OUT  seconds the processes wait for the others to join (default 600, msrun's).
#                A rank that fails before it joins (no device, say) leaves msrun's scheduler
#                waiting this long before the launcher can report the failure.
# e.g. on 2 machines with 8 GPUs each, 10.0.0.1 being the first:
#   WORKER_NUM=16 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash scripts/run_distribute_train.sh \
#       yolact_plus_resnet50 /data/coco_mindrecord GPU 8      (and NODE_RANK=1 on the second)
#
# Environment: PYTHON (default python).
# Checkpoints go to --output_dir (default <repo>/output/<config name>).
# Ctrl+C or SIGTERM: rank 0 saves a checkpoint, every process stops, exit 130/143; resume with
# --resume auto. With msrun on several machines, stop the run on the machine of rank 0.

usage() {
    echo "Usage: bash $0 CONFIG MINDRECORD_DIR DEVICE_TARGET NUM_DEVICES [RANK_TABLE_FILE] [train.py args...]" >&2
    echo "       bash $0 RANK_TABLE_FILE DEVICE_NUM [train.py args...]   (Ascend; CONFIG, MINDRECORD_DIR from the environment)" >&2
    echo "       DEVICE_TARGET: Ascend, GPU or CPU (msrun; Ascend with a RANK_TABLE_FILE: one process per device)" >&2
    exit 1
}

ZOO=
source "$(dirname "$0")/launcher_common.sh"

POSITIVE='^[1-9][0-9]*$'
RANK_TABLE_FILE=
if [ $# -ge 2 ] && [[ $1 == *.json ]]; then
    ZOO=1
    RANK_TABLE_FILE=$1
    NUM_DEVICES=$2
    COUNT_NAME=DEVICE_NUM
    shift 2
    [[ $NUM_DEVICES =~ $POSITIVE ]] \
        || fail "DEVICE_NUM '$NUM_DEVICES': expected the number of devices of this server in $RANK_TABLE_FILE"
    settings_from_env
    [ "$DEVICE_TARGET" = Ascend ] \
        || fail "DEVICE_TARGET '$DEVICE_TARGET': a rank table starts Ascend devices; unset DEVICE_TARGET, or use the form CONFIG MINDRECORD_DIR $DEVICE_TARGET NUM_DEVICES (msrun)"
else
    [ $# -ge 4 ] || usage
    CONFIG=$1
    MINDRECORD_DIR=$2
    DEVICE_TARGET=$3
    NUM_DEVICES=$4
    COUNT_NAME=NUM_DEVICES
    shift 4
    case $DEVICE_TARGET in
        CPU|GPU|Ascend) ;;
        *) echo "$0: error: DEVICE_TARGET '$DEVICE_TARGET': expected Ascend, GPU or CPU" >&2; usage ;;
    esac
    [[ $NUM_DEVICES =~ $POSITIVE ]] || {
        echo "$0: error: NUM_DEVICES '$NUM_DEVICES': expected a positive integer" >&2; usage; }
    resolve_config
    check_mindrecord_dir
    # On Ascend an argument that is not a flag is the rank table (train.py takes flags only).
    if [ "$DEVICE_TARGET" = Ascend ] && [ $# -ge 1 ] && [[ $1 != -* ]]; then
        RANK_TABLE_FILE=$1
        shift
    fi
fi
EXTRA_ARGS=("$@")

# Ranks of this server in the rank table: RANK_SIZE, then "device_id rank_id" per device.
RANK_TABLE_READER='
import json, os, sys
path, addresses, wanted = sys.argv[1], sys.argv[2].split(), os.environ.get("SERVER_ID", "")
try:
    with open(path, encoding="utf-8") as handle:
        servers = json.load(handle)["server_list"]
    table = {str(server["server_id"]): [(int(device["device_id"]), int(device["rank_id"]))
                                        for device in server["device"]] for server in servers}
except (OSError, ValueError, KeyError, TypeError) as error:
    sys.exit(f"RANK_TABLE_FILE {path}: not a v1.0 rank table ({type(error).__name__}: {error}); "
             "expected server_list[].server_id and device[].device_id / rank_id")
names = ", ".join(table)
if wanted:
    if wanted not in table:
        sys.exit(f"SERVER_ID {wanted!r} is not a server_id of RANK_TABLE_FILE {path} ({names}); "
                 "set SERVER_ID to one of them")
    server = wanted
elif len(table) == 1:
    [server] = table
else:
    mine = [name for name in table if name in addresses]
    if len(mine) != 1:
        shown = " ".join(addresses) or "none from hostname -I"
        sys.exit(f"{len(mine)} of the servers of RANK_TABLE_FILE {path} ({names}) have an "
                 f"address of this host ({shown}); set SERVER_ID to the server_id of this server")
    [server] = mine
print(sum(len(devices) for devices in table.values()), server if len(table) > 1 else "")
for device, rank in table[server]:
    print(device, rank)
'
if [ -n "$RANK_TABLE_FILE" ]; then
    [ -f "$RANK_TABLE_FILE" ] || fail "RANK_TABLE_FILE $RANK_TABLE_FILE does not exist"
    RANK_TABLE_FILE=$(realpath "$RANK_TABLE_FILE")
    TABLE=$("$PYTHON" -c "$RANK_TABLE_READER" "$RANK_TABLE_FILE" "$(hostname -I 2> /dev/null)" 2>&1) \
        || fail "$TABLE"
    read -r RANK_SIZE SERVER <<< "$(head -n 1 <<< "$TABLE")"
    mapfile -t RANKS < <(tail -n +2 <<< "$TABLE")
    [ "${#RANKS[@]}" -eq "$NUM_DEVICES" ] \
        || fail "RANK_TABLE_FILE $RANK_TABLE_FILE lists ${#RANKS[@]} devices${SERVER:+ for server $SERVER}, $COUNT_NAME is $NUM_DEVICES"
else
    MSRUN=$(PATH=$(dirname "$PYTHON_PATH"):$PATH command -v msrun) \
        || fail "msrun not found next to $PYTHON_PATH or in PATH (it comes with MindSpore >= 2.3)"
    WORKER_NUM=${WORKER_NUM:-$NUM_DEVICES}
    [[ $WORKER_NUM =~ $POSITIVE ]] && [ $((WORKER_NUM % NUM_DEVICES)) -eq 0 ] \
        || fail "WORKER_NUM '$WORKER_NUM': set WORKER_NUM to the processes over all machines, a multiple of NUM_DEVICES ($NUM_DEVICES on each)"
    NODES=$((WORKER_NUM / NUM_DEVICES))
    if [ "$NODES" -gt 1 ]; then
        [ -n "${NODE_RANK:-}" ] \
            || fail "NODE_RANK is not set; with WORKER_NUM $WORKER_NUM on $NODES machines set NODE_RANK to this machine's index, 0 to $((NODES - 1))"
        [ -n "${MASTER_ADDR:-}" ] \
            || fail "MASTER_ADDR is not set; with WORKER_NUM $WORKER_NUM on $NODES machines set MASTER_ADDR to the address of the machine that runs msrun's scheduler"
    fi
    NODE_RANK=${NODE_RANK:-0}
    [[ $NODE_RANK =~ ^[0-9]+$ ]] && [ "$NODE_RANK" -lt "$NODES" ] \
        || fail "NODE_RANK '$NODE_RANK': set NODE_RANK to this machine's index, 0 to $((NODES - 1)) (WORKER_NUM $WORKER_NUM = $NODES machines x NUM_DEVICES $NUM_DEVICES)"
    MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
    MASTER_PORT=${MASTER_PORT:-8118}
    [[ $MASTER_PORT =~ $POSITIVE ]] && [ "$MASTER_PORT" -ge 1024 ] && [ "$MASTER_PORT" -le 65535 ] \
        || fail "MASTER_PORT '$MASTER_PORT': set MASTER_PORT to a free port from 1024 to 65535, the same on every machine"
    CLUSTER_TIME_OUT=${CLUSTER_TIME_OUT:-600}
    [[ $CLUSTER_TIME_OUT =~ $POSITIVE ]] \
        || fail "CLUSTER_TIME_OUT '$CLUSTER_TIME_OUT': set CLUSTER_TIME_OUT to the seconds msrun's processes wait for each other (a positive integer)"
fi

resolve_output_dir
LOG_DIR=$OUTPUT_DIR/log
[ -n "$ZOO" ] || mkdir -p "$LOG_DIR" || fail "cannot create the log folder $LOG_DIR"
TRAIN_ARGS=(--config "$CONFIG" --mindrecord_dir "$MINDRECORD_DIR" --device_target "$DEVICE_TARGET"
            --distribute --output_dir "$OUTPUT_DIR" "${EXTRA_ARGS[@]}")
# The ranks of this machine share its CPUs: train.py fits its data workers to its share.
export LOCAL_WORKER_NUM=$NUM_DEVICES

if [ -n "$RANK_TABLE_FILE" ]; then
    export RANK_TABLE_FILE RANK_SIZE
    # The model zoo keeps each rank's log and environment in a folder of its own.
    rank_log() {
        if [ -n "$ZOO" ]; then
            echo "$OUTPUT_DIR/train_parallel$1/train.log"
        else
            echo "$LOG_DIR/worker_$1.log"
        fi
    }
    echo "training $CONFIG on $NUM_DEVICES of $RANK_SIZE x $DEVICE_TARGET${SERVER:+ (server $SERVER)} with $MINDRECORD_DIR; logs: $(rank_log '<rank>')"
    # Background processes of a script ignore Ctrl+C: pass it on as SIGTERM, on which each
    # rank saves a checkpoint and stops.
    PIDS=()
    LOGS=()
    stop_ranks() {
        echo "$0: stopping the ranks ..." >&2
        [ ${#PIDS[@]} -eq 0 ] || kill -TERM "${PIDS[@]}" 2> /dev/null
    }
    trap stop_ranks INT TERM
    for entry in "${RANKS[@]}"; do
        read -r DEVICE_ID RANK_ID <<< "$entry"
        LOG=$(rank_log "$RANK_ID")
        [ -z "$ZOO" ] || write_env_log "$(dirname "$LOG")"
        echo "rank $RANK_ID of $RANK_SIZE on $DEVICE_TARGET device $DEVICE_ID (RANK_ID=$RANK_ID DEVICE_ID=$DEVICE_ID)" > "$LOG"
        DEVICE_ID=$DEVICE_ID RANK_ID=$RANK_ID "$PYTHON" "$REPO/train.py" "${TRAIN_ARGS[@]}" \
            >> "$LOG" 2>&1 &
        PIDS+=($!)
        LOGS+=("$LOG")
    done
    STATUS=0
    for index in "${!PIDS[@]}"; do
        # A trapped signal ends 'wait' early: wait again until the rank has exited.
        while true; do
            wait "${PIDS[index]}"
            CODE=$?
            kill -0 "${PIDS[index]}" 2> /dev/null || break
        done
        if [ $CODE -ne 0 ]; then
            STATUS=$CODE
            echo "$0: rank ${RANKS[index]#* } exited with $CODE; see ${LOGS[index]}" >&2
        fi
    done
else
    # msrun starts the workers as plain 'python': put the chosen interpreter's folder first.
    export PATH=$(dirname "$PYTHON_PATH"):$PATH
    echo "training $CONFIG on $NUM_DEVICES of $WORKER_NUM x $DEVICE_TARGET (machine $NODE_RANK, scheduler $MASTER_ADDR:$MASTER_PORT) with $MINDRECORD_DIR; logs: $LOG_DIR/worker_<rank>.log"
    # msrun answers Ctrl+C by SIGKILLing its workers (and exits 0), and kills every worker as
    # soon as one exits non-zero. So msrun runs in a session of its own, out of the
    # terminal's reach, and a stop goes as SIGTERM to rank 0 alone: it finishes its step with
    # the others, saves a checkpoint and exits, then msrun ends the rest (they hold the same
    # weights and write nothing).
    setsid "$MSRUN" --worker_num="$WORKER_NUM" --local_worker_num="$NUM_DEVICES" \
        --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
        --cluster_time_out="$CLUSTER_TIME_OUT" --join=True --log_dir="$LOG_DIR" "$REPO/train.py" "${TRAIN_ARGS[@]}" &
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
        # No rank 0 here (msrun is starting, or it runs on another machine): stop msrun itself.
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
