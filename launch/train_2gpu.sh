#!/usr/bin/env bash
# The paper's AlexNet on a dual-GPU workstation: tower 0 on cuda:0, tower 1 on cuda:1 (configs/paper-2gpu.toml).
#
#   launch/train_2gpu.sh /data/imagenet runs/paper
#   launch/train_2gpu.sh /data/imagenet runs/paper --set speed.amp=bf16 --set train.epochs=60
#   CONFIG=configs/original-2gpu.toml launch/train_2gpu.sh /data/imagenet runs/original
#
# DATA holds train/ and val/ (class folders) or, with --set data.source=store, a prepared store.
# Run it again with the same OUT after a stop (Ctrl-C, SIGTERM, crash): it resumes from the last
# checkpoint with the saved config; the extra arguments then override keys (e.g. train.epochs).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${1:?usage: launch/train_2gpu.sh DATA OUT [--set key=value ...]}"
OUT="${2:?usage: launch/train_2gpu.sh DATA OUT [--set key=value ...]}"
shift 2
CONFIG="${CONFIG:-$HERE/configs/paper-2gpu.toml}"
PYTHON="${PYTHON:-python3}"
if [ -f "$OUT/checkpoints/last.pt" ]; then
  echo "resuming the run in $OUT" >&2
  exec "$PYTHON" -m twogpu_alexnet train --resume "$OUT" "$@"
fi
exec "$PYTHON" -m twogpu_alexnet train --config "$CONFIG" --set "data.root=$DATA" --out "$OUT" "$@"
