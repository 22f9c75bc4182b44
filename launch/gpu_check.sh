#!/usr/bin/env bash
# Time-boxed device check: what one GPU (or two) in a short window can prove about this code.
#
#   OUT=gpu-check launch/gpu_check.sh                       # every stage, 330 s in all
#   STAGES="pytest bench" OUT=gpu-check launch/gpu_check.sh # rerun chosen stages (results merge into OUT)
#   BUDGET=600 LIMIT_PYTEST=300 OUT=gpu-check launch/gpu_check.sh   # more time overall / for one stage
#   CUDA_VISIBLE_DEVICES=0 OUT=gpu-check launch/gpu_check.sh          # as a one-GPU machine
#   DRY=1 OUT=/tmp/dry launch/gpu_check.sh                  # rehearsal: every stage on the CPU in tiny sizes
#
# Works from a plain checkout (PYTHONPATH, no pip install; PYTHON names the interpreter, default python3).
# OUT receives three files only, rewritten after every stage: summary.md (printed at the end; it fits in
# 12,000 characters even when stages fail), results.json (every number the stages measured, with the
# device, the torch / CUDA / cuDNN / Triton versions and the commit) and logs.tar.gz (the stage logs,
# each cut to its last 2 MiB). Run folders, photos and checkpoints live in a temporary folder, removed
# at the end. A rerun (STAGES=...) into the same OUT replaces the rerun stages' entries and keeps the rest.
#
# Stages, in order of value (on two GPUs the towers go to cuda:0 and cuda:1, on one both to cuda:0):
#   env      GPU names and link, versions, CPUs, /dev/shm (always runs: results.json's header)
#   pytest   pytest -m gpu -rfEs (LRN kernels, executors, compile, trainer options, resume), a per-test limit
#            when pytest-timeout is importable
#   compile  torch._dynamo.explain of the paper net training forward (graphs, breaks) in both executors, then
#            bench options: float32 against bf16 + channels_last + torch.compile (Inductor)
#   dropout  the towers' dropout masks are independent draws: both towers on cuda:0, and on cuda:0/cuda:1
#            when there are two GPUs
#   ddp      torchrun --nproc_per_node 1: the trainer through the process group (NCCL; gloo in DRY),
#            DistributedDataParallel(device_ids=None) and the host group for a few steps, against the same
#            steps without them (one process: the same weights)
#   mixed    towers on cpu + cuda:0 (cross-device copies, per-tower input delivery, side streams): a few
#            training steps' losses against the grouped model on the same batches
#   train    the trainer, paper preset, synthetic 224 images: two-tower bf16 + channels_last, resumed as
#            grouped, resumed again with channels_last off; checks the three epochs and the checkpoint
#   bench    bench model rows (bf16 + channels_last): grouped, two-tower, torchvision, stock LRN
#   data     bench data on 512 generated 500x375 JPEG photos (made in parallel): per worker, then the
#            loader with nproc - 2 workers to the GPU and from the GPU cache; bounded by images and time
#
# Budget (default 330 s, so that machine start + this + a rerun of what failed fit in 15 minutes) and
# the per-stage limits (LIMIT_<STAGE>), which add up to 330 s; each stage also stops at the budget.
# No GPU has run this yet: the limits come from the DRY rehearsal (measured on a shared 2-core CPU, tiny
# sizes: 308 s wall, 97 s of CPU at load average ~11; 131 s wall, 88 s of CPU at load ~4) and from each
# stage's CPU share at full size.
#   stage    limit  DRY (wall, load ~11)  at full size on the GPU machine
#   env       10 s  18 s                  one torch import and nvidia-smi (~3 s unloaded)
#   pytest    90 s  14 s (collection)     48 gpu-marked tests (45 without the dropout file), mostly 1-10 s; Inductor
#                                         compiles in 3 files (cifar net, LRN, trainer); any one test stops at 60 s
#   compile   60 s  45 s                  dynamo traces of the paper net 2-3 s each (CPU-measured); Inductor
#                                         compile of its forward + backward ~30-40 s; 2 rows x (2 + 2 x 5) steps
#   dropout   20 s  17 s                  three cifar models, one forward each
#   ddp       30 s  38 s                  torchrun start + two 4-step cifar trainer runs, batch 32
#   mixed     30 s  43 s                  two 4-step cifar trainer runs (the CPU tower ~50 ms a step)
#   train     40 s  76 s                  3 trainer starts; 3 x 24 steps x 64 synthetic 224 images (15-40 ms of
#                                         CPU each) on 15 workers ~8-12 s; 3 x 256 validation images
#   bench     25 s  24 s                  4 rows x (2 warm-up + 2 x 5 timed) steps of batch 256, ~0.1 s a step
#   data      25 s  31 s                  512 photos at ~40 ms each on 16 processes ~2 s; two stores ~3 s;
#                                         4 pipelines <= 1 s each (bench data's bound); 7 loader rows <= 1 s each
#                                         plus their worker starts
# A stage past its limit is a failure; rerun it with a larger LIMIT_<STAGE> and STAGES=<stage>.
# Exit status: 0 when every stage run passed (or was skipped as not applicable), 1 otherwise, 2 for a
# setup mistake (no GPU, OUT not writable, unknown stage).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/launch/gpu_check.sh"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHON="${PYTHON:-python3}"
export DRY="${DRY:-0}"
ALL_STAGES="env pytest compile dropout ddp mixed train bench data"
export TRAIN_STEPS="${TRAIN_STEPS:-24}"    # training steps per epoch (three epochs: two-tower, grouped, flipped)
export TRAIN_BATCH="${TRAIN_BATCH:-64}"    # the trainer's batch
export BATCH="${BATCH:-256}"               # bench model / bench options batch
export PHOTOS="${PHOTOS:-512}"             # bench data images
export SMOKE_STEPS=4 SMOKE_BATCH=32         # ddp and mixed: steps compared, batch
if [ "$DRY" = 1 ]; then
  export CUDA_VISIBLE_DEVICES="" TORCH_COMPILE_DISABLE=1 TRAIN_STEPS=2 TRAIN_BATCH=4 BATCH=2 PHOTOS=8
  export SMOKE_STEPS=2 SMOKE_BATCH=4
  export NGPU=0 DEV=cpu TOWERS="cpu cpu" PRESET=cifar
