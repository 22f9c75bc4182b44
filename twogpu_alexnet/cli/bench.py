"""``twogpu-alexnet bench model|options|data``: throughput tables measured in one process run."""
from __future__ import annotations

import importlib

from rich.table import Table

from ..errors import UserError
from .common import add_json_flag, console_for, print_json
from .options import add_batch_size, add_device, add_preset, described

AMP_CHOICES = ("none", "bf16", "fp16")
LABELS = {"grouped": "grouped", "two_tower": "two-tower", "torchvision": "torchvision alexnet",
          "grouped_stock_lrn": "grouped, stock LRN per tower"}


def _add_timing(p, steps: int, repeats: int) -> None:
    p.add_argument("--repeats", type=int, default=repeats,
                   help=f"interleaved timed repeats; medians are reported (default: {repeats})")
    p.add_argument("--steps", type=int, default=steps, help=f"training steps per timed repeat (default: {steps})")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed steps per row first (compile, cudnn plans, allocator; default: 1)")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: model (training step), options, data (input pipeline)",
                              **described("Benchmarks measured in one process run.",
                                          "twogpu-alexnet bench model --device cpu"))
    sub = p.add_subparsers(dest="bench", metavar="WHAT", required=True)
    m = sub.add_parser(
        "model",
        help="training-step images/s and TFLOP/s: grouped, two-tower, torchvision's alexnet, stock LRN",
        **described("Training-step rows (224 input; batch 32 on CPU, 128 on GPU; interleaved repeats; medians): "
                    "images/s, ms/step, peak GPU memory per device, achieved TFLOP/s (FLOPs from the layer table) "
                    "and the percentage of --peak-tflops, for the grouped and two-tower executors, torchvision's "
                    "alexnet and a grouped model with the stock LRN per tower, all in the same settings "
                    "(torchvision only at 224 inputs). On a GPU cudnn.benchmark and TF32 are on.",
                    "twogpu-alexnet bench model --device cpu",
                    "twogpu-alexnet bench model --device cuda:0 --amp bf16 --channels-last --batch-size 256"),
    )
    add_device(m, what="device for grouped and torchvision")
    m.add_argument("--devices", nargs=2, metavar=("TOWER0", "TOWER1"), default=None,
                   help="devices of the two towers (default: cuda:0 cuda:1 with two GPUs, else DEVICE DEVICE)")
    add_batch_size(m, None, what="images per training step (32 on CPU, 128 on GPU)")
    _add_timing(m, steps=2, repeats=5)
    add_preset(m, default="paper", what="preset to time (default: paper)")
    m.add_argument("--amp", choices=AMP_CHOICES, default="none", help="autocast dtype (default: none)")
    m.add_argument("--channels-last", action="store_true", help="channels-last weights and inputs")
    m.add_argument("--compile", action="store_true", help="torch.compile every model (compile time is in warm-up)")
    m.add_argument("--peak-tflops", type=float, default=None,
                   help="the hardware's peak for the percentage column (default: a table of known GPUs, else none)")
    add_json_flag(m)
    m.set_defaults(run=run_model)

    o = sub.add_parser(
        "options",
        help="what each speed option (channels_last, bf16/fp16 autocast, compile) buys, against fp32",
        **described("Training-step images/s of one model with one speed option at a time, against float32 "
                    "measured in the same run (interleaved repeats, medians).",
                    "twogpu-alexnet bench options --preset paper --devices cuda:0 --batch-size 128"),
    )
    add_preset(o, default="paper", what="preset to time (default: paper)")
    o.add_argument("--mode", choices=("grouped", "two-tower"), default="grouped", help="executor (default: grouped)")
    o.add_argument("--devices", nargs="+", default=None, metavar="DEV",
                   help="one device (grouped) or two (two-tower) (default: auto = cuda:0 when present, else cpu)")
    add_batch_size(o, 64, what="images per training step")
    _add_timing(o, steps=3, repeats=3)
    o.add_argument("--only", nargs="+", metavar="OPTION", help="measure only these options (names as printed)")
    add_json_flag(o)
    o.set_defaults(run=run_options)
    try:
        bench_data = importlib.import_module(".bench_data", __package__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.bench_data":
            raise
    else:
        bench_data.add_parser(sub)


def _memory(mem) -> str:
    return ", ".join(f"{d}: {v:,.0f}" for d, v in mem.items()) if mem else "-"


def run_model(args) -> int:
    from ..bench import bench_model
    from ..engine.inference import torch_device

    args.device = str(torch_device(args.device))            # one sentence in CLI words for a device not here
    for d in args.devices or ():
        torch_device(d, "--devices")
    console = console_for(args)
    if not args.json:
        console.print(f"timing training steps on {args.device} (batch {args.batch_size or 'default'}, "
                      f"{args.repeats} repeats of {args.steps} steps)...")
    result = bench_model(args.device, devices=args.devices, batch=args.batch_size, repeats=args.repeats,
                         steps=args.steps, warmup=args.warmup, preset=args.preset, amp=args.amp,
                         channels_last=args.channels_last, compile=args.compile, peak_tflops=args.peak_tflops)
    if args.json:
        print_json(result)
        return 0
    settings = [f"amp {result['amp']}"] + ["channels_last"] * result["channels_last"] + ["compile"] * result["compile"]
    where = ", ".join(result["gpu_names"]) or f"{result['device']} ({result['threads']} threads)"
    table = Table(title=f"training step, preset {result['preset']}, batch {result['batch']}, {', '.join(settings)}, "
                  f"{where}, torch {result['torch']}", title_justify="left")
    peak = result["peak_tflops"]
    columns = ["model", "images/s", "ms/step", "vs torchvision", "TFLOP/s"] + ([f"% of {peak:g}/GPU"] if peak else [])
    for col in columns + ["peak memory (MiB)"]:
        table.add_column(col, justify="left" if col == "model" else "right")
    tv = result["torchvision_img_s"]
    for row in result["rows"]:
        label = LABELS[row["model"]]
        if row["model"] == "two_tower":
            label += " " + "/".join(result["two_tower_devices"])
        share = row["percent_of_peak"]  # of every GPU the row uses
        cells = [label, f"{row['img_s']:,.1f}", f"{row['ms_step']:,.1f}", f"{row['img_s'] / tv:.2f}x" if tv else "-",
                 f"{row['tflops']:.3g}"] + ([f"{share:.1f}%" if share is not None else "-"] if peak else [])
        table.add_row(*cells, _memory(row["peak_memory_mib"]))
    console.print(table)
    console.print(f"grouped vs stock-LRN grouped: {result['grouped_vs_stock_lrn']:.2f}x   "
                  f"two-tower vs grouped: {result['two_tower_vs_grouped']:.2f}x")
    return 0


def run_options(args) -> int:
    from ..bench import bench_options
    from ..engine.inference import torch_device

    want = 2 if args.mode == "two-tower" else 1
    devices = [str(torch_device(d, "--devices")) for d in (args.devices or ["auto"] * want)]
    if len(devices) != want:
        raise UserError(f"--mode {args.mode} takes {want} --devices ({'tower 0, tower 1' if want == 2 else 'one'}), "
                        f"got {len(devices)}: {' '.join(devices)}")
    console = console_for(args)
    result = bench_options(args.preset, args.mode, tuple(devices), batch=args.batch_size, repeats=args.repeats,
                           steps=args.steps, warmup=args.warmup, options=args.only)
    if args.json:
        print_json(result)
        return 0
    table = Table(title=f"training step per speed option: preset {result['preset']}, {result['mode']} on "
                  f"{', '.join(result['devices'])}, batch {result['batch']}", title_justify="left")
    for col in ("option", "images/s", "vs fp32", "images/s (best repeat)", "TFLOP/s", "peak memory (MiB)"):
        table.add_column(col, justify="left" if col == "option" else "right")
    for r in result["options"]:
        table.add_row(r["option"], f"{r['img_s']:,.1f}", f"{r['ratio']:.2f}x", f"{r['best_img_s']:,.1f}",
                      f"{r['tflops']:.3g}", _memory(r["peak_memory_mib"]))
    console.print(table)
    return 0
