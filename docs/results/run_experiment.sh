#!/usr/bin/env bash
# The colour-specialization experiment of docs/specialization.md, as it was run here (2-core CPU).
#
#   docs/results/run_experiment.sh CIFAR_DIR WORK_DIR STEPS [RUN ...]
#
# CIFAR_DIR holds train/ and test/ (tar -xzf cifar10-jpeg.tar.gz). WORK_DIR gets a data root whose
# train/ is all 50,000 training images and whose val/ is the first 100 test images of each class
# (1,000: a cheap per-epoch check); the runs; and their logs. STEPS: SGD steps per run. An "epoch"
# here is 100 steps (train.max_steps_per_epoch), so the towers' colour scores are logged often.
# RUN: name=preset:seed, e.g. tt-seed0=cifar:0 ctl-seed0=cifar-onetower:0; runs go one at a time.
# Afterwards: python3 docs/results/summarize.py CIFAR_DIR/test WORK_DIR/runs/* (full 10,000-image test).
set -euo pipefail
cifar=$(realpath "$1"); work=$(realpath -m "$2"); steps=$3; shift 3
per_epoch=100
epochs=$(( (steps + per_epoch - 1) / per_epoch ))

mkdir -p "$work/data/val" "$work/runs" "$work/logs"
ln -sfn "$cifar/train" "$work/data/train"
for class_dir in "$cifar"/test/*/; do
    class=$(basename "$class_dir")
    mkdir -p "$work/data/val/$class"
    files=("$class_dir"*)                      # sorted by the shell
    for f in "${files[@]:0:100}"; do ln -f "$f" "$work/data/val/$class/"; done
done

for spec in "$@"; do
    name=${spec%%=*}; rest=${spec#*=}; preset=${rest%%:*}; seed=${rest##*:}
    python3 -m twogpu_alexnet train --config configs/cifar10.toml \
        --set "data.root=\"$work/data\"" --set data.workers=1 \
        --set "model.preset=\"$preset\"" --set 'model.mode="two-tower"' --set 'model.devices=["cpu", "cpu"]' \
        --set train.batch_size=64 --set "train.seed=$seed" --set "train.epochs=$epochs" \
        --set "train.max_steps_per_epoch=$per_epoch" --set train.log_every=20 \
        --set 'schedule.kind="none"' --set "analysis.kernel_grid_epochs=[1, 2, 4, 8, 16, 32]" \
        --out "$work/runs/$name" > "$work/logs/$name.log" 2>&1 || echo "run $name exited with $?"
done