else
  export NGPU="${NGPU:-$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")}"
  export DEV=cuda:0 PRESET=paper
  if [ "${NGPU:-0}" -ge 2 ]; then TOWERS="cuda:0 cuda:1"; else TOWERS="cuda:0 cuda:0"; fi
  export TOWERS
fi

# ---------------------------------------------------------------------------------------------
# Stage bodies: `gpu_check.sh __stage NAME` runs one of them (under `timeout`, its output the stage's
# log in $WORK). The last line a body prints is its result line in the summary; numbers go to
# $WORK/NAME.json (one JSON object), which results.json takes in.

stage_env() {
  nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not available"
  nvidia-smi topo -m 2>/dev/null || true
  df -h /dev/shm 2>/dev/null || true
  "$PYTHON" - "$WORK/env.json" "$ROOT" <<'PY'
import json, os, platform, shutil, subprocess, sys
import torch, torchvision
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = None
cuda = torch.cuda.is_available()
gpus = [{"name": torch.cuda.get_device_name(i), "memory_gib": round(torch.cuda.get_device_properties(i).total_memory
                                                                    / 2**30, 1)} for i in range(torch.cuda.device_count())] if cuda else []
commit = subprocess.run(["git", "-C", sys.argv[2], "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "-C", sys.argv[2], "status", "--porcelain", "--untracked-files=no"],
                       capture_output=True, text=True).stdout.strip()
env = {"device": ", ".join(g["name"] for g in gpus) or f"cpu ({platform.processor() or platform.machine()})",
       "gpus": gpus, "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
       "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
       "triton": triton_version, "cpus": os.cpu_count(),
       "shm_gib": round(shutil.disk_usage("/dev/shm").total / 2**30, 1) if os.path.isdir("/dev/shm") else None,
       "commit": (commit or "unknown") + (" (with local changes)" if dirty else "")}
json.dump(env, open(sys.argv[1], "w"))
print(f"{env['device']}; torch {env['torch']}, torchvision {env['torchvision']}, CUDA {env['cuda']}, "
      f"cuDNN {env['cudnn']}, Triton {env['triton']}, Python {env['python']}; {env['cpus']} CPUs, "
      f"/dev/shm {env['shm_gib']} GiB")
PY
}

pytest_args() {  # the flags every pytest stage uses: FAILED/ERROR/SKIP lines, a per-test limit where possible
  printf '%s\n' -q -p no:cacheprovider -rfEs
  if "$PYTHON" -c "import pytest_timeout" 2>/dev/null; then
    printf '%s\n' "--timeout=${TEST_LIMIT:-60}"
  fi
}

stage_pytest() {
  local files=(tests --ignore=tests/test_model_dropout_towers.py) args
  [ "$DRY" = 1 ] && files=(tests/test_model_gpu.py tests/test_model_lrn_triton.py)  # collection only: all skip
  mapfile -t args < <(pytest_args)
  "$PYTHON" -m pytest -m gpu "${args[@]}" "${files[@]}"
  local rc=$?
  [ $rc -eq 5 ] && rc=0  # no gpu-marked test collected is not a failure
  return $rc
}

stage_compile() {  # the dynamo trace runs in DRY too (TORCH_COMPILE_DISABLE would hide the graphs)
  env -u TORCH_COMPILE_DISABLE "$PYTHON" - "$WORK/compile-graphs.json" <<'PY' || return 1
import json, os, sys
import torch
import torch.nn.functional as F
from twogpu_alexnet import build_model
dev, towers, preset = os.environ["DEV"], tuple(os.environ["TOWERS"].split()), os.environ["PRESET"]
found = {}
for name, kw in (("grouped", {"mode": "grouped", "device": dev}), ("two_tower", {"mode": "two-tower", "devices": towers})):
    model = build_model(preset, **kw).train()
    size = model.spec.input_size
    x, y = torch.randn(2, 3, size, size, device=dev), torch.tensor([1, 2], device=dev)
    torch._dynamo.reset()
    e = torch._dynamo.explain(lambda a, b: F.cross_entropy(model(a), b))(x, y)
    found[name] = {"graphs": e.graph_count, "breaks": e.graph_break_count,
                   "break_reasons": [str(r.reason)[:200] for r in e.break_reasons][:3]}
json.dump(found, open(sys.argv[1], "w"))
print(f"{preset} training forward + loss under torch._dynamo: " + ", ".join(
    f"{k} {v['graphs']} graph(s), {v['breaks']} break(s)" for k, v in found.items()))
sys.exit(0 if all(v["graphs"] == 1 and v["breaks"] == 0 for v in found.values()) else 1)
PY
  local args=(--preset "$PRESET" --devices "$DEV" --batch "$BATCH" --only "all (bf16, channels_last, compile)")
  [ "$DRY" = 1 ] && args+=(--repeats 1 --steps 1 --warmup 1) || args+=(--repeats 2 --steps 5 --warmup 2)
  "$PYTHON" -m twogpu_alexnet bench options "${args[@]}" --json >"$WORK/compile-options.json" || return 1
  "$PYTHON" - "$WORK" <<'PY'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
graphs, options = json.loads((work / "compile-graphs.json").read_text()), json.loads((work / "compile-options.json").read_text())
json.dump({"graphs": graphs, "options": options}, open(work / "compile.json", "w"))
rows = "; ".join(f"{r['option']} {r['img_s']:,.0f} images/s ({r['ratio']:.2f}x)" for r in options["options"])
print(("[DRY: no compilation] " if __import__("os").environ.get("DRY") == "1" else "")
      + f"1 graph, 0 breaks in both executors; {options['preset']}, batch {options['batch']}: {rows}")
PY
}

stage_dropout() {
  local args
  mapfile -t args < <(pytest_args)
  if [ "$DRY" = 1 ]; then  # the CPU test (both towers on the CPU): the stage's plumbing
    "$PYTHON" -m pytest "${args[@]}" tests/test_model_dropout_towers.py || return 1
  else  # both towers on cuda:0, on cuda:0 + cpu, and on cuda:0/cuda:1 where there are two GPUs
    "$PYTHON" -m pytest -m gpu "${args[@]}" tests/test_model_dropout_towers.py || return 1
  fi
  echo "tower 0's and tower 1's dropout masks agree on ~half the units (independent draws)$([ "$NGPU" -lt 2 ] && [ "$DRY" != 1 ] && echo "; cuda:0/cuda:1 skipped: one GPU")"
}

stage_ddp() {
  cat >"$WORK/ddp_smoke.py" <<'PY'
"""The trainer through the multi-process path in one process: process group, DDP, host group."""
import json, os, sys
from pathlib import Path
import torch
from twogpu_alexnet.engine import distributed
from twogpu_alexnet.engine.config import load_config
from twogpu_alexnet.engine.metrics import read_metrics
from twogpu_alexnet.engine.train import train


class OneProcessGroup(distributed.DistContext):
    """A one-process job that still takes the multi-process path (torchrun cannot give one GPU two ranks)."""
    @property
    def enabled(self):
        return True


work, dev = Path(sys.argv[1]), os.environ["DEV"]
steps, batch = int(os.environ["SMOKE_STEPS"]), int(os.environ["SMOKE_BATCH"])
sets = [f"data.synthetic_images={steps * batch}", f"data.synthetic_val_images={batch}", f"train.batch_size={batch}",
        "train.epochs=1", f"train.max_steps_per_epoch={steps}", "train.log_every=1", "train.deterministic=true",
        "train.lr=0.001", "model.mode=auto", "analysis.kernel_grid_epochs=[]", "data.workers=0"]
ctx = distributed.context_from_env()
runs = {}
for name, c in (("ddp", OneProcessGroup(ctx.rank, ctx.world_size, ctx.local_rank, ctx.local_world_size)),
                ("plain", distributed.DistContext())):
    result = train(load_config(None, sets), work / f"ddp-{name}", ctx=c)
    assert result.exit_code == 0, f"{name}: {result.status}"
    runs[name] = [r["loss"] for r in read_metrics(work / f"ddp-{name}" / "metrics.jsonl")[0] if r["kind"] == "step"]
backend = "nccl" if dev.startswith("cuda") else "gloo"
diff = max(abs(a - b) for a, b in zip(runs["ddp"], runs["plain"]))
json.dump({"backend": backend, "losses_ddp": runs["ddp"], "losses_plain": runs["plain"], "max_abs_diff": diff},
          open(work / "ddp.json", "w"))
assert len(runs["ddp"]) == len(runs["plain"]) == steps, runs
assert diff <= 1e-4 * max(abs(v) for v in runs["plain"]), f"losses differ by {diff}: {runs}"
print(f"torchrun, 1 process, {backend} + DDP(device_ids=None), cifar, model.mode auto: {steps} steps' losses "
      f"{', '.join(f'{v:.4f}' for v in runs['ddp'])}; without DDP: max difference {diff:.2e}")
PY
  "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 "$WORK/ddp_smoke.py" "$WORK"
}

stage_mixed() {
  "$PYTHON" - "$WORK" <<'PY'
"""Towers on cpu + cuda:0 (cpu + cpu in DRY) against the grouped model, the same steps on the same batches."""
import json, os, sys
from pathlib import Path
import torch
from twogpu_alexnet.engine.config import load_config
from twogpu_alexnet.engine.metrics import read_metrics
from twogpu_alexnet.engine.train import train

torch.backends.cudnn.allow_tf32 = False  # float32 convolutions on the GPU as on the CPU tower: a tight comparison
work, dev = Path(sys.argv[1]), os.environ["DEV"]
steps, batch = int(os.environ["SMOKE_STEPS"]), int(os.environ["SMOKE_BATCH"])
common = [f"data.synthetic_images={steps * batch}", f"data.synthetic_val_images={batch}", f"train.batch_size={batch}",
          "train.epochs=1", f"train.max_steps_per_epoch={steps}", "train.log_every=1", "train.deterministic=true",
          "train.lr=0.001", "analysis.kernel_grid_epochs=[]", f"data.workers={0 if os.environ['DRY'] == '1' else 2}"]
runs = {"mixed": ["model.mode=two-tower", f"model.devices=['cpu', '{dev}']"],
        "grouped": ["model.mode=grouped", f"model.devices=['{dev}']"]}
losses = {}
for name, sets in runs.items():
    result = train(load_config(None, common + sets), work / f"mixed-{name}")
    assert result.exit_code == 0, f"{name}: {result.status}"
    losses[name] = [r["loss"] for r in read_metrics(work / f"mixed-{name}" / "metrics.jsonl")[0] if r["kind"] == "step"]
rel = max(abs(a - b) / abs(b) for a, b in zip(losses["mixed"], losses["grouped"]))
json.dump({"towers": ["cpu", dev], "losses_mixed": losses["mixed"], "losses_grouped": losses["grouped"],
           "max_rel_diff": rel}, open(work / "mixed.json", "w"))
assert len(losses["mixed"]) == len(losses["grouped"]) == steps, losses
assert rel < 1e-3, f"losses differ by {rel:.2e} (relative): {losses}"
print(f"cifar, towers cpu + {dev} vs grouped on {dev}: {steps} steps' losses {', '.join(f'{v:.4f}' for v in losses['mixed'])}; "
      f"max relative difference {rel:.1e}")
PY
}

train_cli() {  # train_cli LABEL ARGS...: one trainer run through the CLI, its JSON result kept
  local label=$1; shift
  echo "== $label: twogpu-alexnet train $*"
  "$PYTHON" -m twogpu_alexnet train "$@" --json >"$WORK/train-$label.json" || return 1
  cat "$WORK/train-$label.json"
}

stage_train() {
  local run="$WORK/train-run" workers=$(($(nproc) > 16 ? 15 : $(nproc) - 1)) val=256 t0 t1
  [ "$DRY" = 1 ] && workers=0 val=4
  read -r t0 t1 <<<"$TOWERS"
  rm -rf "$run"
  train_cli two-tower --out "$run" --set "model.preset=\"$PRESET\"" --set 'data.source="synthetic"' \
    --set "data.synthetic_images=$((TRAIN_STEPS * TRAIN_BATCH))" --set "data.synthetic_val_images=$val" \
    --set "data.workers=$workers" --set "train.batch_size=$TRAIN_BATCH" --set train.epochs=1 \
    --set "train.max_steps_per_epoch=$TRAIN_STEPS" --set train.log_every=8 --set 'model.mode="two-tower"' \
    --set "model.devices=[\"$t0\", \"$t1\"]" --set 'speed.amp="bf16"' --set speed.channels_last=true \
    --set 'analysis.kernel_grid_epochs=[]' || return 1
  train_cli grouped --resume "$run" --set train.epochs=2 --set 'model.mode="grouped"' \
    --set "model.devices=[\"$DEV\"]" || return 1
  train_cli flipped --resume "$run" --set train.epochs=3 --set speed.channels_last=false || return 1
  "$PYTHON" - "$run" "$WORK" <<'PY'
import json, math, sys
from pathlib import Path
import torch
run, work = Path(sys.argv[1]), Path(sys.argv[2])
epochs = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_top1_error" in r]
assert [r["epoch"] for r in epochs] == [1, 2, 3], f"epoch lines {[r['epoch'] for r in epochs]}, expected 1, 2, 3"
assert all(math.isfinite(r["train_loss"]) for r in epochs), "a non-finite training loss"
saved = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
assert saved["epoch"] == 3 and saved.get("mode", "grouped") == "grouped", (saved["epoch"], saved.get("mode"))
runs = {k: json.loads((work / f"train-{k}.json").read_text()) for k in ("two-tower", "grouped", "flipped")}
json.dump({"epochs": epochs, "runs": runs}, open(work / "train.json", "w"))
print("3 epochs (two-tower bf16+channels_last, resumed grouped, resumed channels_last off); losses "
      + ", ".join(f"{r['train_loss']:.3f}" for r in epochs) + "; training images/s "
      + ", ".join(f"{r['images_per_s']:.0f}" for r in runs.values()))
PY
}

stage_bench() {
  local args=(--device "$DEV" --devices $TOWERS --amp bf16 --channels-last --batch "$BATCH")
  [ "$DRY" = 1 ] && args+=(--preset cifar --repeats 1 --steps 1 --warmup 0) || args+=(--repeats 2 --steps 5 --warmup 2)
  "$PYTHON" -m twogpu_alexnet bench model "${args[@]}" --json >"$WORK/bench.json" || return 1
  "$PYTHON" - "$WORK/bench.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['preset']}, batch {r['batch']}, amp {r['amp']}: " + "; ".join(
    f"{row['model']} {row['img_s']:,.0f} images/s, {row['tflops']:.3g} TFLOP/s"
    + (f" ({row['percent_of_peak']:.0f}% of {row['peak_tflops']:g})" if row.get("percent_of_peak") else "")
    for row in r["rows"]))
PY
}

