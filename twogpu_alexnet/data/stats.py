"""Training-set statistics: the per-pixel mean image and the PCA of RGB values (the paper's section 4.1).

Pixel scale: 0..255 (uint8 values as stored), as in the original code. Every number here is in that
scale: the mean image (3 x S x S), the channel means, the 3x3 covariance of RGB values over all
training pixels (population covariance: divided by the number of pixels) and its eigen-decomposition.

Sums are accumulated in int64, so the result is exact and independent of the order in which images
(or shards of a parallel ``prepare``) are added.

Eigen-decomposition conventions: eigenvalues in descending order; ``eigenvectors[:, i]`` is the unit
eigenvector of ``eigenvalues[i]``, signed so that its largest-magnitude component is positive.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from contextlib import closing
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from ..errors import UserError
from ..files import write_atomic
from .decode import CorruptImage
from .pool import advance, pool_map

STATS_FORMAT = 1
MIN_SIDE, MAX_SIDE = 8, 4096     # image sides a user may ask for (prepare/stats --size)
CHUNK = 1000                     # images per pool task (prepare, stats)
CACHE_ENV = "TWOGPU_ALEXNET_CACHE"  # one folder for every cache of the program (stats, neighbour features)


@dataclass(frozen=True)
class Stats:
    """Mean image and RGB PCA of a training split, in the 0..255 pixel scale."""

    mean_image: torch.Tensor    # float64, 3 x S x S
    channel_mean: torch.Tensor  # float64, 3
    covariance: torch.Tensor    # float64, 3 x 3
    eigenvalues: torch.Tensor   # float64, 3, descending
    eigenvectors: torch.Tensor  # float64, 3 x 3, column i pairs with eigenvalues[i]
    images: int
    pixels: int

    @property
    def size(self) -> int:
        return int(self.mean_image.shape[-1])

    @property
    def pca_stdevs(self) -> torch.Tensor:
        """sqrt(eigenvalues): the original code's ``pca_stdevs``."""
        return self.eigenvalues.clamp_min(0).sqrt()

    def to_dict(self) -> dict:
        return {"format": STATS_FORMAT, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_dict(cls, d: dict) -> Stats:
        """The inverse of :meth:`to_dict` (as a training checkpoint's ``data_stats`` or a stats file holds it)."""
        return cls(*(torch.as_tensor(d[f.name], dtype=torch.float64) for f in fields(cls)[:5]),
                   int(d["images"]), int(d["pixels"]))

    def summary(self) -> dict:
        """JSON-friendly numbers (no mean image)."""
        return {
            "images": self.images,
            "size": self.size,
            "channel_mean": [round(v, 4) for v in self.channel_mean.tolist()],
            "eigenvalues": [round(v, 4) for v in self.eigenvalues.tolist()],
            "eigenvectors": [[round(v, 6) for v in row] for row in self.eigenvectors.tolist()],
        }


def eigen_rgb(covariance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Descending eigenvalues and sign-normalized eigenvectors (columns) of a symmetric 3x3 matrix."""
    values, vectors = torch.linalg.eigh(covariance.to(torch.float64))
    values, vectors = values.flip(0), vectors.flip(1)
    biggest = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[biggest, torch.arange(3)])
    signs[signs == 0] = 1
    return values, vectors * signs


def _outer_sum(flat: torch.Tensor) -> torch.Tensor:
    """Exact sum over pixels of x x^T (3 x 3, int64) for uint8 RGB columns ``flat`` (3 x P).

    A float64 matmul is exact here: every partial sum is an integer below 2**53 for P < 1.3e11 pixels.
    """
    f = flat.to(torch.float64)
    return (f @ f.T).round().to(torch.int64)


class StatsAccumulator:
    """Exact running sums over uint8 images of one size; ``merge`` combines shards."""

    def __init__(self, size: int):
        self.size = size
        self.sum_image = torch.zeros(3, size, size, dtype=torch.int64)
        self.sum_outer = torch.zeros(3, 3, dtype=torch.int64)
        self.images = 0

    def add(self, img: torch.Tensor) -> None:
        """Add one uint8 image, 3 x size x size."""
        self.sum_image += img.to(torch.int64)
        self.sum_outer += _outer_sum(img.reshape(3, -1))
        self.images += 1

    def add_batch(self, images: torch.Tensor) -> None:
        """Add uint8 images N x 3 x size x size at once (same sums as calling ``add`` on each)."""
        self.sum_image += images.sum(dim=0, dtype=torch.int64)
        self.sum_outer += _outer_sum(images.permute(1, 0, 2, 3).reshape(3, -1))
        self.images += images.shape[0]

    def merge(self, other: StatsAccumulator) -> None:
        self.sum_image += other.sum_image
        self.sum_outer += other.sum_outer
        self.images += other.images

    def state(self) -> dict:
        return {"size": self.size, "sum_image": self.sum_image, "sum_outer": self.sum_outer, "images": self.images}

    @classmethod
    def from_state(cls, state: dict) -> StatsAccumulator:
        acc = cls(int(state["size"]))
        acc.sum_image = state["sum_image"].to(torch.int64, copy=True)
        acc.sum_outer = state["sum_outer"].to(torch.int64, copy=True)
        acc.images = int(state["images"])
        return acc

    def finish(self) -> Stats:
        if self.images == 0:
            raise UserError(
                "cannot compute statistics from zero images; the training split needs at least one readable image."
            )
        pixels = self.images * self.size * self.size
        mean_image = self.sum_image.to(torch.float64) / self.images
        channel_sum = self.sum_image.sum(dim=(1, 2)).to(torch.float64)
        channel_mean = channel_sum / pixels
        covariance = self.sum_outer.to(torch.float64) / pixels - torch.outer(channel_mean, channel_mean)
        eigenvalues, eigenvectors = eigen_rgb(covariance)
        return Stats(mean_image, channel_mean, covariance, eigenvalues, eigenvectors, self.images, pixels)


def source_stats(source, *, workers: int = 1, progress=None) -> Stats:
    """Exact statistics of every image of ``source`` (a sized ``image(i)``: uint8 3 x S x S, S = ``source.size``).

    Images that do not decode are left out, as training leaves them out. With ``workers`` > 1, chunks of
    images are summed in that many forked processes; ``progress(done, total)`` is called as images are done
    (the workers count them batch by batch with pool.advance, so the rate and ETA are steady).
    """
    n = len(source)
    chunk = max(1, min(CHUNK, -(-n // (4 * workers))))
    acc, done = StatsAccumulator(source.size), 0
    tasks = [range(lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]
    counted = None
    if progress is not None:

        def counted(images: int) -> None:
            nonlocal done
            done += images
            progress(done, n)
    # an error (in progress too) stops the pool
    with closing(pool_map(_chunk_sums, source, tasks, workers, counted)) as results:
        for state in results:
            acc.merge(StatsAccumulator.from_state(state))
    return acc.finish()


def _chunk_sums(source, indices: range) -> dict:
    """The sums of ``source``'s images at ``indices``, in batches of about 2**20 pixels (bounded memory)."""
    acc, per_batch = StatsAccumulator(source.size), max(1, 2**20 // source.size**2)
    for lo in range(0, len(indices), per_batch):
        images, batch = [], indices[lo:lo + per_batch]
        for i in batch:
            with contextlib.suppress(CorruptImage, OSError):     # unreadable images are left out
                images.append(source.image(i))
        if images:
            acc.add_batch(torch.stack(images))
        advance(len(batch))                                      # for the progress of source_stats
    return acc.state()


def check_side(size, option: str = "--size") -> int:
    """An image side between MIN_SIDE and MAX_SIDE, or a UserError (checked before any work is done)."""
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIDE <= size <= MAX_SIDE:
        raise UserError(
            f"{option} {size!r} is outside {MIN_SIDE}..{MAX_SIDE}; use 256 for the paper (224 crops) or 32 for "
            "CIFAR-style inputs."
        )
    return size


def save_stats(stats: Stats, path, extra: dict | None = None) -> Path:
    """Write stats (plus ``extra`` identification keys) atomically to ``path``."""
    payload = {**stats.to_dict(), **(extra or {})}
    return write_atomic(path, lambda f: torch.save(payload, f), what=f"statistics file {path}")


def load_stats(path) -> tuple[Stats, dict]:
    """Read stats written by :func:`save_stats`; returns (stats, the whole payload)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        stats = Stats.from_dict(payload)
        problem = _stats_problem(stats)
    except Exception as exc:  # unreadable or foreign file
        problem = type(exc).__name__
    if problem:
        raise UserError(
            f"statistics file {path} is unreadable ({problem}); delete it and it will be recomputed."
        ) from None
    return stats, payload


def _stats_problem(stats: Stats) -> str | None:
    """What makes ``stats`` impossible (shapes that do not fit, counts that disagree, non-finite numbers), or None."""
    s = stats.mean_image.shape[-1] if stats.mean_image.dim() == 3 else 0
    shapes = (stats.mean_image.shape, stats.channel_mean.shape, stats.covariance.shape, stats.eigenvalues.shape,
              stats.eigenvectors.shape)
    if shapes != ((3, s, s), (3,), (3, 3), (3,), (3, 3)) or not MIN_SIDE <= s <= MAX_SIDE:
        return "its tensors have the wrong shapes"
    if stats.images < 1 or stats.pixels != stats.images * s * s:
        return "its image and pixel counts disagree"
    if not all(bool(t.isfinite().all()) for t in (stats.mean_image, stats.covariance, stats.eigenvectors)):
        return "it holds non-finite numbers"
    return None


def cache_path_for(split_dir, size: int) -> Path:
    """Where stats of a class-folder split live.

    ``$TWOGPU_ALEXNET_CACHE/stats/`` when that variable is set (the one place for every cache of the
    program); else beside the data when writable (``<split_dir>/.twogpu-alexnet-stats-<size>.pt``); else
    ``$XDG_CACHE_HOME/twogpu-alexnet`` (default ``~/.cache/twogpu-alexnet``). Outside the data, the file
    name is keyed by the split's absolute path.
    """
    split_dir = Path(split_dir).resolve()
    key = hashlib.sha1(str(split_dir).encode()).hexdigest()[:16]
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "stats" / f"stats-{key}-{size}.pt"
    local = split_dir / f".twogpu-alexnet-stats-{size}.pt"
    if local.exists() or os.access(split_dir, os.W_OK):
        return local
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "twogpu-alexnet"
    return cache / f"stats-{key}-{size}.pt"


def fingerprint_files(files, labels, root=None) -> str:
    """A short hash of a split's file list, so cached stats go stale when the files change.

    With ``root`` (the folder ``files`` are relative to) each file's size and modification time are
    part of it too, so an image replaced under the same name is noticed.
    """
    h = hashlib.sha1()
    for f, y in zip(files, labels, strict=True):
        stamp = ""
        if root is not None:
            try:
                st = os.stat(os.path.join(root, f))
                stamp = f"\t{st.st_size}\t{st.st_mtime_ns}"
            except OSError:
                stamp = "\t?"
        h.update(f"{y}\t{f}{stamp}\n".encode("utf-8", "surrogateescape"))     # names as the file system gave them
    return h.hexdigest()
