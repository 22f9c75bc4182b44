#!/usr/bin/env bash
# Data parallel across processes and machines on top of the two-tower model: torchrun starts
# GPUS_PER_NODE / 2 processes per node, each owning two GPUs (tower 0, tower 1), wrapped in
# DistributedDataParallel. train.batch_size is the global batch (split evenly across processes).
#
# On every node (same command, its own NODE_RANK; OUT on a filesystem all nodes share):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0.example MASTER_PORT=29500 GPUS_PER_NODE=8 \
#     launch/train_multinode.sh /data/imagenet /shared/runs/paper-16gpu --set train.batch_size=1024 --set train.lr=0.08
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0.example MASTER_PORT=29500 GPUS_PER_NODE=8 \
#     launch/train_multinode.sh /data/imagenet /shared/runs/paper-16gpu --set train.batch_size=1024 --set train.lr=0.08
# One node, 4 GPUs (2 processes): NNODES=1 GPUS_PER_NODE=4 launch/train_multinode.sh /data/imagenet runs/p4
# Run the same commands again to resume from the last checkpoint.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${1:?usage: [NNODES= NODE_RANK= MASTER_ADDR= MASTER_PORT= GPUS_PER_NODE=] launch/train_multinode.sh DATA OUT [--set key=value ...]}"
OUT="${2:?usage: launch/train_multinode.sh DATA OUT [--set key=value ...]}"
shift 2
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
GPUS_PER_NODE="${GPUS_PER_NODE:-$(nvidia-smi --list-gpus 2>/dev/null | wc -l)}"
CONFIG="${CONFIG:-$HERE/configs/paper-2gpu.toml}"
if [ "$GPUS_PER_NODE" -lt 2 ] || [ $((GPUS_PER_NODE % 2)) -ne 0 ]; then
  echo "error: GPUS_PER_NODE must be an even number of at least 2 (each process owns two GPUs), got $GPUS_PER_NODE" >&2
  exit 2
fi
if [ -f "$OUT/checkpoints/last.pt" ]; then
  ARGS=(--resume "$OUT")
else
  ARGS=(--config "$CONFIG" --set "data.root=$DATA" --out "$OUT")
fi
exec torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node $((GPUS_PER_NODE / 2)) \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  -m twogpu_alexnet train "${ARGS[@]}" --set model.mode=two-tower "$@"
