"""``open_split``: one split of one source, with its statistics and the paper's transforms attached.

Sources (config key ``data.source``) and what ``root`` (``data.root``) holds:

* ``synthetic``  -- nothing (root is ignored); images are generated from (seed, split, index).
* ``imagefolder`` -- ``root/train`` and ``root/val`` class folders of images of any size; for a 224
  input each is brought to 256 x 256 (shorter side 256, centre crop) on the fly.
* ``cifar10``    -- torchvision's python files (``root/cifar-10-batches-py``) when present, else class
  folders ``root/train`` and ``root/val`` (or ``root/test`` as the val split).
* ``store``      -- ``root/train`` and ``root/val`` made by ``twogpu-alexnet prepare``.

Statistics always come from the TRAIN split (also when opening val): the store's ``stats.pt``; for
class folders a cache file computed on first use (``stats.py``: beside the data or in the user cache);
for CIFAR python files and synthetic data they are computed in memory when the split is opened.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from . import synthetic
from .decode import CorruptImage, decode_rgb, read_bytes, resize_center_crop
from .folders import FolderListing, check_same_classes, list_split, split_folder
from .stats import Stats, StatsAccumulator, cache_path_for, fingerprint_files, load_stats, save_stats
from .store import StoreReader, init_pool_worker, read_store_meta
from .transforms import Pipeline, geometry_for

SOURCES = ("synthetic", "imagefolder", "store", "cifar10")
SPLITS = ("train", "val")
MATERIALIZE_BYTES = 64 << 20     # synthetic splits up to this size are generated once, at open


# --------------------------------------------------------------------------------- sources

class FolderSource:
    """Image files in class folders, decoded and brought to size x size on every read."""

    jpeg_bytes = True      # images can be handed to a batched (GPU) JPEG decoder

    def __init__(self, listing: FolderListing, size: int):
        self.root, self.files, self.labels, self.classes, self.size = (
            listing.root,
            listing.files,
            listing.labels,
            listing.classes,
            size,
        )

    def __len__(self):
        return len(self.files)

    def encoded(self, i: int) -> torch.Tensor:
        try:
            return read_bytes(self.root / self.files[i])
        except OSError as exc:
            raise CorruptImage(f"unreadable ({exc.strerror or exc})") from None

    def image(self, i: int) -> torch.Tensor:
        return resize_center_crop(decode_rgb(self.encoded(i)), self.size)

    def describe(self, i: int) -> str:
        return str(self.root / self.files[i])


class ArraySource:
    """Images held in memory as uint8 N x H x W x 3 (CIFAR-10's python files, synthetic data)."""

    jpeg_bytes = False

    def __init__(self, array, labels, classes, size: int):
        self.array = torch.as_tensor(np.asarray(array))
        self.labels, self.classes, self.size = [int(y) for y in labels], list(classes), size

    def __len__(self):
        return len(self.labels)

    def image(self, i: int) -> torch.Tensor:
        img = self.array[i].permute(2, 0, 1) if self.array.shape[-1] == 3 else self.array[i]
        return resize_center_crop(img, self.size)

    def describe(self, i: int) -> str:
        return f"array[{i}]"


class SyntheticSource:
    """The built-in synthetic split, generated on the fly (kept in memory when small)."""

    jpeg_bytes = False

    def __init__(self, seed: int, split: str, count: int, size: int, num_classes: int):
        self.seed, self.split, self.size, self.num_classes = seed, split, size, num_classes
        self.classes = synthetic.class_names(num_classes)
        self.labels = [i % num_classes for i in range(count)]
        self.cache = None
        if count * 3 * size * size <= MATERIALIZE_BYTES:
            self.cache, _ = synthetic.synthetic_images(seed, split, range(count), size, num_classes)

    def __len__(self):
        return len(self.labels)

    def image(self, i: int) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[i]
        return synthetic.synthetic_image(self.seed, self.split, i, self.size, self.num_classes)[0]

    def describe(self, i: int) -> str:
        return f"synthetic {self.split}[{i}]"


class StoreSource(StoreReader):
    """A prepared store (see store.py)."""

    @property
    def jpeg_bytes(self) -> bool:
        return self.format == "jpeg"

    def describe(self, i: int) -> str:
        return f"{self.path} record {i}"


# --------------------------------------------------------------------------------- dataset

class SplitDataset(Dataset):
    """Index -> (sample, label). Keys are an index or (index, epoch) as the loader's sampler sends them.

    An unreadable image gives (None, label): the loader's collate drops it and counts it in
    ``skipped``. With ``deferred`` the sample is the encoded JPEG bytes, decoded later in batches.
    """

    def __init__(self, source, pipeline: Pipeline, deferred: bool = False):
        self.source, self.pipeline, self.deferred = source, pipeline, deferred

    def __len__(self) -> int:
        return len(self.source)

    @property
    def labels(self) -> list[int]:
        return self.source.labels

    targets = labels     # torchvision's name for the same thing

    @property
    def classes(self) -> list[str]:
        return self.source.classes

    def image(self, index: int) -> torch.Tensor:
        """The stored (un-augmented) uint8 image, 3 x S x S; raises CorruptImage if unreadable."""
        return self.source.image(index)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (int(key), 0)
        label = self.source.labels[index]
        try:
            if self.deferred:
                return (self.source.encoded(index), index, epoch), label
            return self.pipeline(self.source.image(index), index, epoch), label
        except (CorruptImage, OSError):
            return None, label


# --------------------------------------------------------------------------------- the split

@dataclass
class Split:
    """What ``open_split`` returns: classes, dataset, statistics and the device-side ``finish``."""

    classes: list[str]
    dataset: SplitDataset
    stats: Stats
    pipeline: Pipeline
    name: str
    source: str
    root: str | None
    decode_device: str | None = None

    @property
    def input_size(self) -> int:
        return self.pipeline.geometry.input_size

    @property
    def views(self) -> int:
        return self.pipeline.views

    @property
    def train(self) -> bool:
        return self.pipeline.train

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Batch as yielded, already on its device -> float32 normalized (N x 3 x S x S or N x 10 x 3 x S x S)."""
        return self.pipeline.finish(x)


def open_split(source: str = "synthetic", root=None, split: str = "train", train: bool = True, input_size: int = 224,
               color_noise: str = "paper", views: int = 1, seed: int = 0, synthetic_images: int | None = None,
               num_classes: int | None = None, *, mean_crop: str = "center", decode_device: str | None = None,
               stats_workers: int | None = None, pixel_scale: float | None = None) -> Split:
    """Open one split of a data source with the paper's transforms (see the module docstring).

    Superset of the team contract: ``mean_crop`` ("center" = the original code, or "aligned"),
    ``decode_device`` (e.g. "cuda": JPEG sources are decoded in batches on that device by the loader,
    not in the workers), ``stats_workers`` (processes for a first-time statistics pass over class folders),
    ``pixel_scale`` (None: 1 for 224 inputs, unit variance for small ones; see transforms.py).
    """
    if source not in SOURCES:
        raise UserError(f"data.source {source!r} is not one of {', '.join(SOURCES)}; set data.source to one of them.")
    if split not in SPLITS:
        raise UserError(f"split {split!r} is not one of train, val; use split='train' or split='val'.")
    geometry = geometry_for(input_size)
    size = geometry.image_size
    if source == "synthetic":
        n_classes = num_classes or synthetic.DEFAULT_CLASSES
        count = synthetic_images or synthetic.DEFAULT_IMAGES[split]
        src = SyntheticSource(seed, split, count, size, n_classes)
        stats = synthetic_stats(seed, size, n_classes)
    elif source == "store":
        if root is None:
            raise UserError(
                "data.source 'store' needs data.root: a folder holding train/ and val/ stores made "
                "by `twogpu-alexnet prepare`."
            )
        src, stats = _open_store(Path(root).expanduser(), split, size)
    elif source == "cifar10" and root is not None and (Path(root).expanduser() / "cifar-10-batches-py").is_dir():
        src, stats = _open_cifar_python(Path(root).expanduser(), split, size)
    else:
        if root is None:
            raise UserError(f"data.source {source!r} needs data.root: a folder holding train/ and val/ class folders.")
        src, stats = _open_folders(Path(root).expanduser(), split, size, stats_workers)
    if decode_device is not None and not src.jpeg_bytes:
        raise UserError(
            f"decode_device={decode_device!r} needs JPEG files (imagefolder, cifar10 folders or a "
            f"jpeg store), not {source!r} data; leave decode_device unset."
        )
    pipeline = Pipeline(
        stats,
        geometry,
        train=train,
        color_noise=color_noise,
        views=views,
        mean_crop=mean_crop,
        seed=seed,
        pixel_scale=pixel_scale,
    )
    dataset = SplitDataset(src, pipeline, deferred=decode_device is not None)
    return Split(
        list(src.classes), dataset, stats, pipeline, split, source, None if root is None else str(root), decode_device
    )


# --------------------------------------------------------------------------------- per source

def _open_store(root: Path, split: str, size: int):
    path = split_folder(root, split)
    train_path = split_folder(root, "train")
    src = StoreSource(path)
    if src.size != size:
        raise UserError(
            f"store {path} holds {src.size}x{src.size} images but this input size needs {size}x{size}; "
            f"prepare the data again with --size {size} into a new folder."
        )
    train_meta = read_store_meta(train_path)
    check_same_classes(train_meta["classes"], src.classes, train_path, path)
    if train_meta["size"] != src.size:
        raise UserError(f"stores {train_path} and {path} have different image sizes; prepare both with --size {size}.")
    stats_path = train_path / "stats.pt"
    if not stats_path.exists():
        raise UserError(f"store {train_path} has no stats.pt; run `twogpu-alexnet stats --data {train_path}`.")
    return src, load_stats(stats_path)[0]


def _open_folders(root: Path, split: str, size: int, workers):
    train_dir, this_dir = split_folder(root, "train"), split_folder(root, split)
    train_listing = list_split(train_dir, "training folder").images()
    listing = train_listing if this_dir == train_dir else list_split(this_dir, f"{split} folder").images()
    check_same_classes(train_listing.classes, listing.classes, train_dir, this_dir)
    if not listing.files:
        raise UserError(
            f"{this_dir} has no image files (.jpg, .jpeg, .png, ...); put the images in {this_dir}/<class>/."
        )
    stats = folder_stats(train_listing, size, workers=workers)
    return FolderSource(listing, size), stats


def _open_cifar_python(root: Path, split: str, size: int):
    from torchvision.datasets import CIFAR10

    def load(train: bool):
        try:
            return CIFAR10(str(root), train=train, download=False)
        except RuntimeError as exc:
            raise UserError(
                f"CIFAR-10 files under {root} are unreadable ({exc}); download them again with torchvision."
            ) from None

    train_set = load(True)
    ds = train_set if split == "train" else load(False)
    stats = array_stats(train_set.data, size)
    return ArraySource(ds.data, ds.targets, ds.classes, size), stats


# --------------------------------------------------------------------------------- statistics

def synthetic_stats(seed: int, size: int, num_classes: int) -> Stats:
    """Stats of the synthetic training split, from a fixed prefix of its images (see synthetic.py)."""
    acc = StatsAccumulator(size)
    idx = list(synthetic.stats_indices(size))
    for lo in range(0, len(idx), 256):
        images, _ = synthetic.synthetic_images(seed, "train", idx[lo:lo + 256], size, num_classes)
        acc.add_batch(images)
    return acc.finish()


def array_stats(array, size: int) -> Stats:
    """Stats of in-memory uint8 N x H x W x 3 images, brought to size x size like the source does."""
    acc = StatsAccumulator(size)
    data = torch.as_tensor(np.asarray(array))
    for lo in range(0, data.shape[0], 1000):
        chunk = data[lo:lo + 1000].permute(0, 3, 1, 2)
        if chunk.shape[-1] != size or chunk.shape[-2] != size:
            chunk = torch.stack([resize_center_crop(img, size) for img in chunk])
        acc.add_batch(chunk)
    return acc.finish()


def _stats_chunk(task) -> dict:
    root, files, size = task
    acc = StatsAccumulator(size)
    bad = 0
    for rel in files:
        try:
            acc.add(resize_center_crop(decode_rgb(read_bytes(Path(root) / rel)), size))
        except (CorruptImage, OSError):
            bad += 1
    return {"state": acc.state(), "bad": bad, "seen": len(files)}


def folder_stats(
    listing: FolderListing, size: int, *, workers: int | None = None, force: bool = False, progress=None
) -> Stats:
    """Stats of a class-folder training split, cached (see ``cache_path_for``) and recomputed when its files change."""
    fingerprint = fingerprint_files(listing.files, listing.labels, listing.root)
    path = cache_path_for(listing.root, size)
    if path.exists() and not force:
        stats, payload = load_stats(path)
        if payload.get("fingerprint") == fingerprint and stats.size == size:
            return stats
    workers = max(1, workers or os.cpu_count() or 1)
    chunk = max(1, min(2000, -(-len(listing.files) // (4 * workers))))
    tasks = [(str(listing.root), listing.files[lo:lo + chunk], size) for lo in range(0, len(listing.files), chunk)]
    acc, done = StatsAccumulator(size), 0
    if workers == 1 or len(tasks) == 1:
        results = map(_stats_chunk, tasks)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork"), initializer=init_pool_worker,
                                   initargs=(os.getpid(),))
        results = pool.map(_stats_chunk, tasks)
    try:
        for result in results:
            acc.merge(StatsAccumulator.from_state(result["state"]))
            done += result["seen"]
            if progress is not None:
                progress(done, len(listing.files))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    stats = acc.finish()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_stats(stats, path, {"source": str(listing.root), "fingerprint": fingerprint})
    except OSError:
        pass   # a read-only cache only costs recomputation next time
    return stats


def compute_split_stats(data, *, size: int = 256, workers: int | None = None, force: bool = False, progress=None):
    """Statistics of a training split given as a store or as class folders; returns (stats, saved path).

    A store's statistics live in ``STORE/stats.pt`` (written by prepare; recomputed from the stored
    pixels with ``force``); class folders use the cache of :func:`folder_stats`.
    """
    path = Path(data).expanduser()
    if (path / "store.json").exists():
        reader = StoreSource(path)
        target = path / "stats.pt"
        if target.exists() and not force:
            return load_stats(target)[0], target
        acc = StatsAccumulator(reader.size)
        for i in range(len(reader)):
            acc.add(reader.image(i))
            if progress is not None and (i % 256 == 255 or i == len(reader) - 1):
                progress(i + 1, len(reader))
        stats = acc.finish()
        save_stats(stats, target, {"source": "store", "fingerprint": reader.meta["fingerprint"]})
        return stats, target
    listing = list_split(path, "--data folder").images()
    if not listing.files:
        raise UserError(f"{path} has no image files (.jpg, .jpeg, .png, ...); put the images in {path}/<class>/.")
    stats = folder_stats(listing, size, workers=workers, force=force, progress=progress)
    return stats, cache_path_for(listing.root, size)
