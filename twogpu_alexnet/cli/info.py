"""``twogpu-alexnet info``: the paper-style layer table of a preset."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text

from ..spec import PRESETS
from .common import add_json_flag, console_for, print_json
from .options import described


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "info",
        help="show the layer table of a preset (per layer and tower)",
        **described("Show the layer table of a preset: per layer and tower the input and output shapes, "
                    "kernels, parameters, the device in the two-GPU layout, and whether it reads its own tower or "
                    "both.", "twogpu-alexnet info --preset paper", "twogpu-alexnet info --preset cifar --json"),
    )
    p.add_argument("--preset", default="paper", help=f"one of: {', '.join(PRESETS)} (default: paper)")
    p.add_argument("--num-classes", type=int, default=None, help="classes of fc8 (default: the preset's)")
    add_json_flag(p)
    p.set_defaults(run=run)


def _shape(dims) -> str:
    return "x".join(str(d) for d in reversed(dims[1:])) + f"x{dims[0]}" if len(dims) == 3 else str(dims[0])


def run(args) -> int:
    from ..model.summary import summarize

    summary = summarize(args.preset, args.num_classes)
    if args.json:
        print_json(summary)
        return 0
    console = console_for(args)
    table = Table(title=f"{summary['preset']}: {summary['description']}", title_justify="left")
    for col in ("layer", "tower", "device", "reads", "kernels", "input", "output", "then", "params"):
        table.add_column(col, justify="right" if col in ("kernels", "params") else "left")
    for row in summary["layers"]:
        kernels = str(row["kernels"])
        if "kernel" in row:
            k = row["kernel"]
            kernels += f" x {k[0]}x{k[1]}x{k[2]} /{row['stride']}"
        then = " > ".join(row["ops"])
        if "next_input" in row and row["next_input"] != row["output"]:
            then += f" = {_shape(row['next_input'])}"
        tower = "-" if row["tower"] is None else str(row["tower"])
        table.add_row(row["name"], tower, row["device"], row["reads"], kernels, _shape(row["input"]),
                      _shape(row["output"]), then, f"{row['params']:,}")
    console.print(table)
    console.print(Text.assemble("total parameters: ", (f"{summary['total_params']:,}", "bold"),
                                f"   input: {_shape(summary['input'])}   classes: {summary['num_classes']}"))
    return 0
