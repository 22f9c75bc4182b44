"""``twogpu-alexnet bench data``: images/s of the input pipeline to a finished batch, per worker and for N workers."""
from __future__ import annotations

from rich.table import Table

from .common import add_json_flag, console_for, print_json
from .options import MAX_IMAGES, MAX_WORKERS, add_batch_size, bounded, described


def add_parser(bench_subparsers) -> None:
    p = bench_subparsers.add_parser(
        "data",
        help="input pipeline images/s per worker: torchvision reference vs this pipeline (folders, stores)",
        **described("Images/s of one worker (one process, one thread, CPU time) on the same images, each to a "
        "finished float32 training batch: (a) the torchvision reference ImageNet training pipeline (PIL + "
        "RandomResizedCrop(224) + flip + ToTensor + Normalize), (b) this pipeline from the raw files, (c) from a "
        "prepared JPEG store and (d) from a raw store (both made in a temporary folder first). --workers N adds "
        "the wall-time rate through the loader with N worker processes; --device cuda adds the rates to batches "
        "finished on the GPU and from the GPU cache.",
        "twogpu-alexnet bench data --data ILSVRC2012/val --images 200 --workers 14 --device cuda --json"),
    )
    p.add_argument("--data", required=True, help="split folder of class subfolders with images")
    p.add_argument(
        "--images", type=bounded(1, MAX_IMAGES), default=200, metavar="N",
        help="images to use, evenly spaced over the folder (default: 200)",
    )
    p.add_argument("--seconds", type=float, default=3.0,
                   help="at most this many CPU seconds per pipeline for a warm-up pass (one pass over the images), "
                   "then as many for the measured passes (at most 4) (default: 3)")
    p.add_argument("--input-size", type=bounded(8, 4096), default=224, metavar="N",
                   help="network input size (default: 224)")
    p.add_argument("--workers", type=bounded(0, MAX_WORKERS), default=0, metavar="N",
                   help="also measure the loader with N worker processes (default: 0, off)")
    add_batch_size(p, 256, what="batch size of the --workers rows")
    p.add_argument("--device", metavar="DEV", help="also measure batches finished on this CUDA device, e.g. cuda:0 "
                   "(default: none)")
    p.add_argument("--decoder", action="store_true",
                   help="measure only decoding (torchcodec, torchvision.io, PIL; one thread) on the same files")
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..bench_data import bench_data

    console = console_for(args)
    if args.decoder:
        from ..bench_data import decoder_rates

        result = decoder_rates(args.data, images=args.images, seconds=args.seconds)
        if args.json:
            print_json(result)
            return 0
        console.print(f"decoding to uint8 RGB, one thread: {result['images']} images from {result['data']}, mean "
                      f"{result['mean_width']:.0f}x{result['mean_height']:.0f}", markup=False)
        for name in ("decode_rgb", "torchcodec", "torchvision_io", "pil"):
            if name + "_decode_img_s" not in result:       # torchcodec where it is not installed
                continue
            console.print(f"  {name:15s} {result[name + '_decode_img_s']:8,.0f} images/s   largest pixel difference "
                          f"from decode_rgb: {result[name + '_max_diff']}", markup=False)
        return 0
    stages = {"prepare": "preparing temporary stores...", "measure": "measuring (pipelines take turns)..."}
    with console.status("") as status:
        result = bench_data(args.data, images=args.images, seconds=args.seconds, input_size=args.input_size,
                            workers=args.workers, batch=args.batch_size, device=args.device,
                            progress=lambda stage: status.update(stages[stage]))
    if args.json:
        print_json(result)
        return 0
    console.print(table(result))
    return 0


def table(result: dict) -> Table:
    t = Table(title=f"input pipeline to a finished float32 batch, one worker (1 process, 1 thread): "
              f"{result['images']} images from {result['data']}, mean "
              f"{result['mean_width']:.0f}x{result['mean_height']:.0f}", title_justify="left")
    for col in ("pipeline", "images/s", "vs reference", "arithmetic share"):
        t.add_column(col, justify="left" if col == "pipeline" else "right")
    ref = result["reference_img_s"]
    t.add_row("(a) torchvision reference (PIL, RandomResizedCrop, ToTensor, Normalize)", f"{ref:,.0f}", "1.00x", "")
    rows = [("raw", "(b) this pipeline, raw files"),
            ("prepared", f"(c) this pipeline, JPEG store ({result['store_bytes_per_image'] / 1024:.1f} KiB/image)"),
            ("prepared_raw", "(d) this pipeline, raw store")]
    for key, name in rows:
        rate = result[f"{key}_img_s"]
        t.add_row(name, f"{rate:,.0f}", f"{rate / ref:.2f}x", f"{100 * result[f'{key}_finish_share']:.0f}%")
    where = {"loader": "finished on the CPU", "device": "finished on the GPU"}
    for prefix, source in (("", "JPEG store"), ("raw_", "raw store"), ("folders_", "raw files")):
        for kind, text in where.items():
            if f"{prefix}{kind}_img_s" in result:
                t.add_row(f"{source}, {result['loader_workers']} workers, batches of {result['loader_batch']} "
                          f"{text} (wall)", f"{result[f'{prefix}{kind}_img_s']:,.0f}", "", "")
    if "nvjpeg_device_img_s" in result:
        t.add_row("JPEG store, data.decode=gpu (nvJPEG), finished on the GPU (wall)",
                  f"{result['nvjpeg_device_img_s']:,.0f}", "", "")
    if "cache_img_s" in result:
        t.add_row("data.cache=gpu, finished on the GPU (wall)", f"{result['cache_img_s']:,.0f}", "", "")
    t.caption = (f"shared memory per image: {result['shm_bytes_per_image']:,} bytes (uint8; float32 would be "
                 f"{result['float32_bytes_per_image']:,}; data.decode=gpu sends the JPEG: "
                 f"{result['nvjpeg_shm_bytes_per_image']:,.0f})")
    return t
