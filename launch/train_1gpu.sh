#!/usr/bin/env bash
# The paper's AlexNet on one GPU: the grouped executor runs both towers on cuda:0 (configs/paper-1gpu.toml),
# the same network and function as two GPUs; its checkpoints load in either mode.
#
#   launch/train_1gpu.sh /data/imagenet runs/paper-1gpu
#   launch/train_1gpu.sh /data/imagenet runs/paper-1gpu --set speed.amp=bf16 --set speed.channels_last=true
#   CUDA_VISIBLE_DEVICES=1 launch/train_1gpu.sh /data/imagenet runs/paper-gpu1
#
# Run it again with the same OUT after a stop to resume. A run started on two GPUs resumes here too:
#   launch/train_1gpu.sh /data/imagenet runs/paper --set model.mode=grouped
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${1:?usage: launch/train_1gpu.sh DATA OUT [--set key=value ...]}"
OUT="${2:?usage: launch/train_1gpu.sh DATA OUT [--set key=value ...]}"
shift 2
CONFIG="${CONFIG:-$HERE/configs/paper-1gpu.toml}"
PYTHON="${PYTHON:-python3}"
if [ -f "$OUT/checkpoints/last.pt" ]; then
  echo "resuming the run in $OUT" >&2
  exec "$PYTHON" -m twogpu_alexnet train --resume "$OUT" "$@"
fi
exec "$PYTHON" -m twogpu_alexnet train --config "$CONFIG" --set "data.root=$DATA" --out "$OUT" "$@"