stage_data() {
  local photos="$WORK/photos" workers=$(($(nproc) > 2 ? $(nproc) - 2 : 1)) args
  args=(--images "$PHOTOS" --workers "$workers" --device "$DEV" --seconds 1 --batch 128)
  [ "$DRY" = 1 ] && args=(--images "$PHOTOS" --workers 1 --seconds 0.2 --batch 4)
  "$PYTHON" - "$photos" "$PHOTOS" <<'PY' || return 1
import os, sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def write(args):  # ImageNet's mean photo size, quality 90
    out, lo, hi = args
    from PIL import Image
    from twogpu_alexnet.data.synthetic import class_names, synthetic_images
    images, labels = synthetic_images(0, "train", range(lo, hi), 256)
    names = class_names()
    for i, img, y in zip(range(lo, hi), images, labels.tolist()):
        folder = Path(out) / names[y]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).resize((500, 375), Image.BICUBIC).save(folder / f"{i}.jpg",
                                                                                          quality=90)


if __name__ == "__main__":
    out, n = sys.argv[1], int(sys.argv[2])
    procs = max(1, min(16, os.cpu_count() or 1))
    step = -(-n // procs)
    with ProcessPoolExecutor(procs) as pool:
        list(pool.map(write, [(out, lo, min(n, lo + step)) for lo in range(0, n, step)]))
PY
  "$PYTHON" -m twogpu_alexnet bench data --data "$photos" "${args[@]}" --json >"$WORK/data.json" || return 1
  "$PYTHON" - "$WORK/data.json" <<'PY'   # the summary line: the targets met or not
import json, sys
r = json.load(open(sys.argv[1]))
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

finish() {  # OUT/summary.md, OUT/results.json, OUT/logs.tar.gz from what the stages left in WORK
  "$PYTHON" - "$WORK" "$OUT" "$ALL_STAGES" "$((SECONDS - START))" <<'PY'
import io, json, os, re, sys, tarfile, time
from pathlib import Path

work, out, order, elapsed = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(), int(sys.argv[4])
LOG_KEEP = 2 * 2**20          # bytes of each log kept in the archive
SUMMARY_MAX = 10_500          # characters: the summary must fit a 12,000-character output tail
old = {}
if (out / "results.json").is_file():
    try:
        old = json.loads((out / "results.json").read_text())
    except ValueError:
        old = {}
results = {"dry": os.environ.get("DRY") == "1", "budget_s": int(os.environ["BUDGET"]), "elapsed_s": elapsed,
           "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "towers": os.environ["TOWERS"].split(),
           "stages_run": os.environ["STAGES"].split(), "stages": dict(old.get("stages", {}))}
if (work / "env.json").is_file():
    results.update(json.loads((work / "env.json").read_text()))
else:
    results.update({k: old[k] for k in ("device", "gpus", "torch", "cuda", "cudnn", "commit") if k in old})


def tail(text, lines):
    return [line[:160] for line in text.splitlines() if line.strip()][-lines:]


for line in (work / "status.tsv").read_text().splitlines():
    name, status, seconds, limit, rc, why = line.split("\t")
    log = work / f"{name}.log"
    text = log.read_text(errors="replace") if log.is_file() else ""
    entry = {"status": status, "seconds": int(seconds), "limit_s": int(limit), "exit": int(rc), "why": why,
             "result": (tail(text, 1) or [""])[0] if status != "FAIL" else why}
    if (work / f"{name}.json").is_file():
        try:
            entry["numbers"] = json.loads((work / f"{name}.json").read_text())
        except ValueError as exc:
            entry["numbers_error"] = str(exc)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.M)
    if failed:
        entry["failed_tests"] = failed
    counts = re.findall(r"^=*\s*((?:\d+ \w+(?:, )?)+) in [\d.]+s", text, re.M)
    if counts:
        entry["pytest"] = counts[-1]
    if status == "FAIL":
        entry["log_tail"] = tail(text, 12)
    results["stages"][name] = entry
(out / ".results.json.tmp").write_text(json.dumps(results, indent=1))
os.replace(out / ".results.json.tmp", out / "results.json")

# logs: this call's, plus those of stages not rerun from the previous archive
logs = {p.name: p for p in work.glob("*.log")}
archive = out / "logs.tar.gz"
if archive.is_file():
    try:
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():
                if m.isfile() and re.fullmatch(r"\w+\.log", m.name) and m.name not in logs:
                    (work / "previous").mkdir(exist_ok=True)
                    (work / "previous" / m.name).write_bytes(tar.extractfile(m).read())
                    logs[m.name] = work / "previous" / m.name
    except (tarfile.TarError, OSError):
        pass
with tarfile.open(out / ".logs.tar.gz.tmp", "w:gz") as tar:
    for name, path in sorted(logs.items()):
        data = path.read_bytes()[-LOG_KEEP:]
        info = tarfile.TarInfo(name)
        info.size, info.mtime = len(data), int(path.stat().st_mtime)
        tar.addfile(info, io.BytesIO(data))
os.replace(out / ".logs.tar.gz.tmp", archive)


def render(tail_lines, max_tests, cut=False):
    r = results
    head = [f"# gpu_check {r['finished']}", "",
            ("DRY rehearsal on the CPU (tiny sizes); " if r["dry"] else "")
            + f"device: {r.get('device', '?')}; towers: {' '.join(r['towers'])}; torch {r.get('torch')}, "
            f"CUDA {r.get('cuda')}, cuDNN {r.get('cudnn')}; commit {r.get('commit', '?')}",
            f"this call: stages {' '.join(r['stages_run'])}, {r['elapsed_s']} s of the {r['budget_s']} s budget", ""]
    body = []
    for name in [n for n in order if n in r["stages"]]:
        e = r["stages"][name]
        again = "" if name in r["stages_run"] else " (earlier call)"
        if e["status"] != "FAIL":
            body.append(f"- {e['status']} `{name}` ({e['seconds']} s){again}: {e['result'][:400]}")
            continue
        body.append(f"- FAIL `{name}` ({e['why']}, {e['seconds']} s){again}")
        tests = e.get("failed_tests", [])
        body += [f"    - {t[:150]}" for t in tests[:max_tests]]
        if len(tests) > max_tests:
            body.append(f"    - ... {len(tests) - max_tests} more failed tests in results.json")
        body += [f"      {line}" for line in (e.get("log_tail", [])[-tail_lines:] if tail_lines else [])]
    bad = [n for n, e in r["stages"].items() if e["status"] == "FAIL"]
    foot = ["", f"failed: {' '.join(bad)}; rerun them: STAGES=\"{' '.join(bad)}\" OUT={out} launch/gpu_check.sh"
            if bad else "every stage passed", "numbers: results.json; logs: logs.tar.gz"]
    body_text = "\n".join(body)
    room = SUMMARY_MAX - len("\n".join(head + foot)) - 2
    if cut and len(body_text) > room:  # the last resort: the head and the rerun line always fit
        body_text = body_text[:max(room - 40, 0)] + "\n[... cut: see results.json]"
    return "\n".join(head + [body_text] + foot) + "\n"


for tail_lines, max_tests in ((12, 15), (8, 10), (4, 6), (2, 3), (0, 3), (0, 0)):
    text = render(tail_lines, max_tests)
    if len(text) <= SUMMARY_MAX:
        break
else:
    text = render(0, 0, cut=True)
(out / ".summary.md.tmp").write_text(text)
os.replace(out / ".summary.md.tmp", out / "summary.md")
PY
}

