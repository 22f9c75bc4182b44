#!/bin/bash
# The Imagenette experiment of docs/specialization.md, as it ran on a 2-core CPU: two `paper` seeds and
# the `paper-onetower` control, advanced round-robin one "epoch" (40 steps of 64 images) at a time, so
# that all runs have the same number of steps whenever it is stopped (touch $RUNS/STOP: the loop ends
# after the run in progress).
#   DATA=imagenette-val1k RUNS=runs/imagenette docs/results/imagenette/run_experiment.sh
# DATA: Imagenette's train/ (9,469 images) and a val/ of the first 100 images of each class in name order.
set -u
DATA="${DATA:?set DATA to the folder holding train/ and val/}"
RUNS="${RUNS:-runs/imagenette}"
mkdir -p "$RUNS"
COMMON=(--set data.source=\"imagefolder\" --set data.root=\"$DATA\" --set train.batch_size=64
  --set train.lr=0.01 --set train.max_steps_per_epoch=40 --set data.workers=1 --set schedule.kind=\"none\"
  --set checkpoint.keep_last=100 --set train.log_every=10)
for k in $(seq 1 60); do
  for r in paper:0 paper:1 paper-onetower:0; do
    preset=${r%:*}; seed=${r#*:}; dir=$RUNS/$preset-s$seed
    if [ -f "$dir/config.toml" ]; then
      nice -n 19 python3 -m twogpu_alexnet train --resume "$dir" --set train.epochs="$k" >>"$dir.log" 2>&1
    else
      nice -n 19 python3 -m twogpu_alexnet train --set model.preset=\"$preset\" --set train.seed="$seed" \
        --set train.epochs="$k" "${COMMON[@]}" --out "$dir" >>"$dir.log" 2>&1
    fi
    echo "$(date -u +%T) $preset s$seed epoch $k rc=$?" >> "$RUNS/drive.log"
    [ -f "$RUNS/STOP" ] && exit 0
  done
done
