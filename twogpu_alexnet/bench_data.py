"""``bench data``: images/s of the whole path to a device-ready batch, per worker and for N workers.

Per worker (one process, one thread, CPU time), on the same images, each ending in a finished float32
training batch (random crop, reflection, paper colour noise, mean image) on the CPU:
(a) reference: torchvision's reference ImageNet training preset -- PIL open + convert("RGB"),
    RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize -- then stacked into a batch.
(b) raw: this pipeline from the original files (decode, shorter side 256 + centre crop, then as (c)).
(c) prepared: from a prepared JPEG store (256 x 256); (d) prepared_raw: from a raw (uncompressed) store.
Each of (b)-(d) is the worker part (decode, crop, reflect, collate uint8) plus the arithmetic part
(``finish``) once per batch; ``*_finish_share`` says how much of the time the arithmetic takes.

``shm_bytes_per_image``: what one image costs in shared memory between worker and trainer (uint8 view;
``nvjpeg_shm_bytes_per_image``: the stored JPEG's bytes, which workers send with ``data.decode = "gpu"``).
With ``workers`` > 0 each source (JPEG store, raw store, folders) is also read through ``make_loader``
with that many worker processes, in wall time and batches of ``batch``: to finished batches on the CPU
(``loader_img_s``, ``raw_loader_img_s``, ``folders_loader_img_s``); with a CUDA ``device`` also to
batches finished there (``device_img_s``, ``raw_device_img_s``, ``folders_device_img_s``), decoded there
by nvJPEG (``nvjpeg_device_img_s``) and read from the GPU cache (``cache_img_s``).
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from .data.folders import list_split
from .data.loader import Collate
from .data.split import FolderSource, StoreSource
from .data.store import prepare_store
from .data.transforms import Pipeline, geometry_for
from .errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BATCH = 32
PASSES = 4  # every row measures at most this many passes over the images (or --seconds)


def _rates(fns: dict, count: int, seconds: float) -> dict:
    """Images/s of each ``fn(indices)`` (a batch maker) over 0..count-1, in CPU time of this process.

    Bounded work: each pipeline first makes one unmeasured pass (at most ``seconds``: a raw store's pages
    are read in there, as a training epoch finds them after the first), then at most ``PASSES`` measured
    passes, stopping once it has used ``seconds`` (the batch in hand finished): a slow pipeline is cut
    by the time, a fast one (a raw store: 200 images in well under 0.1 s) is measured over several
    passes rather than one short one. The pipelines take turns a pass at a time, so a shared or throttled
    machine slows them all alike; CPU time leaves out time other processes hold the core. (Turns of one
    batch would run each batch in caches another pipeline just filled: the raw store's rate fell by a
    fifth to a third that way.)
    """
    batches = [list(range(lo, min(count, lo + BATCH))) for lo in range(0, count, BATCH)]
    for fn in fns.values():                 # warm-up: one pass, bounded like the measured ones
        start = time.process_time()
        for b in batches:
            fn(b)
            if time.process_time() - start >= seconds:
                break
    spent = {name: 0.0 for name in fns}
    done = {name: 0 for name in fns}
    for _ in range(PASSES):
        for name, fn in fns.items():
            for b in batches:
                if spent[name] >= seconds:
                    break
                start = time.process_time()
                fn(b)
                spent[name] += time.process_time() - start
                done[name] += len(b)
        if min(spent.values()) >= seconds:
            break
    return {name: done[name] / max(spent[name], 1e-9) for name in fns}


def _subset(listing, picked: list[int], tmp: Path) -> Path:
    subset = tmp / "subset"
    for i in picked:
        link = subset / listing.files[i]
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink((listing.root / listing.files[i]).resolve(), link)
    return subset


def _worker_batch(pipeline: Pipeline, image, collate: Collate):
    """The worker part for a list of indices: decode, crop, reflect, collate (uint8 + parameter rows)."""
    def run(indices):
        return collate([(*pipeline(image(i), i, 0), 0, i) for i in indices])
    return run


def _reference(files, input_size: int):
    import torchvision.transforms as T
    from PIL import Image

    preset = T.Compose([T.RandomResizedCrop(input_size), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def run(indices):
        out = []
        for k in indices:
            with Image.open(files[k]) as im:
                out.append(preset(im.convert("RGB")))
        return torch.stack(out)
    return run


def bench_data(data, *, images: int = 200, seconds: float = 3.0, input_size: int = 224, workers: int = 0,
               batch: int = 256, device=None, workdir=None, progress=None) -> dict:
    """Measure the rows of the module docstring on up to ``images`` files of split folder ``data``.

    Bounded work: each per-worker pipeline makes one warm pass and at most ``PASSES`` measured passes over
    the images, each part at most ``seconds`` of CPU time; each loader row reads at most ``PASSES`` passes
    or ``seconds`` of wall time. ``progress(stage)`` is called with "prepare", then "measure".
    """
    if images < 1:
        raise UserError(f"--images {images} must be at least 1; use e.g. --images 200.")
    if not seconds > 0:
        raise UserError(f"--seconds {seconds} must be more than 0; use e.g. --seconds 3.")
    if workers < 0:
        raise UserError(f"--workers {workers} must be 0 or more; use e.g. --workers 4.")
    if batch < 1:
        raise UserError(f"--batch {batch} must be at least 1; use e.g. --batch 256.")
    if device is not None:
        from .model.devices import check_device

        device = check_device(device, what="--device", kinds=("cpu", "cuda"))  # one sentence for one not here
        if device.type != "cuda":
            raise UserError(f"--device {device} adds GPU rows; leave it out for the CPU rows, or name a GPU (cuda:0)")
    listing = list_split(data, "--data folder").images()
    step = max(1, len(listing.files) // images)
    picked = list(range(0, len(listing.files), step))[:images]
    geometry = geometry_for(input_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(dir=workdir, prefix="twogpu-alexnet-bench-") as tmp:
            tmp = Path(tmp)
            subset = _subset(listing, picked, tmp)
            if progress:
                progress("prepare")
            roots = {name: tmp / name for name in ("store", "raw", "folders")}  # train/ and val/ for make_loader
            prepared = prepare_store(subset, roots["store"] / "train", size=geometry.image_size)
            prepare_store(subset, roots["raw"] / "train", size=geometry.image_size, fmt="raw")
            roots["folders"].mkdir()
            os.symlink(subset, roots["folders"] / "train")
            for root in roots.values():
                os.symlink(root / "train", root / "val")
            store, raw_store = StoreSource(roots["store"] / "train"), StoreSource(roots["raw"] / "train")
            if len(store) == 0:
                raise UserError(f"none of the {len(picked)} benchmark images in {listing.root} could be "
                                f"decoded; point --data at a folder of readable images.")
            result = _measure(listing, picked, store, raw_store, geometry, seconds, progress)
            result["store_bytes_per_image"] = result["nvjpeg_shm_bytes_per_image"] = prepared["bytes_per_image"]
            result.update(_loaders(roots, len(store), geometry, workers, device, seconds, batch))
    finally:
        torch.set_num_threads(threads)
    return result


def _measure(listing, picked, store, raw_store, geometry, seconds, progress) -> dict:
    pipeline = Pipeline(store.stats(), geometry, train=True, color_noise="paper", seed=0)
    collate = Collate(pipeline.sample_shape)
    good = [picked[int(i)] for i in store.ids]          # the files that decode, in store order
    folder = FolderSource(listing, geometry.image_size)
    worker = {"raw": _worker_batch(pipeline, lambda k: folder.image(good[k]), collate),
              "prepared": _worker_batch(pipeline, store.image, collate),
              "prepared_raw": _worker_batch(pipeline, raw_store.image, collate)}
    finish = {name: (lambda fn: lambda idx: pipeline.finish(*fn(idx)[:2]))(fn)  # noqa: B023 (fn bound by the call)
              for name, fn in worker.items()}
    files = [listing.root / listing.files[i] for i in good]
    sizes = [folder_image_size(f) for f in files]
    if progress:
        progress("measure")
    rates = _rates({"reference": _reference(files, geometry.input_size), **finish}, len(good), seconds)
    worker_only = _rates(worker, len(good), seconds / 3)
    result = {"data": str(listing.root), "images": len(good), "input_size": geometry.input_size, "threads": 1,
              "mean_width": sum(w for w, _ in sizes) / len(sizes),
              "mean_height": sum(h for _, h in sizes) / len(sizes),
              "shm_bytes_per_image": torch.Size(pipeline.sample_shape).numel(),
              "float32_bytes_per_image": 4 * torch.Size(pipeline.sample_shape).numel()}
    result.update({f"{name}_img_s": rate for name, rate in rates.items()})
    for name in worker:
        result[f"{name}_speedup"] = rates[name] / rates["reference"]
        result[f"{name}_finish_share"] = max(0.0, 1 - rates[name] / worker_only[name])
    return result


def folder_image_size(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def _loaders(roots: dict, count: int, geometry, workers: int, device, seconds: float, batch: int) -> dict:
    """Wall-time images/s through make_loader with N workers, per source (the module docstring's names)."""
    from .data.loader import make_loader
    from .data.split import DataOptions, open_split

    if not workers and device is None:
        return {}
    options = DataOptions(input_size=geometry.input_size)
    sources = {"": ("store", roots["store"]), "raw_": ("store", roots["raw"]),
               "folders_": ("imagefolder", roots["folders"])}
    runs = {f"{prefix}loader": (source, root, options, dict(device="cpu"))
            for prefix, (source, root) in sources.items()}
    if device is not None and torch.device(device).type == "cuda":
        runs.update({f"{prefix}device": (source, root, options, dict(device=device))
                     for prefix, (source, root) in sources.items()})
        runs["nvjpeg_device"] = ("store", roots["store"], replace(options, decode="gpu"), dict(device=device))
        runs["cache"] = ("store", roots["store"], options, dict(device=device, cache=True))
    out = {"loader_workers": workers, "loader_batch": min(batch, count)}
    for name, (source, root, opts, kw) in runs.items():
        split = open_split(source, root, "train", opts)
        loader = make_loader(split, batch_size=min(batch, count), workers=workers, drop_last=True, **kw)
        out[f"{name}_img_s"] = _wall_rate(loader, seconds, PASSES * count)
    return out


def _wall_rate(loader, seconds: float, limit: int) -> float:
    """Wall-time images/s of ``loader`` after its first batch: at most ``limit`` images or ``seconds``."""
    loader.set_epoch(0)
    for _ in loader:                        # warm-up: workers started, cache filled
        break
    n, epoch, start = 0, 1, time.perf_counter()
    while n < limit and time.perf_counter() - start < seconds:
        loader.set_epoch(epoch)
        for x, _, _ in loader:
            n += len(x)
            if n >= limit or time.perf_counter() - start >= seconds:
                break
        epoch += 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def decoder_rates(data, *, images: int = 200, seconds: float = 3.0) -> dict:
    """Images/s (one thread, CPU time) of decoding the same files to uint8 RGB with torchcodec (alone, and through
    ``decode.decode_rgb`` with its header checks, as the pipeline does), torchvision.io (deprecated) and PIL, and
    the largest pixel difference of each from ``decode_rgb``."""
    import io
    import warnings

    import numpy as np
    from PIL import Image

    from .data.decode import CODEC, CorruptImage, decode_rgb, read_bytes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                   # torchvision.io's deprecation notice: measured on purpose
        from torchvision.io import ImageReadMode, decode_image
    listing = list_split(data, "--data folder").images()
    step = max(1, len(listing.files) // images)
    datas = []
    for f in listing.files[::step][:images]:
        try:                          # unreadable files are left out, as the pipelines leave them out
            d = read_bytes(listing.root / f)
            decode_rgb(d)
        except (CorruptImage, OSError):
            continue
        datas.append(d)
    if not datas:
        raise UserError(f"none of the images chosen from {data} could be decoded; point --data at readable images")

    def pil(d):
        with Image.open(io.BytesIO(d.numpy().tobytes())) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)

    def torchvision_io(d):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return decode_image(d, mode=ImageReadMode.RGB)

    decoders = {"decode_rgb": decode_rgb, "torchvision_io": torchvision_io, "pil": pil}
    if CODEC == "torchcodec":                              # absent where only torch and torchvision are installed
        from torchcodec.decoders import decode_image as codec_decode

        decoders["torchcodec"] = lambda d: codec_decode(d, mode="RGB")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rates = _rates({k: (lambda idx, fn=fn: [fn(datas[i]) for i in idx]) for k, fn in decoders.items()},
                       len(datas), seconds)
    finally:
        torch.set_num_threads(threads)
    first = [decode_rgb(d).int() for d in datas]
    diff = {k: max(int((fn(d).int() - f).abs().max()) for d, f in zip(datas, first, strict=True))
            for k, fn in decoders.items()}
    sizes = [decode_rgb(d).shape[-2:] for d in datas[:20]]
    return {"data": str(data), "images": len(datas), "mean_height": sum(s[0] for s in sizes) / len(sizes),
            "mean_width": sum(s[1] for s in sizes) / len(sizes),
            **{f"{k}_decode_img_s": v for k, v in rates.items()}, **{f"{k}_max_diff": v for k, v in diff.items()}}
