"""``open_split``: one split of one source, with its statistics and the paper's transforms attached.

Sources (``data.source``): ``synthetic``, ``imagefolder``, ``cifar10`` (torchvision's python files or class
folders) and ``store`` (made by ``prepare``); docs/data.md shows what ``data.root`` holds for each.
Statistics always come from the TRAIN split, also when opening val: the store's ``stats.pt``, a cache
file for class folders (``folder_stats``), or computed in memory (CIFAR python files, synthetic data).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from . import synthetic
from .decode import CorruptImage, decode_rgb, read_bytes, resize_center_crop
from .folders import FolderListing, check_same_classes, list_split, split_folder
from .pool import worker_count
from .stats import Stats, cache_path_for, fingerprint_files, load_stats, save_stats, source_stats
from .store import StoreReader, read_store_meta, store_stats
from .transforms import Pipeline, geometry_for

SOURCES = ("synthetic", "imagefolder", "store", "cifar10")
SPLITS = ("train", "val")
MATERIALIZE_BYTES = 64 << 20     # synthetic splits up to this size are generated once, at open


# --------------------------------------------------------------------------------- sources

class FolderSource:
    """Image files in class folders, decoded and brought to size x size on every read."""

    def __init__(self, listing: FolderListing, size: int):
        self.root, self.files, self.labels, self.classes = listing.root, listing.files, listing.labels, listing.classes
        self.size = size
        self.skipped = listing.skipped  # what the folder walk left out, {"path", "reason"} each

    def __len__(self):
        return len(self.files)

    def encoded(self, i: int) -> torch.Tensor:
        try:
            return read_bytes(self.root / self.files[i])
        except OSError as exc:
            raise CorruptImage(f"unreadable ({exc.strerror or exc})") from None

    def image(self, i: int) -> torch.Tensor:
        return resize_center_crop(decode_rgb(self.encoded(i)), self.size)


class ArraySource:
    """Images held in memory as uint8 N x H x W x 3 (CIFAR-10's python files)."""

    def __init__(self, array, labels, classes, size: int):
        self.array = torch.as_tensor(np.asarray(array))
        self.labels, self.classes, self.size = [int(y) for y in labels], list(classes), size

    def __len__(self):
        return len(self.labels)

    def image(self, i: int) -> torch.Tensor:
        img = self.array[i].permute(2, 0, 1) if self.array.shape[-1] == 3 else self.array[i]
        return resize_center_crop(img, self.size)


class SyntheticSource:
    """The built-in synthetic split, generated on the fly (kept in memory when small)."""

    def __init__(self, seed: int, split: str, count: int, size: int, num_classes: int):
        self.seed, self.split, self.size, self.num_classes = seed, split, size, num_classes
        self.classes = synthetic.class_names(num_classes)
        self.labels = [i % num_classes for i in range(count)]
        self.cache = None
        if count * 3 * size * size <= MATERIALIZE_BYTES:
            images, _ = synthetic.synthetic_images(seed, split, range(count), size, num_classes)
            self.cache = images.permute(0, 2, 3, 1).contiguous()   # H, W, C memory, as decoders give pixels

    def __len__(self):
        return len(self.labels)

    def image(self, i: int) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[i].movedim(-1, 0)
        return synthetic.synthetic_image(self.seed, self.split, i, self.size, self.num_classes)[0]


StoreSource = StoreReader     # a prepared store (see store.py)


# --------------------------------------------------------------------------------- dataset

class SplitDataset(Dataset):
    """Key -> (uint8 view, parameter row, label, index); see transforms.Pipeline for the view and the row.

    A key is an index, or (index, epoch, slot) as the loader's sampler sends it (slot: the position in
    the epoch's order, for crop groups). An unreadable image gives (None, None, label, index): the
    loader's collate drops it and counts it in ``skipped``. With ``encoded`` (``data.decode = "gpu"``)
    the sample is the stored JPEG's bytes, decoded by the loader on the device.
    """

    def __init__(self, source, pipeline: Pipeline, encoded: bool = False):
        self.source, self.pipeline, self.encoded = source, pipeline, encoded

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
        index, epoch, slot = key if isinstance(key, tuple) else (int(key), 0, int(key))
        label = self.source.labels[index]
        try:
            if self.encoded:
                return self.source.encoded(index), self.pipeline.params(index, epoch, slot), label, index
            view, params = self.pipeline(self.source.image(index), index, epoch, slot)
        except (CorruptImage, OSError):
            return None, None, label, index
        return view, params, label, index


# --------------------------------------------------------------------------------- the split

@dataclass(frozen=True)
class DataOptions:
    """What a split needs besides its source, root and name: the ``data.*`` settings and the input size."""

    input_size: int = 224
    color_noise: str = "paper"   # paper | original | none (training only)
    crop_group: int = 0          # > 0: that many consecutive images share a crop (the 2012 code: 32)
    seed: int = 0                # augmentation and synthetic images
    images: int = 0              # synthetic: images in this split (0 = the default)
    num_classes: int = 0         # synthetic: classes (0 = the default)
    decode: str = "cpu"          # gpu: a JPEG store's images are decoded in batches on the loader's device


@dataclass
class Split:
    """What ``open_split`` returns: classes, dataset, statistics and the pipeline."""

    classes: list[str]
    dataset: SplitDataset
    stats: Stats
    pipeline: Pipeline
    name: str
    source: str
    root: str | None

    @property
    def input_size(self) -> int:
        return self.pipeline.geometry.input_size

    @property
    def walk_skipped(self) -> tuple:
        """What the folder walk left out of this split (links met again, broken links, odd names)."""
        return tuple(getattr(self.dataset.source, "skipped", ()))

    @property
    def views(self) -> int:
        return self.pipeline.views

    @property
    def train(self) -> bool:
        return self.pipeline.train


def open_split(source: str = "synthetic", root=None, split: str = "train", options: DataOptions = DataOptions(), *,
               train: bool | None = None, views: int = 1) -> Split:
    """Open one split of a data source with the paper's transforms (see the module docstring).

    ``train`` (default: the train split) draws augmentation; evaluation takes the centre view or ``views=10``.
    """
    if source not in SOURCES:
        raise UserError(f"data.source {source!r} is not one of {', '.join(SOURCES)}; set data.source to one of them.")
    if split not in SPLITS:
        raise UserError(f"split {split!r} is not one of train, val; use split='train' or split='val'.")
    o = options
    geometry = geometry_for(o.input_size)
    size = geometry.image_size
    path = None if root is None else Path(root).expanduser()
    if source == "synthetic":
        n_classes = o.num_classes or synthetic.DEFAULT_CLASSES
        src = SyntheticSource(o.seed, split, o.images or synthetic.DEFAULT_IMAGES[split], size, n_classes)
        # from a fixed prefix of the training split (synthetic.stats_indices)
        stats = source_stats(SyntheticSource(o.seed, "train", len(synthetic.stats_indices(size)), size, n_classes))
    elif path is None:
        what = "folders holding train/ and val/ stores made by `twogpu-alexnet prepare`" if source == "store" else \
            "a folder holding train/ and val/ class folders"
        raise UserError(f"data.source {source!r} needs data.root: {what}.")
    elif source == "store":
        src, stats = _open_store(path, split, size)
    elif source == "cifar10" and (path / "cifar-10-batches-py").is_dir():
        src, stats = _open_cifar_python(path, split, size)
    else:
        src, stats = _open_folders(path, split, size)
    if o.decode not in ("cpu", "gpu") or (o.decode == "gpu" and getattr(src, "format", None) != "jpeg"):
        raise UserError(f"data.decode={o.decode!r} is not possible here: 'gpu' decodes the JPEG shards of a store "
                        f"made by `twogpu-alexnet prepare` (data.source=store); use data.decode=cpu.")
    pipeline = Pipeline(stats, geometry, train=split == "train" if train is None else train,
                        color_noise=o.color_noise, views=views, seed=o.seed, crop_group=o.crop_group)
    return Split(list(src.classes), SplitDataset(src, pipeline, encoded=o.decode == "gpu"), stats, pipeline, split,
                 source, None if root is None else str(root))


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
    return src, store_stats(train_path)


def _open_folders(root: Path, split: str, size: int):
    train_dir, this_dir = split_folder(root, "train"), split_folder(root, split)
    train_listing = list_split(train_dir, "training folder").images()
    listing = train_listing if this_dir == train_dir else list_split(this_dir, f"{split} folder").images()
    check_same_classes(train_listing.classes, listing.classes, train_dir, this_dir)
    return FolderSource(listing, size), folder_stats(train_listing, size)


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
    stats = source_stats(ArraySource(train_set.data, train_set.targets, train_set.classes, size))
    return ArraySource(ds.data, ds.targets, ds.classes, size), stats


# --------------------------------------------------------------------------------- statistics

def folder_stats(
    listing: FolderListing, size: int, *, workers: int | None = None, force: bool = False, progress=None
) -> Stats:
    """Stats of a class-folder training split, cached (see ``cache_path_for``) and recomputed when its files change.

    ``workers``: processes (default: every core); ``progress(done, total)`` as in :func:`source_stats`.
    """
    fingerprint = fingerprint_files(listing.files, listing.labels, listing.root)
    path = cache_path_for(listing.root, size)
    if path.exists() and not force:
        try:
            stats, payload = load_stats(path)
        except UserError:       # a cache cut short or tampered with: computed again below
            stats, payload = None, {}
        if stats is not None and payload.get("fingerprint") == fingerprint and stats.size == size:
            return stats
    stats = source_stats(FolderSource(listing, size), workers=worker_count(workers), progress=progress)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_stats(stats, path, {"source": str(listing.root), "fingerprint": fingerprint})
    except (OSError, UserError):
        pass   # a read-only cache (or a link planted at its name) only costs recomputation next time
    return stats


def compute_split_stats(data, *, size: int = 256, workers: int | None = None, force: bool = False, progress=None):
    """Statistics of a training split given as a store or as class folders; returns (stats, saved path).

    A store's statistics live in ``STORE/stats.pt`` (written by prepare; recomputed from the stored
    pixels with ``force``); class folders use the cache of :func:`folder_stats`.
    """
    path = Path(data).expanduser()
    if not (path / "store.json").exists():
        listing = list_split(path, "--data folder").images()
        stats = folder_stats(listing, size, workers=workers, force=force, progress=progress)
        return stats, cache_path_for(listing.root, size)
    target = path / "stats.pt"
    if force or not target.exists():
        reader = StoreSource(path)
        stats = source_stats(reader, workers=worker_count(workers), progress=progress)
        save_stats(stats, target, {"source": "store", "fingerprint": reader.meta["fingerprint"]})
    return store_stats(path), target


# --------------------------------------------------------------------------------- inference and subsets

def inference_split(data, input_size: int, *, views: int = 1, stats: Stats | None = None,
                    what: str = "--data") -> Split:
    """ONE split for evaluation and inference, read as training reads it: a store made by ``prepare``
    (``D/store.json``) or a folder of class subfolders (``D/<class>/*.JPEG``).

    ``stats`` (the training mean, e.g. a checkpoint's) defaults to the data's own: a store's ``stats.pt``,
    or the statistics of the folder (cached as :func:`folder_stats` caches them).
    """
    geometry = geometry_for(input_size)
    size = geometry.image_size
    path = Path(data).expanduser()
    if (path / "store.json").exists():
        src = StoreSource(path)
        if src.size != size:
            raise UserError(f"store {path} holds {src.size}x{src.size} images but this network needs {size}x{size}; "
                            f"prepare the images again with --size {size} into a new folder.")
        if stats is None or stats.size != size:
            stats = store_stats(path)
        source = "store"
    else:
        listing = list_split(path, f"{what} folder").images()     # no image files: a UserError there
        src = FolderSource(listing, size)
        if stats is None or stats.size != size:
            stats = folder_stats(listing, size)
        source = "imagefolder"
    pipeline = Pipeline(stats, geometry, train=False, color_noise="none", views=views)
    return Split(list(src.classes), SplitDataset(src, pipeline), stats, pipeline, "val", source, str(data))


class SubsetSource:
    """The images ``indices`` of another source, in that order (classes and labels as there)."""

    def __init__(self, source, indices):
        self.source, self.indices = source, [int(i) for i in indices]
        self.classes, self.size = source.classes, getattr(source, "size", None)
        self.labels = [source.labels[i] for i in self.indices]
        self.format = getattr(source, "format", None)
        self.skipped = getattr(source, "skipped", ())
        if hasattr(source, "length"):           # a store's record sizes (data.decode=gpu sizes its buffers by them)
            self.length = source.length[self.indices]

    def __len__(self):
        return len(self.indices)

    def image(self, i: int) -> torch.Tensor:
        return self.source.image(self.indices[i])

    def encoded(self, i: int) -> torch.Tensor:
        return self.source.encoded(self.indices[i])


def subset_indices(total: int, images: int, seed: int = 0) -> list[int]:
    """A fixed, seeded choice of ``images`` of ``total`` indices, in ascending order (all when images >= total)."""
    if images <= 0 or images >= total:
        return list(range(total))
    g = torch.Generator().manual_seed(int(seed) & 0xFFFF_FFFF_FFFF)
    return sorted(torch.randperm(total, generator=g)[:images].tolist())


def take_subset(split: Split, images: int | None, seed: int = 0) -> Split:
    """``split`` cut to a fixed, seeded subset of ``images`` images (``train.val_images``, ``evaluate --images``);
    the same (images, seed) gives the same subset on every machine. None or 0: the split itself."""
    total = len(split.dataset)
    if not images or images >= total:
        return split
    ds = split.dataset
    source = SubsetSource(ds.source, subset_indices(total, images, seed))
    return Split(split.classes, SplitDataset(source, ds.pipeline, encoded=ds.encoded), split.stats, split.pipeline,
                 split.name, split.source, split.root)
