"""``twogpu-alexnet bench data``: input-pipeline images/s per worker (one process, one thread)."""
from __future__ import annotations

from rich.table import Table

from .common import add_json_flag, console_for, print_json


def add_parser(bench_subparsers) -> None:
    p = bench_subparsers.add_parser(
        "data",
        help="input pipeline images/s per worker: torchvision reference vs this pipeline (raw and prepared)",
        description="Images/s of one worker (one process, one thread, CPU time) on the same images for (a) the "
        "torchvision reference ImageNet training pipeline (PIL + RandomResizedCrop(224) + flip + ToTensor + "
        "Normalize), (b) this pipeline from the raw files (decode_jpeg, 256 resize/crop, random 224 crop, flip, "
        "PCA colour, mean image) and (c) the same from a prepared store (made in a temporary folder first). "
        "Example: twogpu-alexnet bench data --data ILSVRC2012/val --images 200 --json",
    )
    p.add_argument("--data", required=True, help="split folder of class subfolders with images")
    p.add_argument(
        "--images", type=int, default=200, help="images to use, evenly spaced over the folder (default: 200)"
    )
    p.add_argument("--seconds", type=float, default=3.0, help="CPU seconds per pipeline (default: 3)")
    p.add_argument("--input-size", type=int, default=224, help="network input size (default: 224)")
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..data.bench import bench_data

    console = console_for(args)
    stages = {"prepare": "preparing a temporary store...", "measure": "measuring (pipelines take turns)..."}
    with console.status("") as status:
        result = bench_data(args.data, images=args.images, seconds=args.seconds, input_size=args.input_size,
                            progress=lambda stage: status.update(stages[stage]))
    if args.json:
        print_json(result)
        return 0
    table = Table(title=f"input pipeline, one worker (1 process, 1 thread): {result['images']} images from "
                  f"{result['data']}, mean {result['mean_width']:.0f}x{result['mean_height']:.0f}",
                  title_justify="left")
    for col in ("pipeline", "images/s", "vs reference"):
        table.add_column(col, justify="left" if col == "pipeline" else "right")
    ref = result["reference_img_s"]
    rows = [
        ("(a) torchvision reference (PIL, RandomResizedCrop, ToTensor, Normalize)", ref),
        ("(b) this pipeline, raw files", result["raw_img_s"]),
        (
            f"(c) this pipeline, prepared store ({result['store_bytes_per_image'] / 1024:.1f} KiB/image)",
            result["prepared_img_s"],
        ),
    ]
    for name, rate in rows:
        table.add_row(name, f"{rate:,.0f}", f"{rate / ref:.2f}x")
    console.print(table)
    return 0