if [ "${1:-}" = __finish ]; then  # OUT rebuilt from the WORK folder $2 alone (how the tests check the summary)
  WORK=$2 START=$SECONDS OUT="${OUT:?OUT must name the output folder}" BUDGET="${BUDGET:-330}"
  STAGES="$(cut -f1 "$WORK/status.tsv" | tr '\n' ' ')"
  export WORK OUT BUDGET STAGES
  mkdir -p "$OUT" || exit 2
  finish
  exit $?
fi

if [ "${1:-}" = __stage ]; then
  cd "$ROOT" || exit 2
  "stage_$2"
  exit $?
fi

# ---------------------------------------------------------------------------------------------
# The driver: budget, per-stage limits, then OUT rewritten after each stage.

if [ "$DRY" != 1 ] && [ "${NGPU:-0}" -eq 0 ]; then
  echo "error: no CUDA GPU is visible; check nvidia-smi and CUDA_VISIBLE_DEVICES, or rehearse with DRY=1" >&2
  exit 2
fi
STAGES="${STAGES:-$ALL_STAGES}"
for s in $STAGES; do
  case " $ALL_STAGES " in *" $s "*) ;; *) echo "error: unknown stage '$s' in STAGES; choose from: $ALL_STAGES" >&2; exit 2 ;; esac
