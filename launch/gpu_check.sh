#!/usr/bin/env bash
# Run the GPU tests and the GPU benchmarks on whatever GPUs this machine has; print one table.
#
#   launch/gpu_check.sh
#   CUDA_VISIBLE_DEVICES=0 launch/gpu_check.sh           # as a one-GPU machine
#   PRESET=cifar BATCH=256 launch/gpu_check.sh           # benchmarks on the small net
#
# Rows: pytest -m gpu (tests marked gpu: two-tower / grouped training steps on CUDA, AMP, compile, ...),
# `twogpu-alexnet bench model` (forward+backward images/s: grouped, two-tower, torchvision), and the
# speed options of a full training step (launch/speed_options.py), one device and, with two GPUs,
# the two-tower model. Exit status: that of the tests (0 when they pass).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$HERE"
PYTHON="${PYTHON:-python3}"
PRESET="${PRESET:-paper}"
BATCH="${BATCH:-128}"
NGPU="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')"
if [ "$NGPU" -eq 0 ]; then
  echo "error: no CUDA GPU is visible; gpu_check.sh needs at least one (check nvidia-smi and CUDA_VISIBLE_DEVICES)" >&2
  exit 2
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
echo "GPUs: $NGPU; running pytest -m gpu ..." >&2
set +e
"$PYTHON" -m pytest -m gpu -q -p no:cacheprovider >"$TMP/pytest.txt" 2>&1
echo $? >"$TMP/pytest.rc"
echo "bench model ..." >&2
"$PYTHON" -m twogpu_alexnet bench model --device cuda:0 --json >"$TMP/bench.json" 2>"$TMP/bench.err"
echo "speed options on cuda:0 ..." >&2
"$PYTHON" launch/speed_options.py --device cuda:0 --preset "$PRESET" --batch-size "$BATCH" --json \
  >"$TMP/speed1.json" 2>"$TMP/speed1.err"
if [ "$NGPU" -ge 2 ]; then
  echo "speed options, two-tower on cuda:0 + cuda:1 ..." >&2
  "$PYTHON" launch/speed_options.py --two-tower --devices cuda:0 cuda:1 --preset "$PRESET" --batch-size "$BATCH" \
    --only "baseline (fp32)" "channels_last" "bf16 autocast" "cudnn benchmark" --json >"$TMP/speed2.json" 2>"$TMP/speed2.err"
fi
set -e
"$PYTHON" - "$TMP" "$NGPU" <<'PY'
import json, sys
from pathlib import Path
from rich.console import Console
from rich.table import Table
import torch

tmp, ngpu = Path(sys.argv[1]), int(sys.argv[2])
names = ", ".join(torch.cuda.get_device_name(i) for i in range(ngpu))
table = Table(title=f"gpu_check: {ngpu} GPU(s): {names}")
for col in ("check", "result"):
    table.add_column(col)
lines = [l for l in (tmp / "pytest.txt").read_text().splitlines() if l.strip()]
rc = int((tmp / "pytest.rc").read_text())
table.add_row("pytest -m gpu", (lines[-1] if lines else "no output") + ("" if rc in (0, 5) else "  FAILED"))

def load(name):
    try:
        return json.loads((tmp / name).read_text())
    except (OSError, ValueError):
        err = tmp / name.replace(".json", ".err")
        text = err.read_text().strip().splitlines() if err.exists() else []
        return {"error": text[-1] if text else "no output"}

bench = load("bench.json")
if "error" in bench:
    table.add_row("bench model", f"failed: {bench['error']}")
else:
    for key in ("grouped_img_s", "two_tower_img_s", "torchvision_img_s"):
        if bench.get(key) is not None:
            table.add_row(f"bench model: {key}", f"{bench[key]:.0f} images/s")
for name, label in (("speed1.json", "cuda:0"), ("speed2.json", "two-tower cuda:0+1")):
    if not (tmp / name).exists():
        continue
    speed = load(name)
    if "error" in speed:
        table.add_row(f"train step ({label})", f"failed: {speed['error']}")
        continue
    for row in speed["options"]:
        table.add_row(f"train step {speed['preset']} b{speed['batch_size']} ({label}): {row['option']}",
                      f"{row['img_s']:.0f} images/s ({row['ratio']:.2f}x; best step {row['img_s_best']:.0f}, {row['ratio_best']:.2f}x)")
Console().print(table)
PY
rc="$(cat "$TMP/pytest.rc")"
[ "$rc" -eq 5 ] && rc=0   # no tests collected is not a failure
exit "$rc"
