#!/bin/bash
# round-robin: each run one "epoch" (40 steps of 64) at a time, so all runs progress together
cd /work/exp-code
COMMON=(--set data.source=\"imagefolder\" --set data.root=\"/work/data/imagenette-val1k\" --set train.batch_size=64
  --set train.lr=0.01 --set train.max_steps_per_epoch=40 --set data.workers=1 --set schedule.kind=\"none\"
  --set checkpoint.keep_last=100 --set train.log_every=10)
for k in $(seq 1 60); do
  for r in paper:0 paper:1 paper-onetower:0; do
    preset=${r%:*}; seed=${r#*:}; dir=/work/runs/$preset-s$seed
    if [ -f $dir/config.toml ]; then
      nice -n 19 env PYTHONPATH=/work/exp-code python3 -m twogpu_alexnet train --resume $dir --set train.epochs=$k >>$dir.log 2>&1
    else
      nice -n 19 env PYTHONPATH=/work/exp-code python3 -m twogpu_alexnet train --set model.preset=\"$preset\" --set train.seed=$seed --set train.epochs=$k "${COMMON[@]}" --out $dir >>$dir.log 2>&1
    fi
    echo "$(date -u +%T) $preset s$seed epoch $k rc=$?" >> /work/runs/drive.log
    [ -f /work/runs/STOP ] && exit 0
  done
done
