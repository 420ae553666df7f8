# What run_standalone_train.sh and run_distribute_train.sh share; sourced by them, not run.
# The caller defines usage() and sets ZOO (non-empty in the model-zoo forms, whose settings
# come from the environment) before calling these functions.

fail() {
    echo "$0: error: $*" >&2
    exit 1
}

REPO=$(realpath "$(dirname "${BASH_SOURCE[0]}")/..")
PYTHON=${PYTHON:-python}
PYTHON_PATH=$(command -v "$PYTHON") || fail "'$PYTHON' not found; activate the environment or set PYTHON"
export ONEDNN_MAX_CPU_ISA=${ONEDNN_MAX_CPU_ISA:-AVX2}

ZOO_DATA_HINT="set MINDRECORD_DIR to the --output_dir of create_mindrecord.py (the folder holding train/)"

# CONFIG: a YAML path is made absolute (the ranks may run elsewhere); $1 (when given) ends
# the error line.
resolve_config() {
    case $CONFIG in
        *.yaml|*.yml)
            [ -f "$CONFIG" ] || fail "config file $CONFIG does not exist${1:+; $1}"
            CONFIG=$(realpath "$CONFIG") ;;
    esac
}

# MINDRECORD_DIR must hold the train split; $1 (when given) ends the error line.
check_mindrecord_dir() {
    [ -d "$MINDRECORD_DIR" ] || fail "MINDRECORD_DIR $MINDRECORD_DIR does not exist${1:+; $1}"
    MINDRECORD_DIR=$(realpath "$MINDRECORD_DIR")
    [ -f "$MINDRECORD_DIR/train/dataset_info.json" ] \
        || fail "MINDRECORD_DIR $MINDRECORD_DIR has no train split ($MINDRECORD_DIR/train/dataset_info.json); ${1:-run create_mindrecord.py --split train}"
}

# The model-zoo forms: CONFIG, MINDRECORD_DIR and DEVICE_TARGET from the environment, each
# wrong or missing one reported in one line that says what to set.
settings_from_env() {
    CONFIG=${CONFIG:-yolact_plus_resnet50}
    DEVICE_TARGET=${DEVICE_TARGET:-Ascend}
    case $DEVICE_TARGET in
        CPU|GPU|Ascend) ;;
        *) fail "DEVICE_TARGET '$DEVICE_TARGET': set DEVICE_TARGET to Ascend (the default), GPU or CPU" ;;
    esac
    case $CONFIG in
        *.yaml|*.yml) resolve_config "set CONFIG to a variant name or an existing YAML file" ;;
        *)
            local variants
            variants=$(cd "$REPO" && "$PYTHON" -c 'from src.config.variants import VARIANTS; print(*VARIANTS)') \
                || fail "cannot list the config variants with $PYTHON_PATH; activate the environment or set PYTHON"
            [[ " $variants " == *" $CONFIG "* ]] \
                || fail "CONFIG '$CONFIG' is neither a variant nor a .yaml file; set CONFIG to a YAML file or one of: $variants" ;;
    esac
    [ -n "${MINDRECORD_DIR:-}" ] || fail "MINDRECORD_DIR is not set; $ZOO_DATA_HINT"
    check_mindrecord_dir "$ZOO_DATA_HINT"
}

# OUTPUT_DIR: train.py's --output_dir among EXTRA_ARGS when given (the last one wins, as in
# argparse), else <repo>/output/<config name>; created and made absolute.
resolve_output_dir() {
    local config_name i
    config_name=$(basename "$CONFIG")
    OUTPUT_DIR=$REPO/output/${config_name%.*}
    for ((i = 0; i < ${#EXTRA_ARGS[@]}; i++)); do
        case ${EXTRA_ARGS[i]} in
            --output_dir) OUTPUT_DIR=${EXTRA_ARGS[i + 1]} ;;
            --output_dir=*) OUTPUT_DIR=${EXTRA_ARGS[i]#--output_dir=} ;;
        esac
    done
    if [ -z "$OUTPUT_DIR" ]; then
        [ -z "$ZOO" ] || fail "--output_dir needs a folder"
        usage
    fi
    mkdir -p "$OUTPUT_DIR" || fail "cannot create the output folder $OUTPUT_DIR"
    OUTPUT_DIR=$(realpath "$OUTPUT_DIR")
}

# The model zoo's per-rank folder: <folder $1>/env.log records what this rank was started
# with (device, rank, data, MindSpore/HCCL/Ascend variables).
write_env_log() {
    mkdir -p "$1" || fail "cannot create the log folder $1"
    {
        echo "DEVICE_TARGET=$DEVICE_TARGET"
        echo "DEVICE_ID=$DEVICE_ID"
        echo "RANK_ID=$RANK_ID"
        echo "RANK_SIZE=$RANK_SIZE"
        echo "CONFIG=$CONFIG"
        echo "MINDRECORD_DIR=$MINDRECORD_DIR"
        [ -z "${RANK_TABLE_FILE:-}" ] || echo "RANK_TABLE_FILE=$RANK_TABLE_FILE"
        env | grep -E '^(MS|HCCL|ASCEND|GLOG)_[A-Za-z0-9_]*=' | sort
    } > "$1/env.log"
}