done
case " $STAGES " in *" env "*) ;; *) STAGES="env $STAGES" ;; esac  # results.json's header
OUT="${OUT:-gpu-check-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT" 2>/dev/null && [ -w "$OUT" ] || { echo "error: cannot write to OUT=$OUT; choose a writable folder" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
BUDGET="${BUDGET:-330}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")" || exit 2
export OUT WORK BUDGET STAGES
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS
: >"$WORK/status.tsv"

stage() {  # stage NAME: run one stage body under min(its limit, the budget left), then rewrite OUT
  local name=$1 log="$WORK/$1.log" limit_var="LIMIT_${1^^}" limit
  limit="${!limit_var:-${DEFAULT_LIMIT[$name]}}"
  local left=$((BUDGET - (SECONDS - START))) t0=$SECONDS rc status why=""
  if [ "$left" -lt 5 ]; then
    printf '%s\tFAIL\t0\t0\t-1\tnot run: the %s s budget is spent\n' "$name" "$BUDGET" >>"$WORK/status.tsv"
    finish
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "[$((SECONDS - START)) s] $name (limit $limit s) ..." >&2
  timeout --kill-after=10 "$limit" bash "$SELF" __stage "$name" >"$log" 2>&1
  rc=$?
  status=PASS
  if [ $rc -ne 0 ]; then
    status=FAIL why="exit $rc"
    { [ $rc -eq 124 ] || [ $rc -eq 137 ]; } && why="timed out after $limit s"
  elif grep -v '^[[:space:]]*$' "$log" | tail -n 1 | grep -q '^SKIP:'; then
    status=SKIP
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$limit" "$rc" "$why" >>"$WORK/status.tsv"
  finish
}

declare -A DEFAULT_LIMIT=([env]=10 [pytest]=90 [compile]=60 [dropout]=20 [ddp]=30 [mixed]=30 [train]=40 [bench]=25
                          [data]=25)
if [ "$DRY" = 1 ]; then  # a rehearsal on a shared CPU: only the overall budget counts
  for s in $ALL_STAGES; do DEFAULT_LIMIT[$s]=$BUDGET; done
fi
for s in $ALL_STAGES; do
  case " $STAGES " in *" $s "*) stage "$s" ;; esac
done
cat "$OUT/summary.md"
cut -f2 "$WORK/status.tsv" | grep -qx FAIL && exit 1
exit 0
