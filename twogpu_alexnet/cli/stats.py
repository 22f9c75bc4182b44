"""``twogpu-alexnet stats``: mean image and RGB PCA of a training split (stored where training finds them)."""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from .common import add_json_flag, console_for, print_json
from .options import add_workers, described


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "stats",
        help="compute the training mean image and RGB PCA (prepare already does this for a store)",
        **described("Per-pixel mean image, per-channel mean and the eigen-decomposition of the 3x3 RGB "
                    "covariance over all training pixels (0..255 scale), for a training split given as class "
                    "folders or as a store made by prepare. The result is saved where training and evaluation "
                    "pick it up: STORE/stats.pt, or beside the class folders (.twogpu-alexnet-stats-SIZE.pt; the "
                    "user cache if that is read-only).", "twogpu-alexnet stats --data ILSVRC2012/train"),
    )
    p.add_argument("--data", required=True, help="training split: class folders, or a store made by prepare")
    p.add_argument(
        "--size",
        type=int,
        default=256,
        help="image side the statistics are for: 256 (default) or 32 (class folders only; 8..4096)",
    )
    add_workers(p, what="processes")
    p.add_argument("--force", action="store_true", help="recompute even if saved statistics are up to date")
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..data.split import compute_split_stats
    from ..data.stats import check_side

    check_side(args.size)
    from ..engine.progress import Counter

    console = console_for(args)
    with Counter(console_for(args, stderr=True), "stats") as progress:      # images, img/s, ETA
        stats, path = compute_split_stats(args.data, size=args.size, workers=args.workers, force=args.force,
                                          progress=progress)
    summary = {**stats.summary(), "path": str(path)}
    if args.json:
        print_json(summary)
        return 0
    console.print(f"training statistics of {Path(args.data)} ({stats.images:,} images, {stats.size}x{stats.size})",
                  soft_wrap=True)                                  # not a table title: those are cut to its width
    table = Table()
    for col in ("", "R", "G", "B"):
        table.add_column(col, justify="right")
    table.add_row("channel mean", *(f"{v:.3f}" for v in stats.channel_mean.tolist()))
    for i in range(3):
        table.add_row(f"eigenvector {i + 1} (lambda {stats.eigenvalues[i].item():.2f})",
                      *(f"{v:+.4f}" for v in stats.eigenvectors[:, i].tolist()))
    console.print(table)
    console.print(f"saved to {path}", soft_wrap=True)
    return 0
