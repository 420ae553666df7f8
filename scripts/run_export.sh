#!/usr/bin/env bash
# Export a checkpoint's inference graph to MINDIR (or AIR on Ascend) with export.py.
# The output is verified against the checkpoint (see export.py); one log file in the
# current folder, its last lines shown at the end.
set -euo pipefail

if [ $# -lt 3 ] || [ $# -gt 5 ]; then
  echo "Usage: bash scripts/run_export.sh CONFIG CKPT FILE_NAME [FILE_FORMAT] [DEVICE_TARGET]"
  echo "  CONFIG         variant name (e.g. yolact_plus_resnet50) or a .yaml file"
  echo "  CKPT           checkpoint of that config"
  echo "  FILE_NAME      output path; .mindir / .air is appended when missing"
  echo "  FILE_FORMAT    MINDIR (default) or AIR (Ascend only)"
  echo "  DEVICE_TARGET  CPU (default), GPU or Ascend"
  exit 1
fi

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="$1"
case "$CONFIG" in
  *.yaml | *.yml)
    CONFIG="$(realpath -m "$CONFIG")"
    if [ ! -f "$CONFIG" ]; then
      echo "error: config file not found: $CONFIG" >&2
      exit 1
    fi
    ;;
esac
CKPT="$(realpath -m "$2")"
FILE_NAME="$(realpath -m "$3")"
FILE_FORMAT="${4:-MINDIR}"
DEVICE_TARGET="${5:-CPU}"

if [ ! -f "$CKPT" ]; then
  echo "error: checkpoint not found: $CKPT" >&2
  exit 1
fi

# MindSpore's oneDNN convolutions are 30-150x slower on AVX-512 CPUs without this cap.
export ONEDNN_MAX_CPU_ISA="${ONEDNN_MAX_CPU_ISA:-AVX2}"

LOG_FILE="$(pwd)/export.log"
echo "exporting $CKPT -> $FILE_NAME ($FILE_FORMAT on $DEVICE_TARGET); log: $LOG_FILE"
status=0
"${PYTHON:-python}" "$REPO_DIR/export.py" --config "$CONFIG" --ckpt "$CKPT" \
  --file_name "$FILE_NAME" --file_format "$FILE_FORMAT" --device_target "$DEVICE_TARGET" \
  > "$LOG_FILE" 2>&1 || status=$?
tail -n 8 "$LOG_FILE"
if [ "$status" -ne 0 ]; then
  echo "export failed (exit code $status); full log: $LOG_FILE" >&2
fi
exit "$status"
