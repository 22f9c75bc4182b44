"""``twogpu-alexnet bench model|data``: throughput tables measured in one process run."""
from __future__ import annotations

import importlib

from rich.table import Table

from .common import add_json_flag, console_for, print_json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: model (training step) and data (input pipeline)",
                              description="Benchmarks measured in one process run. "
                              "Example: twogpu-alexnet bench model --device cpu")
    sub = p.add_subparsers(dest="bench", metavar="WHAT", required=True)
    m = sub.add_parser(
        "model",
        help="training-step images/s: grouped, two-tower and torchvision's alexnet",
        description="Training-step images/s (224 input; batch 32 on CPU, 128 on GPU; interleaved repeats; "
        "medians) and peak GPU memory per device for the grouped and two-tower executors, "
        "torchvision's alexnet, and a grouped model with the stock LRN per tower. "
        "Example: twogpu-alexnet bench model --device cuda:0 --json",
    )
    m.add_argument("--device", default="cpu", help="device for grouped and torchvision (default: cpu)")
    m.add_argument("--devices", nargs=2, metavar=("TOWER0", "TOWER1"), default=None,
                   help="devices of the two towers (default: cuda:0 cuda:1 with two GPUs, else DEVICE DEVICE)")
    m.add_argument("--batch", type=int, default=None, help="batch size (default: 32 on CPU, 128 on GPU)")
    m.add_argument("--repeats", type=int, default=5, help="interleaved repeats; the median is reported (default: 5)")
    m.add_argument("--steps", type=int, default=2, help="training steps per timed repeat (default: 2)")
    m.add_argument("--preset", default="paper", help="preset to time (default: paper)")
    add_json_flag(m)
    m.set_defaults(run=run_model)
    try:
        bench_data = importlib.import_module(".bench_data", __package__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.bench_data":
            raise
    else:
        bench_data.add_parser(sub)


def run_model(args) -> int:
    from ..bench_model import bench_model

    console = console_for(args)
    if not args.json:
        console.print(
            f"timing training steps on {args.device} (batch {args.batch or 'default'}, {args.repeats} repeats)..."
        )
    result = bench_model(args.device, devices=args.devices, batch=args.batch, repeats=args.repeats,
                         steps=args.steps, preset=args.preset)
    if args.json:
        print_json(result)
        return 0
    table = Table(title=f"training step, preset {result['preset']}, batch {result['batch']}, "
                  f"{result['device']} ({result['threads']} threads)", title_justify="left")
    for col in ("model", "images/s", "vs torchvision", "peak memory (MiB)"):
        table.add_column(col, justify="left" if col == "model" else "right")
    tv = result["torchvision_img_s"]
    names = {"grouped": "grouped", "two_tower": f"two-tower {'/'.join(result['two_tower_devices'])}",
             "torchvision": "torchvision alexnet", "grouped_stock_lrn": "grouped, stock LRN per tower"}
    for key, label in names.items():
        rate = result[f"{key}_img_s"]
        mem = result["peak_memory_mib"]
        mem_text = ", ".join(f"{d}: {v:,.0f}" for d, v in mem[key].items()) if mem else "-"
        table.add_row(label, f"{rate:.1f}", f"{rate / tv:.2f}x", mem_text)
    console.print(table)
    console.print(f"grouped vs stock-LRN grouped: {result['grouped_vs_stock_lrn']:.2f}x   "
                  f"two-tower vs grouped: {result['two_tower_vs_grouped']:.2f}x")
    return 0
