"""``bench data``: images/s of one worker (one process, one thread) for three input pipelines on the same images.

(a) reference: torchvision's reference ImageNet training preset -- PIL open + convert("RGB"),
    RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize.
(b) raw: this package from the original files -- decode_jpeg, shorter side 256 + centre crop, random
    224 crop, flip, paper PCA colour noise, mean-image subtraction (float32 out, like (a)).
(c) prepared: the same transforms from a prepared store (256 x 256 JPEGs).

Each pipeline maps a file index to one finished float32 sample; none batches or uses threads.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from ..errors import UserError
from .folders import list_split
from .split import FolderSource, StoreSource
from .store import prepare_store
from .transforms import Pipeline, geometry_for

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _rates(fns: dict, count: int, seconds: float) -> dict:
    """Images/s of each ``fn(i)`` over indices 0..count-1, measured in CPU time of this process.

    The pipelines take turns, one pass over the images each, until together they have used
    ``seconds`` per pipeline, so a shared or throttled machine slows them all alike; CPU time
    (not wall time) leaves out the time other processes hold the core.
    """
    for fn in fns.values():                 # warm-up
        for i in range(min(8, count)):
            fn(i)
    spent = {name: 0.0 for name in fns}
    done = 0
    while min(spent.values()) < seconds:
        for name, fn in fns.items():
            start = time.process_time()
            for i in range(count):
                fn(i)
            spent[name] += time.process_time() - start
        done += count
    return {name: done / spent[name] for name in fns}


def bench_data(
    data, *, images: int = 200, seconds: float = 3.0, input_size: int = 224, workdir=None, progress=None
) -> dict:
    """Measure (a), (b), (c) on up to ``images`` files of split folder ``data`` (evenly spaced over the classes).

    ``seconds``: CPU seconds per pipeline. ``progress(stage)`` is called with "prepare", then "measure".
    """
    import torchvision.transforms as T
    from PIL import Image

    listing = list_split(data, "--data folder").images()
    if images < 1:
        raise UserError(f"--images {images} must be at least 1; use e.g. --images 200.")
    step = max(1, len(listing.files) // images)
    picked = list(range(0, len(listing.files), step))[:images]
    geometry = geometry_for(input_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(dir=workdir, prefix="twogpu-alexnet-bench-") as tmp:
            subset = Path(tmp) / "subset"
            for i in picked:
                link = subset / listing.files[i]
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink((listing.root / listing.files[i]).resolve(), link)
            if progress:
                progress("prepare")
            prepared = prepare_store(subset, Path(tmp) / "store", size=geometry.image_size, workers=1)
            store = StoreSource(Path(tmp) / "store")
            if len(store) == 0:
                raise UserError(
                    f"none of the {len(picked)} benchmark images in {listing.root} could be "
                    f"decoded; point --data at a folder of readable images."
                )
            stats = store.stats()
            pipeline = Pipeline(stats, geometry, train=True, color_noise="paper", seed=0)
            raw = FolderSource(listing, geometry.image_size)
            good = [picked[int(i)] for i in store.ids]          # the files that decode, in store order
            reference = T.Compose([T.RandomResizedCrop(input_size), T.RandomHorizontalFlip(), T.ToTensor(),
                                   T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
            ref_files = [listing.root / listing.files[i] for i in good]

            def ref_one(k):
                with Image.open(ref_files[k]) as im:
                    return reference(im.convert("RGB"))

            sizes = []
            for f in ref_files:
                with Image.open(f) as im:
                    sizes.append(im.size)
            result = {
                "data": str(listing.root),
                "images": len(good),
                "input_size": input_size,
                "threads": 1,
                "mean_width": sum(w for w, _ in sizes) / len(sizes),
                "mean_height": sum(h for _, h in sizes) / len(sizes),
                "store_bytes_per_image": prepared["bytes_per_image"],
            }
            if progress:
                progress("measure")
            rates = _rates({"reference": ref_one,
                            "raw": lambda k: pipeline(raw.image(good[k]), k, 0),
                            "prepared": lambda k: pipeline(store.image(k), k, 0)}, len(good), seconds)
            result.update({f"{name}_img_s": rate for name, rate in rates.items()})
    finally:
        torch.set_num_threads(threads)
    result["raw_speedup"] = result["raw_img_s"] / result["reference_img_s"]
    result["prepared_speedup"] = result["prepared_img_s"] / result["reference_img_s"]
    return result
