#!/usr/bin/env bash
# Time-boxed device check: what one GPU for ten minutes (or two GPUs) can prove about this code.
#
#   OUT=gpu-check launch/gpu_check.sh                 # every GPU this machine shows; 540 s in all
#   BUDGET=900 OUT=gpu-check launch/gpu_check.sh      # more time (stages keep their own limits)
#   CUDA_VISIBLE_DEVICES=0 OUT=gpu-check launch/gpu_check.sh    # as a one-GPU machine
#   DRY=1 OUT=/tmp/dry launch/gpu_check.sh            # rehearsal: every stage on the CPU in tiny sizes
#
# Works from a plain checkout (PYTHONPATH, no pip install). Stages run in order of value, each under
# its own time limit and never past the overall budget; each writes OUT/<stage>.log, and OUT/summary.md
# grows by one line per stage as it finishes (printed at the end):
#   env       GPU names and link, torch / CUDA / cuDNN versions, /dev/shm size
#   pytest    pytest -m gpu: the gpu-marked tests (LRN kernels, executors, trainer options, resume)
#   train     the trainer on the paper preset, synthetic 224 images: two-tower on the available GPUs
#             (cuda:0,cuda:0 on one) in bf16 + channels_last, resumed as grouped, resumed again with
#             channels_last off; checks the three epochs and the checkpoint
#   bench     bench model: grouped, two-tower, torchvision alexnet, stock LRN; bf16 + channels_last
#   data      bench data on 1,024 generated 500x375 JPEG photos: per worker, then the loader with
#             nproc - 2 workers to batches finished on the GPU, and from the GPU cache
#   dropout   the towers' dropout masks are independent draws (two GPUs; skipped on one)
#   compile   bench options: float32 against bf16 + channels_last + torch.compile, with the time left
# Exit status: 0 when every stage passed (or was skipped as not applicable), 1 otherwise.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/launch/gpu_check.sh"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHON="${PYTHON:-python3}"
export DRY="${DRY:-0}"
export OUT="${OUT:-gpu-check-$(date +%Y%m%d-%H%M%S)}"
BUDGET="${BUDGET:-540}"
export TRAIN_STEPS="${TRAIN_STEPS:-100}"   # training steps per epoch (three epochs: two-tower, grouped, flipped)
export TRAIN_BATCH="${TRAIN_BATCH:-64}"     # the trainer's batch (synthetic 224 images cost ~15-40 ms of CPU each)
export BATCH="${BATCH:-256}"                # bench model batch
if [ "$DRY" = 1 ]; then
  export CUDA_VISIBLE_DEVICES="" TORCH_COMPILE_DISABLE=1 TRAIN_STEPS=2 TRAIN_BATCH=4 BATCH=2
  export NGPU=0 DEV=cpu TOWERS="cpu cpu" PRESET=cifar
else
  export NGPU="${NGPU:-$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")}"
  export DEV=cuda:0 PRESET=paper
  if [ "${NGPU:-0}" -ge 2 ]; then TOWERS="cuda:0 cuda:1"; else TOWERS="cuda:0 cuda:0"; fi
  export TOWERS
fi

# ---------------------------------------------------------------------------------------------
# Stage bodies: `gpu_check.sh __stage NAME` runs one of them (under `timeout`, with its log as output).
# The last line a body prints on stdout is its one-line result in the summary.

stage_env() {
  nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not available"
  nvidia-smi topo -m 2>/dev/null || true
  df -h /dev/shm 2>/dev/null || true
  echo "cpus: $(nproc)"
  "$PYTHON" - <<'PY'
import shutil, torch
gpus = [f"{torch.cuda.get_device_name(i)} ({torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB)"
        for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
shm = shutil.disk_usage("/dev/shm").total / 2**30 if __import__("os").path.isdir("/dev/shm") else 0
cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {cudnn}; GPUs: {', '.join(gpus) or 'none'}; "
      f"/dev/shm {shm:.1f} GiB")
PY
}

stage_pytest() {
  local files=(tests)
  [ "$DRY" = 1 ] && files=(tests/test_model_gpu.py tests/test_model_lrn_triton.py)  # collection only: all skip
  "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider -rs "${files[@]}"
  local rc=$?
  [ $rc -eq 5 ] && rc=0  # no gpu-marked test collected is not a failure
  return $rc
}

train_cli() {  # train_cli LABEL ARGS...: one trainer run through the CLI, its JSON result kept
  local label=$1; shift
  echo "== $label: twogpu-alexnet train $*"
  "$PYTHON" -m twogpu_alexnet train "$@" --json >"$OUT/train-$label.json" || return 1
  cat "$OUT/train-$label.json"
}

