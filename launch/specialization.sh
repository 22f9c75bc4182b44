#!/usr/bin/env bash
# The Figure-3 study under the pre-registered protocol of docs/specialization.md, on one GPU:
# 10 two-tower runs (`paper`, seeds 0-9) and 5 controls (`paper-onetower`, seeds 0-4), each exactly
# STEPS SGD steps (never a time-based stop), then `kernels --compare` over all 15.
#
#   OUT=results/spec DATA=/data/imagenette launch/specialization.sh
#   DRY=1 OUT=/tmp/spec launch/specialization.sh      # the same 10 + 5 study on the CPU in tiny sizes (a test)
#
# DATA holds train/<class>/*.JPEG and val/<class>/*.JPEG (Imagenette at 224 px). The runs read
# OUT/data: all of train/ and the first VAL_PER_CLASS (50) validation images of each class in name
# order, linked. Each run: configs/paper-1gpu.toml on cuda:0 (grouped executor, bf16 autocast,
# channels_last), batch 128, constant lr 0.01, momentum 0.9, decay 5e-4, the data decoded once into
# GPU memory (data.cache="gpu"), EPOCHS (16) epochs of STEPS / EPOCHS (50) steps = STEPS (800) steps;
# PARALLEL (5) runs share the GPU at a time. Sized for 10 minutes on one H100 at an assumed
# 4,000 training images/s over the runs sharing it (15 x 800 x 128 = 1,536,000 images: 384 s, plus
# start-up); not yet measured: summary.md reports the measured rate. A longer study:
#   STEPS=8000 EPOCHS=160 OUT=results/spec-long DATA=... launch/specialization.sh
# Running it again continues unfinished runs (and skips finished ones) with the same settings.
# Writes OUT/runs/<preset>-s<seed>/ (run folders), OUT/conv1/<run>/epoch_NNN.pt (conv1 per epoch),
# OUT/logs/, OUT/compare.json (`kernels --compare --json`: runs, across, conclusion),
# OUT/compare.txt, OUT/scores.json (per-kernel scores per saved epoch) and OUT/summary.md.
# Exit status 0 when every run finished; 2 for bad settings.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
OUT="${OUT:?set OUT=DIR: the folder for the run folders, compare.json and summary.md}"
DRY="${DRY:-0}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DRY" = "1" ]; then  # tiny: generated 32-px images, the cifar presets, 2 steps (1 epoch) per run, in one process
  DATA="${DATA:-$OUT/dry-source}"
  export STEPS="${STEPS:-2}" EPOCHS="${EPOCHS:-1}" PARALLEL=1 TOWERS=cifar CONTROL=cifar-onetower BATCH=4 CONFIG=""
  VAL_PER_CLASS=2
  export OMP_NUM_THREADS=1  # tiny tensors: one thread each, no spin-waiting on a busy machine
  export SETTINGS='data.source="imagefolder"
model.mode="grouped"
model.devices=["cpu"]
train.batch_size=4
data.workers=0
train.lr=0.0001
train.log_every=1
speed.amp="none"'
  if [ ! -d "$DATA/train" ]; then
    "$PYTHON" - "$DATA" <<'PY'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for split, n in (("train", 4), ("val", 2)):
    for c in range(2):
        folder = Path(sys.argv[1]) / split / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
PY
  fi
else
  DATA="${DATA:?set DATA=DIR: the Imagenette folder holding train/ and val/}"
  export STEPS="${STEPS:-800}" EPOCHS="${EPOCHS:-16}" PARALLEL="${PARALLEL:-5}" TOWERS=paper CONTROL=paper-onetower
  export BATCH=128 CONFIG="$HERE/configs/paper-1gpu.toml"
  VAL_PER_CLASS="${VAL_PER_CLASS:-50}"
  export SETTINGS="model.mode=\"grouped\"
model.devices=[\"cuda:0\"]
train.batch_size=128
train.lr=0.01
train.momentum=0.9
train.weight_decay=0.0005
train.log_every=10
data.workers=${WORKERS:-3}
data.cache=\"gpu\"
speed.amp=\"bf16\"
speed.channels_last=true"
fi
for split in train val; do
  if [ ! -d "$DATA/$split" ]; then
    echo "error: $DATA has no $split/ folder; set DATA to the Imagenette folder holding train/ and val/" >&2
    exit 2
  fi
done
export DATA
export SETTINGS="$SETTINGS
data.root=\"$OUT/data\""

"$PYTHON" - "$DATA" "$OUT/data" "$VAL_PER_CLASS" <<'PY'
import os, shutil, sys
from pathlib import Path
source, target, per_class = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for split, n in (("train", None), ("val", per_class)):
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
PY
OUT="$OUT" exec "$PYTHON" "$HERE/launch/specialization.py"
