"""``twogpu-alexnet prepare``: the paper's one-time step (shorter side 256, centre crop) into a fast store."""
from __future__ import annotations

from rich.table import Table

from ..errors import UserError
from .common import add_json_flag, console_for, print_json
from .options import add_out, add_workers, described


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="resize one split to 256x256 (shorter side 256, centre crop) into a store that training reads fast",
        **described("The paper's one-time preprocessing of ONE split folder (DIR/<class>/<image>): shorter side "
                    "to --size, centre crop, stored as re-encoded JPEG shards (or raw uint8 arrays) with an index, "
                    "the training statistics (mean image, RGB PCA) and a list of skipped files. Parallel over "
                    "cores; an interrupted run resumes where it stopped when run again with the same arguments. "
                    "Run it once per split and point data.root at the folder holding both stores. Every store is "
                    "checked when it is opened (sizes, labels, format); --verify also compares every file with the "
                    "checksum recorded when it was made.",
                    "twogpu-alexnet prepare --data ILSVRC2012/train --out store/train",
                    "twogpu-alexnet prepare --data ILSVRC2012/val --out store/val",
                    "twogpu-alexnet prepare --verify --out store/train"),
    )
    p.add_argument("--data", help="split folder whose subfolders are the classes (not needed with --verify alone)")
    add_out(p, what="store folder to create (or to resume)")
    p.add_argument(
        "--size", type=int, default=256, help="stored image side: 256 for 224 inputs (default), 32 for cifar (8..4096)"
    )
    p.add_argument("--format", dest="fmt", choices=("jpeg", "raw"), default="jpeg",
                   help="jpeg: ~20 KB/image at 256 (default); raw: 196,608 B/image at 256, no decoding")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the store (default: 90)")
    add_workers(p, what="processes")
    p.add_argument("--verify", action="store_true",
                   help="check every file of the finished store --out against its recorded SHA-256 (after preparing "
                   "it, when --data is given)")
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..data.store import prepare_store

    console = console_for(args)
    if args.data is None:
        if not args.verify:
            raise UserError("prepare needs --data SRC (the split folder to prepare), or --verify to check the store "
                            "--out.")
        return _verify(args, console)
    from ..engine.progress import Counter

    try:       # the ETA comes from the files done since the start (counted file by file, as workers go)
        with Counter(console_for(args, stderr=True), "prepare", unit="files", rate_unit="files/s") as progress:
            result = prepare_store(args.data, args.out, size=args.size, fmt=args.fmt, quality=args.quality,
                                   workers=args.workers, progress=progress)
    except KeyboardInterrupt:
        console.print(f"stopped; run the same command again to resume {args.out}")
        raise
    if result["complete"] and not result["written"] and result["skipped"]:
        first = result["skipped"][0]
        raise UserError(
            f"none of the {len(result['skipped'])} files under {args.data} could be stored (first: {first['path']}: "
            f"{first['reason']}); every reason is in {result['store']}/skipped.json. Point --data at readable images."
        )
    if args.verify and result["complete"]:
        from ..data.store_check import verify_store

        result["verified"] = verify_store(result["store"])["files_checked"]
    if args.json:
        print_json({k: result.get(k) for k in ("store", "written", "skipped", "files", "reused", "bytes",
                                               "bytes_per_image", "seconds", "settings", "stats", "verified")})
        return 0
    # not a table title: those are cut to its width
    console.print(f"store {shown(result['store'])}", soft_wrap=True, markup=False)
    table = Table(show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    s = result["settings"]
    table.add_row("images written", f"{result['written']:,}")
    table.add_row("files skipped", f"{len(result['skipped']):,}")
    table.add_row("done by an earlier run", f"{result['reused']:,}")
    table.add_row(
        "format", f"{s['format']} {s['size']}x{s['size']}" + (f", quality {s['quality']}" if s["quality"] else "")
    )
    if result["bytes_per_image"]:
        table.add_row("disk", f"{result['bytes'] / 2**20:,.1f} MiB ({result['bytes_per_image'] / 1024:,.1f} KiB/image)")
    table.add_row("time", f"{result['seconds']:.1f} s")
    if result.get("verified"):
        table.add_row("files verified (SHA-256)", f"{result['verified']:,}")
    if result["stats"]:
        st = result["stats"]
        table.add_row("channel mean (RGB, 0..255)", ", ".join(f"{v:.2f}" for v in st["channel_mean"]))
        table.add_row("RGB eigenvalues", ", ".join(f"{v:.2f}" for v in st["eigenvalues"]))
    console.print(table)
    for item in result["skipped"][:20]:
        console.print(f"  skipped {shown(item['path'])}: {item['reason']}", soft_wrap=True, markup=False)
    if len(result["skipped"]) > 20:
        console.print(f"  ... and {len(result['skipped']) - 20} more, all listed in {result['store']}/skipped.json")
    return 0


def shown(name: str) -> str:
    """A file name as printable text: bytes that are not UTF-8 (surrogate escapes) shown as \\udcXX."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _verify(args, console) -> int:
    from ..data.store_check import verify_store

    result = verify_store(args.out)
    if args.json:
        print_json(result)
    else:
        console.print(f"store {result['store']}: {result['images']:,} images, all {result['files_checked']:,} "
                      "files match their checksums", soft_wrap=True, markup=False)
    return 0