stage_train() {
  local run="$OUT/train-run" workers=$(($(nproc) > 16 ? 15 : $(nproc) - 1)) val=512 t0 t1
  [ "$DRY" = 1 ] && workers=0 val=4
  read -r t0 t1 <<<"$TOWERS"
  rm -rf "$run"
  train_cli two-tower --out "$run" --set "model.preset=\"$PRESET\"" --set 'data.source="synthetic"' \
    --set "data.synthetic_images=$((TRAIN_STEPS * $TRAIN_BATCH))" --set "data.synthetic_val_images=$val" \
    --set "data.workers=$workers" --set "train.batch_size=$TRAIN_BATCH" --set train.epochs=1 \
    --set "train.max_steps_per_epoch=$TRAIN_STEPS" --set train.log_every=50 --set 'model.mode="two-tower"' \
    --set "model.devices=[\"$t0\", \"$t1\"]" --set 'speed.amp="bf16"' --set speed.channels_last=true \
    --set 'analysis.kernel_grid_epochs=[]' || return 1
  train_cli grouped --resume "$run" --set train.epochs=2 --set 'model.mode="grouped"' \
    --set "model.devices=[\"$DEV\"]" || return 1
  train_cli flipped --resume "$run" --set train.epochs=3 --set speed.channels_last=false || return 1
  "$PYTHON" - "$run" "$OUT" <<'PY'
import json, math, sys
from pathlib import Path
import torch
run, out = Path(sys.argv[1]), Path(sys.argv[2])
epochs = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_top1_error" in r]
assert [r["epoch"] for r in epochs] == [1, 2, 3], f"epoch lines {[r['epoch'] for r in epochs]}, expected 1, 2, 3"
assert all(math.isfinite(r["train_loss"]) for r in epochs), "a non-finite training loss"
saved = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
assert saved["epoch"] == 3 and saved.get("mode", "grouped") == "grouped", (saved["epoch"], saved.get("mode"))
rates = [json.loads((out / f"train-{k}.json").read_text())["images_per_s"] for k in ("two-tower", "grouped", "flipped")]
print("3 epochs (two-tower bf16+channels_last, resumed grouped, resumed channels_last off); losses "
      + ", ".join(f"{r['train_loss']:.3f}" for r in epochs) + "; training images/s " + ", ".join(f"{v:.0f}" for v in rates))
PY
}

stage_bench() {
  local args=(--device "$DEV" --devices $TOWERS --amp bf16 --channels-last --batch "$BATCH")
  [ "$DRY" = 1 ] && args+=(--preset cifar --repeats 1 --steps 1 --warmup 0) || args+=(--repeats 5 --steps 10 --warmup 3)
  COLUMNS=200 "$PYTHON" -m twogpu_alexnet bench model "${args[@]}" || return 1
  echo "see bench.log for the rows"
}

stage_data() {
  local photos n=1024 workers=$(($(nproc) > 2 ? $(nproc) - 2 : 1)) args
  photos="$(mktemp -d)" && trap 'rm -rf "$photos"' RETURN
  args=(--images "$n" --workers "$workers" --device "$DEV" --seconds 1.5 --batch 128)
  [ "$DRY" = 1 ] && n=16 && args=(--images "$n" --workers 1 --seconds 0.2 --batch 8)
  "$PYTHON" - "$photos" "$n" <<'PY' || return 1
import sys
from pathlib import Path
from PIL import Image
from twogpu_alexnet.data.synthetic import class_names, synthetic_images
out, n = Path(sys.argv[1]), int(sys.argv[2])
images, labels = synthetic_images(0, "train", range(n), 256)
names = class_names()
for i, (img, y) in enumerate(zip(images, labels.tolist())):   # ImageNet's mean photo size, quality 90
    folder = out / names[y]
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.permute(1, 2, 0).numpy()).resize((500, 375), Image.BICUBIC).save(folder / f"{i}.jpg", quality=90)
PY
  "$PYTHON" -m twogpu_alexnet bench data --data "$photos" "${args[@]}" --json >"$OUT/data.json" || return 1
  "$PYTHON" - "$OUT/data.json" <<'PY'   # the table, then the summary line: the issue's targets met or not
import json, sys
from rich.console import Console
from twogpu_alexnet.cli.bench_data import table
r = json.load(open(sys.argv[1]))
Console(width=200).print(table(r))
ref = r["reference_img_s"]
parts = [f"per worker vs reference: raw files {r['raw_img_s'] / ref:.2f}x, JPEG store {r['prepared_img_s'] / ref:.2f}x, "
         f"raw store {r['prepared_raw_img_s'] / ref:.2f}x"]
for key, name, target in (("device_img_s", f"JPEG store to the GPU, {r.get('loader_workers')} workers", 25_000),
                          ("nvjpeg_device_img_s", "nvJPEG", None), ("cache_img_s", "GPU cache", 50_000)):
    if key in r:
        verdict = "" if target is None else f" ({'meets' if r[key] >= target else 'below'} the {target:,} target)"
        parts.append(f"{name} {r[key]:,.0f} images/s{verdict}")
print("; ".join(parts))
PY
}

