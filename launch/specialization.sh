#!/usr/bin/env bash
# The Figure-3 study on one GPU in about 10 minutes: two two-tower runs (paper preset, seeds 0 and 1)
# and one control (paper-onetower, seed 0) on a subset of Imagenette, then `kernels --compare`.
#
#   OUT=results/spec DATA=/data/imagenette launch/specialization.sh
#   DRY=1 OUT=/tmp/spec launch/specialization.sh      # every stage on the CPU in tiny sizes (CI)
#
# DATA holds train/<class>/*.JPEG and val/<class>/*.JPEG (Imagenette at 224 px, or any ImageFolder
# pair). The runs read a subset linked into $OUT/data: the first TRAIN_PER_CLASS (450) training and
# VAL_PER_CLASS (50) validation images of each class in name order, about 52 MB of Imagenette JPEG.
# Each run trains for at most RUN_SECONDS (180) wall seconds: at that point SIGTERM makes the trainer
# save its checkpoint and stop, so every run folder ends valid; EPOCHS (60) caps a faster run.
# Writes $OUT/runs/<name>/ (run folders: metrics.jsonl with per-epoch colour statistics, checkpoints
# keeping conv1 at step 0), $OUT/compare.json (an object whose `runs` lists one entry per run) and
# $OUT/compare.txt (the table). Exit status: 0 when every stage ran; a stage that failed is named.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
OUT="${OUT:?set OUT=DIR: the folder for the run folders and compare.json}"
DRY="${DRY:-0}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DRY" = "1" ]; then  # tiny: generated 32-px images, the cifar presets, two steps per run, the CPU
  DATA="${DATA:-$OUT/dry-source}"
  TRAIN_PER_CLASS=8 VAL_PER_CLASS=4 RUN_SECONDS=120 EPOCHS=1
  TOWERS=cifar CONTROL=cifar-onetower
  SETTINGS=(--set 'model.mode="grouped"' --set 'model.devices=["cpu"]' --set train.batch_size=8
            --set train.max_steps_per_epoch=2 --set data.workers=0 --set train.lr=0.001 --set speed.amp='"none"')
  if [ ! -d "$DATA/train" ]; then
    "$PYTHON" - "$DATA" <<'PY'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for split, n in (("train", 8), ("val", 4)):
    for c in range(3):
        folder = Path(sys.argv[1]) / split / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
PY
  fi
else
  DATA="${DATA:?set DATA=DIR: the Imagenette folder holding train/ and val/}"
  TRAIN_PER_CLASS="${TRAIN_PER_CLASS:-450}" VAL_PER_CLASS="${VAL_PER_CLASS:-50}"
  RUN_SECONDS="${RUN_SECONDS:-180}" EPOCHS="${EPOCHS:-60}"
  TOWERS=paper CONTROL=paper-onetower
  # one GPU: the grouped executor (both towers on cuda:0), bf16, channels_last; constant lr 0.01
  SETTINGS=(--set 'model.mode="grouped"' --set 'model.devices=["cuda:0"]' --set train.batch_size=128
            --set data.workers="${WORKERS:-12}" --set train.lr=0.01 --set speed.amp='"bf16"')
fi
for split in train val; do
  if [ ! -d "$DATA/$split" ]; then
    echo "error: $DATA has no $split/ folder; set DATA to the Imagenette folder holding train/ and val/" >&2
    exit 2
  fi
done

echo "subset: $TRAIN_PER_CLASS train / $VAL_PER_CLASS val images per class -> $OUT/data" >&2
"$PYTHON" - "$DATA" "$OUT/data" "$TRAIN_PER_CLASS" "$VAL_PER_CLASS" <<'PY'
import os, shutil, sys
from pathlib import Path
source, target = Path(sys.argv[1]), Path(sys.argv[2])
total = 0
for split, n in (("train", int(sys.argv[3])), ("val", int(sys.argv[4]))):
    for folder in sorted(p for p in (source / split).iterdir() if p.is_dir()):
        out = target / split / folder.name
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(p for p in folder.iterdir() if p.is_file())[:n]:
            dest = out / f.name
            if not dest.exists():
                try:
                    os.link(f, dest)
                except OSError:
                    shutil.copy2(f, dest)
            total += dest.stat().st_size
print(f"subset: {total / 1e6:.1f} MB", file=sys.stderr)
PY

RUNS=()
failed=""
for run in "$TOWERS:0" "$TOWERS:1" "$CONTROL:0"; do
  preset="${run%:*}" seed="${run#*:}"
  dir="$OUT/runs/$preset-s$seed"
  RUNS+=("$dir")
  if [ -f "$dir/checkpoints/last.pt" ]; then
    args=(--resume "$dir" --set train.epochs="$EPOCHS")
  else
    args=(--config "$HERE/configs/paper-1gpu.toml" --out "$dir" --set data.root="\"$OUT/data\""
          --set model.preset="\"$preset\"" --set train.seed="$seed" --set train.epochs="$EPOCHS"
          --set 'schedule.kind="none"' --set checkpoint.keep_last=1 --set train.log_every=20
          --set 'analysis.kernel_grid_epochs=[1]' "${SETTINGS[@]}")
  fi
  echo "train $preset seed $seed (at most ${RUN_SECONDS}s) -> $dir" >&2
  set +e
  timeout -s TERM -k 60 "$RUN_SECONDS" "$PYTHON" -m twogpu_alexnet train "${args[@]}" >"$OUT/$preset-s$seed.log" 2>&1
  rc=$?
  set -e
  # 0: done; 124/143: stopped by the time limit after saving its checkpoint
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$rc" -ne 143 ]; then
    echo "error: training $preset seed $seed failed (exit $rc); see $OUT/$preset-s$seed.log" >&2
    failed="$failed $preset-s$seed"
  fi
done
"$PYTHON" -m twogpu_alexnet kernels --compare "${RUNS[@]}" --json >"$OUT/compare.json"
"$PYTHON" -m twogpu_alexnet kernels --compare "${RUNS[@]}" >"$OUT/compare.txt" 2>&1
cat "$OUT/compare.txt"
if [ -n "$failed" ]; then
  echo "error: these runs failed:$failed" >&2
  exit 1
fi
