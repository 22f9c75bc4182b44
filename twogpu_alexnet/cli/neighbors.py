"""``twogpu-alexnet neighbors``: the training images nearest each query in fc7 space (Figure 4)."""
from __future__ import annotations

import argparse

from rich.table import Table

from .common import add_json_flag, console_for, print_json

EXAMPLE = """example:
  twogpu-alexnet neighbors --checkpoint runs/cifar/checkpoints/last.pt \\
      --data cifar10/train --queries cifar10/test/cat/0001.jpg cifar10/test/ship/0002.jpg --k 6 --out nn

Writes DIR/neighbors.png: one row per query, the query first, then its k nearest training images
by Euclidean distance between fc7 vectors (the last hidden layer). The training features are
computed once and cached (default ~/.cache/twogpu-alexnet/neighbors), so later queries are fast."""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "neighbors",
        help="nearest training images to query images in fc7 space (the paper's Figure 4)",
        description="Find the training images whose fc7 vectors are nearest to each query's.\n\n" + EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint", required=True, metavar="C", help="training checkpoint or plain state dict (either layout)"
    )
    p.add_argument(
        "--data", required=True, metavar="D", help="the training images to search: a folder of class subfolders"
    )
    p.add_argument("--queries", required=True, nargs="+", metavar="Q", help="query image files")
    p.add_argument("--k", type=int, default=6, help="neighbours per query (default 6)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for neighbors.png")
    p.add_argument(
        "--preset", metavar="P", help="the preset of the weights (default: from the checkpoint or its shapes)"
    )
    p.add_argument("--device", default="cpu", help="where to compute features (default cpu), e.g. cuda:0")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default 0: in this process)")
    p.add_argument("--cache", metavar="DIR", help="feature cache folder (default ~/.cache/twogpu-alexnet/neighbors)")
    p.add_argument("--no-cache", action="store_true", help="compute the training features again and do not store them")
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..analysis.neighbors import find_neighbors
    from ..errors import UserError

    if args.batch_size < 1 or args.workers < 0:
        raise UserError("--batch-size must be at least 1 and --workers at least 0")
    console = console_for(args)
    with console.status("computing fc7 features", spinner="dots"):
        result = find_neighbors(
            args.checkpoint, args.data, args.queries, args.out, k=args.k, preset=args.preset,
            batch_size=args.batch_size, workers=args.workers, device=args.device,
            cache_dir=args.cache, use_cache=not args.no_cache,
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
    for note in result["notes"]:
        console.print(f"note: {note}")
    console.print(f"wrote {result['files']['neighbors']}")
    return 0
