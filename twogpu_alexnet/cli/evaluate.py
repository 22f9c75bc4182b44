"""``twogpu-alexnet evaluate``: top-1 / top-5 error of a checkpoint or an ensemble, 1 or 10 views."""
from __future__ import annotations

import argparse

from rich.table import Table

from .common import add_json_flag, console_for, print_json
from .options import add_batch_size, add_device, add_images, add_preset, add_workers

DESCRIPTION = """\
Top-1 and top-5 error on one split: a store made by prepare or a folder of class subfolders, read as
training reads its validation split. Several --checkpoint values make an ensemble that averages the
networks' softmax (the paper's 5-CNN row); --ten-crop averages over the four corner and centre crops
and their reflections. A checkpoint may be a training checkpoint or a plain state dict in either
layout; the preset is read from it (or inferred, or given with --preset). A checkpoint knows the
class names it was trained on, and data of other classes is refused.

examples:
  twogpu-alexnet evaluate --checkpoint runs/paper/checkpoints/best.pt --data /data/imagenet/val --ten-crop
  twogpu-alexnet evaluate --checkpoint runs/paper/checkpoints/last.pt --data store/val --images 500
  twogpu-alexnet evaluate --checkpoint a.pt --checkpoint b.pt --checkpoint c.pt --data /data/imagenet/val --json
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="top-1/top-5 error of checkpoints (ensembles, 10 views)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", metavar="FILE", action="append", required=True,
                   help="a checkpoint or state dict (repeat for an ensemble)")
    p.add_argument("--data", metavar="DIR", required=True,
                   help="one split: a store made by prepare, or a folder whose subfolders are the classes")
    add_preset(p)
    p.add_argument("--ten-crop", action="store_true", help="average the softmax over the paper's 10 views")
    add_images(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the --images subset (default 0; train.seed "
                   "gives the subset of train.val_images)")
    add_device(p)
    add_batch_size(p, 64)
    add_workers(p)
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..engine.evaluate import evaluate
    from ..engine.progress import Counter

    console = console_for(args)
    notes = console_for(args, stderr=True)      # header and progress: stderr, so stdout holds the result

    def header(info: dict) -> None:
        chosen, total = info["images_chosen"], info["images_total"]
        images = f"{chosen:,} of {total:,} images (seed {args.seed})" if chosen < total else f"{total:,} images"
        views = "10 views" if info["views"] == 10 else "centre view"
        checkpoints = ", ".join(f"{c} ({p})" for c, p in zip(info["checkpoints"], info["presets"], strict=True))
        notes.print(f"evaluating {checkpoints} on {args.data}: {images}, {views}, device {info['device']}",
                    soft_wrap=True)
        for note in info["notes"]:
            notes.print(f"note: {note}", soft_wrap=True)
        counter.start(chosen)

    with Counter(notes, "evaluate") as counter:
        result = evaluate(args.checkpoint, args.data, preset=args.preset, ten_crop=args.ten_crop, device=args.device,
                          batch_size=args.batch_size, workers=args.workers, images=args.images, seed=args.seed,
                          progress=counter, header=header)
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
