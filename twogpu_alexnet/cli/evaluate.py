"""``twogpu-alexnet evaluate``: top-1 / top-5 error of a checkpoint or an ensemble, 1 or 10 views."""
from __future__ import annotations

import argparse

from rich.table import Table

from .common import add_json_flag, console_for, print_json

DESCRIPTION = """\
Top-1 and top-5 error on one split folder (class subfolders). Several --checkpoint values make an
ensemble that averages the networks' softmax (the paper's 5-CNN row); --ten-crop averages over the
four corner and centre crops and their reflections. A checkpoint may be a training checkpoint or a
plain state dict in either layout; the preset is read from it (or inferred, or given with --preset).

examples:
  twogpu-alexnet evaluate --checkpoint runs/paper/checkpoints/best.pt --data /data/imagenet/val --ten-crop
  twogpu-alexnet evaluate --checkpoint a.pt --checkpoint b.pt --checkpoint c.pt --data /data/imagenet/val --json
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="top-1/top-5 error of checkpoints (ensembles, 10 views)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", metavar="FILE", action="append", required=True,
                   help="a checkpoint or state dict (repeat for an ensemble)")
    p.add_argument("--data", metavar="DIR", required=True, help="a split folder whose subfolders are the classes")
    p.add_argument("--preset", help="the preset of the weights (default: from the checkpoint or its shapes)")
    p.add_argument("--ten-crop", action="store_true", help="average the softmax over the paper's 10 views")
    p.add_argument("--device", help="device to run on (default: cuda:0 when present, else cpu)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--workers", type=int, default=2, help="loader worker processes (default 2)")
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..engine.evaluate import evaluate
    from ..engine.progress import Reporter, RichReporter
    from ..errors import UserError

    if args.batch_size < 1 or args.workers < 0:
        raise UserError("--batch-size must be at least 1 and --workers 0 or more")
    console = console_for(args)
    reporter = RichReporter(console) if console.is_terminal else Reporter()  # a bar on a terminal only
    result = evaluate(args.checkpoint, args.data, preset=args.preset, ten_crop=args.ten_crop, device=args.device,
                      batch_size=args.batch_size, workers=args.workers, reporter=reporter)
    if args.json:
        print_json(result)
        return 0
    table = Table(title=f"evaluation on {args.data}")
    for col in ("checkpoints", "views", "images", "top-1 error", "top-5 error"):
        table.add_column(col, justify="right")
    table.add_row(str(len(result["checkpoints"])), str(result["views"]), str(result["images"]),
                  f"{100 * result['top1_error']:.2f}%", f"{100 * result['top5_error']:.2f}%")
    if result["skipped"]:
        table.caption = f"{result['skipped']} unreadable images skipped"
    console.print(table)
    return 0