stage_dropout() {
  if [ "$DRY" != 1 ] && [ "$NGPU" -lt 2 ]; then
    echo "SKIP: one GPU (the towers share its generator)"
    return 0
  fi
  local marks=(-m gpu)
  [ "$DRY" = 1 ] && marks=()
  "$PYTHON" -m pytest -q -p no:cacheprovider -rs "${marks[@]}" tests/test_model_dropout_towers.py || return 1
}

stage_compile() {
  local args=(--preset "$PRESET" --devices "$DEV" --batch "$BATCH" --only "all (bf16, channels_last, compile)")
  [ "$DRY" = 1 ] && args+=(--repeats 1 --steps 1 --warmup 1) || args+=(--repeats 3 --steps 10 --warmup 3)
  COLUMNS=200 "$PYTHON" -m twogpu_alexnet bench options "${args[@]}" || return 1
  [ "$DRY" = 1 ] && echo "DRY: TORCH_COMPILE_DISABLE=1 (the stage's plumbing only, no compilation)"
  echo "see compile.log for the rows"
}

if [ "${1:-}" = __stage ]; then
  cd "$ROOT" || exit 2
  "stage_$2"
  exit $?
fi

# ---------------------------------------------------------------------------------------------
# The driver: budget, per-stage limits, summary.md.

if [ "$DRY" != 1 ] && [ "${NGPU:-0}" -eq 0 ]; then
  echo "error: no CUDA GPU is visible; check nvidia-smi and CUDA_VISIBLE_DEVICES, or rehearse with DRY=1" >&2
  exit 2
fi
mkdir -p "$OUT" 2>/dev/null && [ -w "$OUT" ] || { echo "error: cannot write to OUT=$OUT; choose a writable folder" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"  # the stages run in the checkout
export OUT
SUMMARY="$OUT/summary.md"
START=$SECONDS
FAILED=0
{
  echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "$([ "$DRY" = 1 ] && echo "DRY rehearsal on the CPU (tiny sizes)" || echo "$NGPU GPU(s)"); towers: $TOWERS;" \
    "budget ${BUDGET} s; commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
} >"$SUMMARY"

stage() {  # stage NAME LIMIT_S WHAT: run one stage body under min(LIMIT_S, budget left)
  local name=$1 limit=$2 what=$3 log="$OUT/$1.log"
  local left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 5 ]; then
    echo "- FAIL \`$name\` (not run: the ${BUDGET} s budget is spent) — $what" >>"$SUMMARY"
    FAILED=1
    return
  fi
  [ "$DRY" = 1 ] && limit=$left  # a rehearsal on a shared CPU: only the overall budget counts
  [ "$limit" -gt "$left" ] && limit=$left
  echo "[$((SECONDS - START)) s] $name (limit $limit s) ..." >&2
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" bash "$SELF" __stage "$name" >"$log" 2>&1
  local rc=$? took=$((SECONDS - t0))
  local last
  last="$(grep -v '^[[:space:]]*$' "$log" | tail -n 1 | cut -c1-300)"
  if [ $rc -eq 0 ]; then
    local word=PASS
    case "$last" in SKIP:*) word=SKIP ;; esac
    echo "- $word \`$name\` (${took} s) — $what: $last" >>"$SUMMARY"
  else
    FAILED=1
    local why="exit $rc"
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && why="timed out after $limit s"
    {
      echo "- FAIL \`$name\` ($why, ${took} s) — $what; the end of $name.log:"
      echo
      tail -n 25 "$log" | sed 's/^/      /'
      echo
    } >>"$SUMMARY"
  fi
  if [ $rc -eq 0 ] && { [ "$name" = bench ] || [ "$name" = data ] || [ "$name" = compile ]; }; then  # the rows themselves
    { echo; grep -v -e '^see ' -e '^W[0-9]' "$log" | sed 's/^/      /'; echo; } >>"$SUMMARY"
  fi
}

stage env "${LIMIT_ENV:-30}" "GPU names and link, torch / CUDA / cuDNN, /dev/shm"
stage pytest "${LIMIT_PYTEST:-120}" "pytest -m gpu"
stage train "${LIMIT_TRAIN:-150}" "trainer, $PRESET preset: two-tower bf16 + channels_last, resumed grouped, then flipped"
stage bench "${LIMIT_BENCH:-75}" "bench model rows (bf16 + channels_last, batch $BATCH)"
stage data "${LIMIT_DATA:-90}" "bench data: per worker, then the loader with nproc - 2 workers to the GPU, and the GPU cache"
stage dropout "${LIMIT_DROPOUT:-40}" "dropout masks independent across towers"
stage compile "${LIMIT_COMPILE:-$BUDGET}" "torch.compile with the time left (bench options)"

echo "finished in $((SECONDS - START)) s of ${BUDGET} s" >>"$SUMMARY"
cat "$SUMMARY"
exit $FAILED
