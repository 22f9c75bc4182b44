"""``twogpu-alexnet export``: a checkpoint's weights alone, for sharing (either layout, preset and class names)."""
from __future__ import annotations

import argparse

from .common import add_json_flag, console_for, print_json
from .options import add_out, add_preset

DESCRIPTION = """\
Write the weights of a checkpoint without its optimizer and random states: a dict with model (the
state dict in --layout), preset, num_classes, class_names and data_stats (the training mean and RGB
PCA). It loads with torch.load(..., weights_only=True), and evaluate, predict, kernels and neighbors
read it as they read a checkpoint.

examples:
  twogpu-alexnet export --checkpoint runs/paper/checkpoints/best.pt --out paper-weights.pt
  twogpu-alexnet export --checkpoint runs/paper/checkpoints/best.pt --out paper-grouped.pt --layout grouped
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a checkpoint's weights alone (either layout, with preset and "
                              "class names)", description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", metavar="FILE", required=True, help="a training checkpoint or state dict")
    add_out(p, what="the file to write, e.g. weights.pt")
    p.add_argument("--layout", choices=("two-tower", "grouped"), default="two-tower",
                   help="two-tower: towers.{0,1}.conv1.weight ...; grouped: conv1.weight ... (default: two-tower)")
    add_preset(p)
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..engine.inference import export_weights

    result = export_weights(args.checkpoint, args.out, layout=args.layout, preset=args.preset)
    if args.json:
        print_json(result)
        return 0
    missing = [what for what, key in (("class names", "class_names"), ("training mean", "data_stats"))
               if not result[key]]
    console_for(args).print(
        f"wrote {result['out']}: {result['preset']}, {result['layout']} layout, {result['parameters']:,} parameters, "
        f"{result['bytes'] / 2**20:,.1f} MiB" + (f" (the checkpoint had no {' or '.join(missing)})" if missing else ""),
        soft_wrap=True)
    return 0
