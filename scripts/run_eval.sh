#!/usr/bin/env bash
# COCO evaluation (box and mask AP) of a checkpoint with eval.py; one log file in the
# current folder, its summary shown at the end.
set -euo pipefail

if [ $# -lt 4 ] || [ $# -gt 5 ]; then
  echo "Usage: bash scripts/run_eval.sh CONFIG CKPT ANN_FILE IMAGE_DIR [DEVICE_TARGET]"
  echo "  CONFIG         variant name (e.g. yolact_plus_resnet50) or a .yaml file"
  echo "  CKPT           checkpoint of that config (trained or converted)"
  echo "  ANN_FILE       COCO-format annotations, e.g. annotations/instances_val2017.json"
  echo "  IMAGE_DIR      the images, e.g. val2017/ (or a create_mindrecord.py output folder)"
  echo "  DEVICE_TARGET  CPU (default), GPU or Ascend"
  exit 1
fi

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="$1"
case "$CONFIG" in
  *.yaml | *.yml) CONFIG="$(realpath -m "$CONFIG")" ;;
esac
CKPT="$(realpath -m "$2")"
ANN_FILE="$(realpath -m "$3")"
IMAGE_DIR="$(realpath -m "$4")"
DEVICE_TARGET="${5:-CPU}"

for path in "$CKPT" "$ANN_FILE"; do
  if [ ! -f "$path" ]; then
    echo "error: file not found: $path" >&2
    exit 1
  fi
done
if [ ! -d "$IMAGE_DIR" ]; then
  echo "error: image folder not found: $IMAGE_DIR" >&2
  exit 1
fi
# A MindRecord output folder holds a split folder with dataset_info.json.
if [ -f "$IMAGE_DIR/val/dataset_info.json" ]; then
  SOURCE=(--mindrecord_dir "$IMAGE_DIR")
else
  SOURCE=(--image_dir "$IMAGE_DIR")
fi

# MindSpore's oneDNN convolutions are 30-150x slower on AVX-512 CPUs without this cap.
export ONEDNN_MAX_CPU_ISA="${ONEDNN_MAX_CPU_ISA:-AVX2}"

LOG_FILE="$(pwd)/eval.log"
echo "evaluating $CKPT on $ANN_FILE ($DEVICE_TARGET); log: $LOG_FILE"
status=0
"${PYTHON:-python}" "$REPO_DIR/eval.py" --config "$CONFIG" --ckpt "$CKPT" \
  --ann_file "$ANN_FILE" "${SOURCE[@]}" --device_target "$DEVICE_TARGET" \
  --output_json "$(pwd)/eval_results" > "$LOG_FILE" 2>&1 || status=$?
tail -n 3 "$LOG_FILE"
if [ "$status" -ne 0 ]; then
  echo "evaluation failed (exit code $status); full log: $LOG_FILE" >&2
fi
exit "$status"
