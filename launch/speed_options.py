#!/usr/bin/env python3
"""Measure what each speed option (bf16/fp16 autocast, channels_last, torch.compile, cudnn benchmark)
buys for a training step on one device, against float32 in the same process; prints a table or JSON.

usage:
  python3 launch/speed_options.py --device cuda:0 --preset paper --batch-size 128
  python3 launch/speed_options.py --device cpu --preset cifar --batch-size 64 --json
  python3 launch/speed_options.py --two-tower --devices cuda:0 cuda:1 --preset paper
"""
import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from twogpu_alexnet.engine.speed import VARIANTS, measure_speed_options


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="device for the grouped model (default cpu)")
    p.add_argument("--two-tower", action="store_true", help="measure the two-tower model on --devices")
    p.add_argument("--devices", nargs=2, default=["cuda:0", "cuda:1"], help="tower 0 and tower 1 devices")
    p.add_argument("--preset", default="cifar", help="model preset (default cifar)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed training steps per option")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--only", nargs="*", choices=list(VARIANTS), help="measure only these options")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args()
    mode, devices = ("two-tower", tuple(args.devices)) if args.two_tower else ("grouped", (args.device,))
    rows = measure_speed_options(args.preset, mode, devices, args.batch_size, args.steps, args.warmup, args.only)
    result = {"preset": args.preset, "mode": mode, "devices": list(devices), "batch_size": args.batch_size,
              "steps": args.steps, "options": rows}
    if args.json:
        print(json.dumps(result))
        return 0
    table = Table(title=f"training step speed: {args.preset}, {mode} on {', '.join(devices)}, batch {args.batch_size}")
    for col in ("option", "images/s (median step)", "vs fp32", "images/s (best step)", "vs fp32 "):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["option"], f"{r['img_s']:.0f}", f"{r['ratio']:.2f}x", f"{r['img_s_best']:.0f}",
                      f"{r['ratio_best']:.2f}x")
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
