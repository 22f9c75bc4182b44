"""``twogpu-alexnet predict``: the top-5 classes of image files, from a checkpoint or an exported weights file."""
from __future__ import annotations

import argparse

from rich.table import Table

from .common import add_json_flag, console_for, print_json
from .options import add_device, add_preset, bounded

DESCRIPTION = """\
The top classes (softmax probability) of each image, seen as evaluation sees it: shorter side to
the stored size, centre crop (or --ten-crop), minus the training mean carried by the checkpoint.
Class names come from the checkpoint; weights without them (a plain state dict) take them, and the
training mean, from --data, the split they were trained on. --data of other classes is refused.

examples:
  twogpu-alexnet predict --checkpoint runs/paper/checkpoints/best.pt photos/cat.jpg photos/boat.jpg
  twogpu-alexnet predict --checkpoint weights.pt photo.jpg --top 3 --json
  twogpu-alexnet predict --checkpoint alexnet-state-dict.pt photo.jpg --data imagenette-store/train
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("predict", help="top-5 classes of image files, from a checkpoint or a weights file",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", metavar="FILE", required=True,
                   help="a training checkpoint, a file written by export, or a plain state dict")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files (JPEG, PNG)")
    p.add_argument("--top", type=bounded(1, 1000), default=5, metavar="K", help="classes per image (default 5)")
    p.add_argument("--data", metavar="DIR", help="the training split (store or class folders): class names and "
                   "mean for weights that carry none, and a check that the classes match")
    p.add_argument("--ten-crop", action="store_true", help="average the softmax over the paper's 10 views")
    add_preset(p)
    add_device(p)
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..engine.inference import predict

    console = console_for(args)
    result = predict(args.checkpoint, args.images, preset=args.preset, device=args.device, top=args.top,
                     data=args.data, ten_crop=args.ten_crop)
    if args.json:
        print_json(result)
        return 0
    for item in result["predictions"]:
        console.print(item["image"], soft_wrap=True)          # not a table title: those are cut to its width
        table = Table()
        for col in ("rank", "class", "probability"):
            table.add_column(col, justify="left" if col == "class" else "right")
        for rank, t in enumerate(item["top"], 1):
            table.add_row(str(rank), t["class"], f"{100 * t['probability']:.1f}%")
        console.print(table)
    for s in result["skipped"]:
        console.print(f"skipped {s['path']}: {s['reason']}", soft_wrap=True)
    if result["class_names_from"] == "none":
        console.print(f"note: {result['checkpoint']} carries no class names; pass --data TRAIN_SPLIT to name them",
                      soft_wrap=True)
    return 0
