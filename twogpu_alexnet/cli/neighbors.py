"""``twogpu-alexnet neighbors``: the training images nearest each query in fc7 space (Figure 4)."""
from __future__ import annotations

import argparse

from rich.table import Table

from .common import add_json_flag, console_for, print_json
from .options import MAX_IMAGES, add_batch_size, add_device, add_out, add_preset, add_workers, bounded, path_value

EXAMPLE = """examples:
  twogpu-alexnet neighbors --checkpoint runs/cifar/checkpoints/last.pt --data cifar10/train --queries q.jpg --out nn
  twogpu-alexnet neighbors --checkpoint runs/p/checkpoints/last.pt --data store/train --queries a.jpg --k 8 --out nn

Writes DIR/neighbors.png: one row per query, the query first, then its k nearest training images
by Euclidean distance between fc7 vectors (the last hidden layer). --data is a store made by prepare
or a folder of class subfolders, of the classes the checkpoint was trained on. The training features
are computed once and cached (RUN/cache/neighbors beside a run's checkpoints, or
$TWOGPU_ALEXNET_CACHE/neighbors when that is set), so later queries are fast."""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "neighbors",
        help="nearest training images to query images in fc7 space (the paper's Figure 4)",
        description="Find the training images whose fc7 vectors are nearest to each query's.\n\n" + EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="training checkpoint or plain state dict (either layout)")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="the training images to search: a store made by prepare or a folder of class subfolders")
    p.add_argument("--queries", required=True, nargs="+", metavar="IMAGE", help="query image files")
    p.add_argument("--k", type=bounded(1, MAX_IMAGES), default=6, help="neighbours per query (default 6)")
    add_out(p, what="folder for neighbors.png")
    add_preset(p)
    add_device(p, what="where to compute features")
    add_batch_size(p, 64, what="images per forward pass")
    add_workers(p)
    p.add_argument("--cache", metavar="DIR", type=path_value,
                   help="feature cache folder (default: RUN/cache/neighbors, or $TWOGPU_ALEXNET_CACHE/neighbors)")
    p.add_argument("--no-cache", action="store_true", help="compute the training features again and do not store them")
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..analysis.neighbors import find_neighbors
    from ..engine.progress import Counter

    console = console_for(args)
    notes = console_for(args, stderr=True)

    def header(info: dict) -> None:
        cache = "no cache" if info["cache"] is None else \
            f"feature cache {info['cache']} ({'present' if info['cached'] else 'new'})"
        notes.print(f"neighbors of {info['checkpoint']} ({info['preset']}) among {info['images']:,} images of "
                    f"{args.data}, device {info['device']}; {cache}", soft_wrap=True)
        counter.start(info["images"])

    with Counter(notes, "fc7 features") as counter:
        result = find_neighbors(
            args.checkpoint, args.data, args.queries, args.out, k=args.k, preset=args.preset,
            batch_size=args.batch_size, workers=args.workers, device=args.device,
            cache_dir=args.cache, use_cache=not args.no_cache, progress=counter, header=header,
        )
    if args.json:
        print_json(result)
        return 0
    for q in result["queries"]:
        table = Table(title=f"nearest to {q['query']}")
        for name in ("rank", "distance", "class", "image"):
            table.add_column(name, justify="right" if name != "image" else "left")
        for rank, n in enumerate(q["neighbors"], 1):
            table.add_row(str(rank), f"{n['distance']:.3f}", n["class"], n["path"])
        console.print(table)
    source = "cached" if result["cached"] else "computed"
    console.print(f"{result['images']} training images ({source} fc7 features, {result['feature_dim']}-d)"
                  + (f", {result['skipped']} unreadable skipped" if result["skipped"] else ""))
    if result["cache"]:
        console.print(f"feature cache: {result['cache']['path']} ({result['cache']['bytes'] / 2**20:,.1f} MiB)",
                      soft_wrap=True)
    for note in result["notes"]:
        console.print(f"note: {note}")
    console.print(f"wrote {result['files']['neighbors']}")
    return 0
