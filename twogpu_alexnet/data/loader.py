"""``make_loader``: batches of (images, labels, skipped) whose order and augmentation are pure functions
of (seed, epoch, index), so results do not depend on the number of workers and resume is exact.

Order: ``torch.utils.data.DistributedSampler`` (with one replica when not distributed) shuffles with
``seed + epoch``, pads to a multiple of the world size, and gives each rank its slice. The batch sampler
cuts that into batches, skips ``start_batch`` of them and sends (index, epoch) keys to the workers, so
even persistent workers know the epoch. Augmentation is drawn from (split seed, epoch, index).

Unreadable images reach the collate as ``None``; it drops them and returns how many in ``skipped``.
A batch whose images were all unreadable is empty (0 x ...); skip it in the training loop.
"""
from __future__ import annotations

import os
import signal
import threading

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from ..errors import UserError
from .decode import decode_jpeg_batch, resize_center_crop
from .split import Split


class EpochBatchSampler(Sampler):
    """Batches of (index, epoch) keys for one rank; ``set_epoch(epoch, start_batch)`` picks what follows."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.order = DistributedSampler(
            range(size), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )
        self.batch_size, self.drop_last = batch_size, drop_last
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    @property
    def batches_per_epoch(self) -> int:
        n = len(self.order)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:              # what the next iteration yields
        return max(0, self.batches_per_epoch - self.start_batch)

    def __iter__(self):
        self.order.set_epoch(self.epoch)
        indices = list(self.order)
        for b in range(self.start_batch, self.batches_per_epoch):
            yield [(i, self.epoch) for i in indices[b * self.batch_size:(b + 1) * self.batch_size]]


class Collate:
    """List of (sample or None, label) -> (images, labels, skipped)."""

    def __init__(self, sample_shape, dtype, deferred: bool = False):
        self.sample_shape, self.dtype, self.deferred = tuple(sample_shape), dtype, deferred

    def __call__(self, items):
        good = [(x, y) for x, y in items if x is not None]
        skipped = len(items) - len(good)
        labels = torch.tensor([y for _, y in good], dtype=torch.int64)
        if self.deferred:                   # encoded bytes + (index, epoch); decoded by the loader
            return [x for x, _ in good], labels, skipped
        if not good:
            return torch.empty((0, *self.sample_shape), dtype=self.dtype), labels, skipped
        # samples are stored H, W, C (transforms.channels_last): stack in that order -> a channels_last batch
        return torch.stack([x.movedim(-3, -1) for x, _ in good]).movedim(-1, -3), labels, skipped


class Loader:
    """Iterable over (images, labels, skipped); ``set_epoch(epoch, start_batch)`` before each epoch."""

    def __init__(self, split: Split, dataloader: DataLoader, sampler: EpochBatchSampler):
        self.split, self.dataloader, self.sampler = split, dataloader, sampler

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if start_batch < 0 or start_batch > self.sampler.batches_per_epoch:
            raise UserError(
                f"start_batch {start_batch} is outside 0..{self.sampler.batches_per_epoch} for this "
                f"loader; resume from a batch inside the epoch."
            )
        self.sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        """Batches in a whole epoch for this rank (an iteration after set_epoch(e, k) yields len - k)."""
        return self.sampler.batches_per_epoch

    def __iter__(self):
        if self.split.decode_device is None:
            yield from self.dataloader
            return
        for encoded, labels, skipped in self.dataloader:
            images, labels, more = decode_batch(self.split, encoded, labels)
            yield images, labels, skipped + more


def decode_batch(split: Split, encoded, labels):
    """Deferred path: decode a batch of JPEG bytes on ``split.decode_device`` and apply the transforms there."""
    device = torch.device(split.decode_device)
    pipeline = split.pipeline.on(device)
    datas = [x for x, _, _ in encoded]
    decoded = decode_jpeg_batch(datas, device) if datas else []
    size = pipeline.geometry.image_size
    out, keep = [], []
    for row, (img, (_, index, epoch)) in enumerate(zip(decoded, encoded)):
        if img is None:
            continue
        out.append(pipeline(resize_center_crop(img, size), index, epoch))
        keep.append(row)
    skipped = len(datas) - len(out)
    labels = labels[keep] if skipped else labels
    if not out:
        return torch.empty((0, *pipeline.sample_shape), dtype=pipeline.sample_dtype, device=device), labels, skipped
    return torch.stack([x.movedim(-3, -1) for x in out]).movedim(-1, -3), labels, skipped


def _worker_init(worker_id: int) -> None:
    """Leave stopping to the trainer: a worker ignores SIGTERM unless its parent sends it.

    A batch scheduler or ``kill -- -PGID`` signals every process of the run. A worker killed by it
    makes the DataLoader raise in the trainer mid-step, before the trainer (which got the same
    signal) can finish the step and save. The DataLoader's own shutdown of its workers still ends
    them at once (the SIGTERM comes from the parent), and a worker whose parent is gone exits.
    """
    if not hasattr(signal, "sigwaitinfo"):  # not on macOS / Windows: keep torch's behaviour
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # inherited by every later thread
    threading.Thread(target=_wait_for_sigterm, args=(parent,), daemon=True, name="sigterm").start()


def _wait_for_sigterm(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent or os.getppid() != parent:
            os._exit(0)


def make_loader(split: Split, batch_size: int = 128, shuffle: bool = True, workers: int = 4, seed: int = 0,
                drop_last: bool = True, distributed: bool = False, rank: int = 0, world_size: int = 1,
                pin_memory: bool | None = None, prefetch_factor: int | None = None) -> Loader:
    """A loader over ``split.dataset`` (see the module docstring for order, resume and skipped images)."""
    if batch_size < 1:
        raise UserError(f"batch_size {batch_size} must be at least 1; set a positive batch size.")
    if workers < 0:
        raise UserError(f"workers {workers} must be 0 or more; use 0 to load in the main process.")
    if distributed:
        if world_size is None or rank is None:
            import torch.distributed as dist
            world_size, rank = dist.get_world_size(), dist.get_rank()
    else:
        rank, world_size = 0, 1
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is outside 0..{world_size - 1}; pass the process's rank and the world size.")
    sampler = EpochBatchSampler(
        len(split.dataset),
        batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        rank=rank,
        world_size=world_size,
    )
    if pin_memory is None:
        pin_memory = torch.cuda.is_available() and split.decode_device is None
    pipeline = split.pipeline
    collate = Collate(pipeline.sample_shape, pipeline.sample_dtype, deferred=split.decode_device is not None)
    extra = ({"persistent_workers": True, "prefetch_factor": prefetch_factor or 2, "worker_init_fn": _worker_init}
             if workers > 0 else {})
    dataloader = DataLoader(split.dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                            pin_memory=pin_memory, **extra)
    return Loader(split, dataloader, sampler)
