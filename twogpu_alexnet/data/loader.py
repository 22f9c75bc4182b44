"""``make_loader``: batches of (images, labels, skipped) whose order and augmentation are pure functions
of (seed, epoch, index), so results do not depend on the number of workers and resume is exact.

Order: ``torch.utils.data.DistributedSampler`` (with one replica when not distributed) shuffles with
``seed + epoch``, pads to a multiple of the world size, and gives each rank its slice. The batch sampler
cuts that into batches, skips ``start_batch`` of them and sends (index, epoch, slot) keys to the workers,
so even persistent workers know the epoch. Augmentation is drawn from (split seed, epoch, index).

One pipeline, two places: workers decode, crop and reflect, and collate uint8 views straight into shared
memory (a quarter of the bytes of float32) with one small parameter row per image; the loader moves the
batch to ``device`` -- on a GPU pinned and on a side stream, one batch ahead, so the copy never waits on
the compute stream -- and there runs the arithmetic (mean, colour noise, scale) once per batch.

``device`` may also be a sequence, one entry per tower (two-tower mode): each distinct device then receives
the uint8 batch straight from the host and finishes it itself, and ``images`` is a :class:`TowerInputs`
(one tensor per entry; entries on one device share it). With one distinct device it is a plain tensor.

Unreadable images reach the collate as ``None``; it drops them and returns how many in ``skipped``.
A batch whose images were all unreadable is empty (0 x ...); skip it in the training loop.
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
from typing import NamedTuple

import torch
import torch.nn.functional as nnf
from torch.utils.data import DataLoader, DistributedSampler, Sampler, get_worker_info

from ..errors import UserError
from .cache import device_views, fill_cache
from .split import Split
from .transforms import PARAMS

SHM = "/dev/shm"


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
            lo = b * self.batch_size
            yield [(i, self.epoch, lo + k) for k, i in enumerate(indices[lo:lo + self.batch_size])]


def _shared_empty(shape, dtype) -> torch.Tensor:
    """An empty tensor in shared memory when called in a worker (the queue then sends only a handle)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = 1
    for n in shape:
        numel *= n
    storage = torch.UntypedStorage._new_shared(numel * torch.empty((), dtype=dtype).element_size())
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


class Collate:
    """List of (view or None, params, label, index) -> (uint8 views, params, labels, skipped, indices).

    With ``encoded`` the views are JPEG bytes and stay a list (decoded by the loader on its device).
    """

    def __init__(self, sample_shape, encoded: bool = False):
        self.sample_shape, self.encoded = tuple(sample_shape), encoded

    def __call__(self, items):
        good = [it for it in items if it[0] is not None]
        n = len(good)
        if self.encoded:
            return ([x for x, _, _, _ in good], *self._rest(good, items))
        # samples are H, W, C in memory (transforms.channels_last): the batch is written in that order
        hwc = (*self.sample_shape[:-3], *self.sample_shape[-2:], self.sample_shape[-3])
        images = _shared_empty((n, *hwc), torch.uint8)
        for row, (x, _, _, _) in enumerate(good):
            images[row].copy_(x.movedim(-3, -1))
        return (images.movedim(-1, -3), *self._rest(good, items))

    @staticmethod
    def _rest(good, items):
        params = torch.stack([p for _, p, _, _ in good]) if good else torch.empty(0, PARAMS, dtype=torch.float64)
        labels = torch.tensor([y for _, _, y, _ in good], dtype=torch.int64)
        indices = torch.tensor([i for _, _, _, i in good], dtype=torch.int64)
        return params, labels, len(items) - len(good), indices


class TowerInputs(tuple):
    """One batch per tower, tower 0 first: entry t is on tower t's device, and entries on the same device are the
    same tensor. What a loader given several distinct devices yields as ``images``; ``TwoTowerAlexNet`` takes it."""

    def map(self, fn) -> TowerInputs:
        """``fn`` applied once per distinct tensor (entries that shared a tensor still share the result)."""
        done = {}
        for x in self:
            if id(x) not in done:
                done[id(x)] = fn(x)
        return TowerInputs(done[id(x)] for x in self)


def device_slots(device) -> tuple[tuple[torch.device, ...], tuple[int, ...]]:
    """(the distinct devices of ``device`` -- one device or a sequence, one per tower -- in order of first
    appearance; for each entry the index of its device among them). ``cuda`` and ``cuda:N`` for the current
    GPU are one device."""
    one = isinstance(device, (str, int, torch.device))
    entries = [torch.device(device)] if one else [torch.device(d) for d in device]
    if not entries:
        raise UserError("the loader's device list is empty; pass a device such as cpu or cuda:0, or one per tower.")
    keys = [(d.type, torch.cuda.current_device() if d.type == "cuda" and d.index is None else d.index)
            for d in entries]
    distinct = list(dict.fromkeys(keys))
    slots = tuple(entries[keys.index(k)] for k in distinct)
    return slots, tuple(distinct.index(k) for k in keys)


class Batch(NamedTuple):
    images: torch.Tensor     # finished input (float32) on the loader's device, or uint8 views with finish=False;
    #                          a TowerInputs when the loader has several distinct devices
    labels: torch.Tensor
    skipped: int
    indices: torch.Tensor    # dataset index of each image (the unreadable ones are not there)


class Loader:
    """Iterable over (images, labels, skipped); ``set_epoch(epoch, start_batch)`` before each epoch.

    ``batches()`` yields :class:`Batch` (with the dataset indices) for callers that need them.
    ``device``: one device, or one per tower (see the module docstring); ``self.device`` is the first.
    """

    def __init__(self, split: Split, dataloader: DataLoader, sampler: EpochBatchSampler, device, finish: bool):
        self.split, self.dataloader, self.sampler = split, dataloader, sampler
        self.slots, self.owner = device_slots(device)  # the distinct devices; each entry's index among them
        self.device, self.finish = self.slots[0], finish

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
        for b in self.batches():
            yield b.images, b.labels, b.skipped

    def batches(self):
        streams = [torch.cuda.Stream(d) if d.type == "cuda" else None for d in self.slots]
        if all(s is None for s in streams):
            for raw in self.dataloader:
                yield self._ready(_copy_ahead(raw, self.slots, streams))
            return
        pending = None
        for raw in self.dataloader:              # copy batch k+1 while batch k is computed
            staged = _copy_ahead(raw, self.slots, streams)
            if pending is not None:
                yield self._ready(_arrived(pending, streams))
            pending = staged
        if pending is not None:
            yield self._ready(_arrived(pending, streams))

    def _ready(self, staged) -> Batch:
        """The staged batch finished on each of its devices (JPEG bytes: decoded and finished on the first)."""
        raw, copies, _ = staged
        if copies is None:                       # data.decode=gpu: one device decodes, the others get its result
            images, params, labels, skipped, indices = _decoded(raw, self.split, self.device)
            done = [self._finished(images, params, self.device)]
        else:
            _, _, labels, skipped, indices = raw
            done = [self._finished(images, params, d) for (images, params), d in zip(copies, self.slots, strict=True)]
        return Batch(per_tower(done, self.slots, self.owner), labels, skipped, indices)

    def _finished(self, images, params, device) -> torch.Tensor:
        images = images.to(device)
        return self.split.pipeline.finish(images, params.to(device)) if self.finish else images


class CachedLoader(Loader):
    """A :class:`Loader` whose batches come from the device cache instead of worker processes (with one device
    per tower the cache lives on the first, which finishes each batch and copies it on to the others)."""

    def __init__(self, split: Split, sampler: EpochBatchSampler, device, finish: bool, workers: int = 0):
        super().__init__(split, None, sampler, device, finish)
        self.images, self.readable = fill_cache(split, self.device, workers)

    def batches(self):
        for keys in self.sampler:
            yield self._batch(keys)

    def _batch(self, keys) -> Batch:
        pipe = self.split.pipeline
        drawn, keys = len(keys), [k for k in keys if self.readable[k[0]]]
        index = torch.tensor([k[0] for k in keys], dtype=torch.int64)
        labels = torch.tensor([self.split.dataset.labels[i] for i in index.tolist()], dtype=torch.int64)
        params = torch.stack([pipe.params(*k) for k in keys]) if pipe.train and keys else \
            torch.zeros(len(keys), PARAMS, dtype=torch.float64)
        views = device_views(self.images, index.to(self.device), params.to(self.device), pipe)
        x = pipe.finish(views, params) if self.finish else views
        return Batch(per_tower([x], self.slots, self.owner), labels, drawn - len(keys), index)


def per_tower(done: list, slots, owner) -> torch.Tensor | TowerInputs:
    """One tensor per distinct device (``slots``) -> what a loader yields: that tensor alone with one device,
    else one entry per tower (``owner``: each entry's device). With one tensor for several devices (one device
    did the work: the GPU cache, data.decode=gpu) it is copied on to the others -- device to device, queued
    on the current streams without waiting on the host (a copy into CPU memory blocks: see model.ops.to_device)."""
    if len(slots) == 1:
        return done[0]
    if len(done) < len(slots):
        done = [done[0]] + [done[0].to(d, non_blocking=d.type == "cuda") for d in slots[1:]]
    return TowerInputs(done[k] for k in owner)


def _decoded(raw, split: Split, device):
    """``data.decode = "gpu"``: a batch of JPEG bytes decoded on ``device`` (nvJPEG on CUDA), then cut into views
    there exactly as the workers cut them (cache.device_views); images that fail to decode are skipped."""
    from .decode import decode_jpeg_batch

    encoded, params, labels, skipped, indices = raw
    decoded = decode_jpeg_batch(encoded, device) if encoded else []
    keep = [k for k, img in enumerate(decoded) if img is not None]
    pad = split.pipeline.geometry.pad
    hwc = [nnf.pad(decoded[k], [pad] * 4).movedim(0, -1) for k in keep]
    images = torch.stack(hwc) if hwc else torch.empty(0, 1, 1, 3, dtype=torch.uint8, device=device)
    params, labels, indices = params[keep], labels[keep], indices[keep]
    views = device_views(images, torch.arange(len(keep), device=device), params.to(device), split.pipeline)
    return views, params, labels, skipped + len(encoded) - len(keep), indices


def _copy_ahead(raw, slots, streams):
    """(raw, one (views, params) per device, one event per device): the batch's H2D copies started, each on its
    device's side stream (``streams``: None for the CPU), from pinned memory, non-blocking, with an event
    recorded after them; a CPU device takes the worker's tensors as they are. JPEG bytes are left to
    ``Loader._ready`` (copies None)."""
    images, params = raw[:2]
    if isinstance(images, list):            # JPEG bytes: decoded on the device when the batch is used
        return raw, None, None
    pinned = tuple(t if t.is_pinned() else t.pin_memory() for t in (images, params)) \
        if any(s is not None for s in streams) else None     # pinned already by the DataLoader's thread (workers)
    copies, events = [], []
    for device, stream in zip(slots, streams, strict=True):
        if stream is None:
            copies.append((images, params))
            events.append(None)
            continue
        with torch.cuda.stream(stream):     # queued on the side stream: the compute stream does not wait here
            copies.append(tuple(t.to(device, non_blocking=True) for t in pinned))
            events.append(torch.cuda.Event())
            events[-1].record(stream)       # this batch's copies only (the next batch's are queued after it)
    return raw, copies, events


def _arrived(staged, streams):
    """Make each device's compute stream wait for this batch's copy, and tell the allocator the tensors are used
    there."""
    raw, copies, events = staged
    for pair, stream, event in zip(copies or [], streams, events or [], strict=False):
        if event is None:
            continue
        current = torch.cuda.current_stream(stream.device)
        current.wait_event(event)            # the sync point: compute on this device starts after the copy
        for t in pair:
            t.record_stream(current)
    return staged


def sample_bytes(split: Split) -> int:
    """Shared memory one sample takes between a worker and the trainer: its uint8 view(s), or with
    ``data.decode = "gpu"`` the bytes of the largest JPEG in the store (the workers send those)."""
    if split.dataset.encoded:
        lengths = split.dataset.source.length
        return int(lengths.max()) if len(lengths) else 0
    return torch.Size(split.pipeline.sample_shape).numel()


def check_shared_memory(batch_bytes: int, workers: int, prefetch: int, path: str = SHM) -> None:
    """One sentence instead of a worker's bus error when /dev/shm cannot hold the batches in flight."""
    if workers == 0 or not os.path.isdir(path):
        return
    need = 2 * workers * prefetch * batch_bytes
    free = shutil.disk_usage(path).free
    if free < need:
        raise UserError(
            f"{path} has {free / 2**20:.0f} MiB free but {workers} loader workers need about {need / 2**20:.0f} "
            f"MiB there; give the container more shared memory (docker run --shm-size=2g) or lower data.workers."
        )


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
                device="cpu", finish: bool = True, prefetch_factor: int = 2, cache: bool = False) -> Loader:
    """A loader over ``split.dataset`` (see the module docstring for order, resume and skipped images).

    Batches arrive on ``device``: finished (float32) by default, or as uint8 views with ``finish=False``.
    ``device`` may be a sequence, one per tower: each distinct device gets the uint8 batch from the host and
    finishes it, and ``images`` is a :class:`TowerInputs` (a plain tensor when all entries are one device).
    ``cache``: decode the split once into ``device`` memory and crop there (cache.py; small data); with several
    devices the cache lives on the first, which finishes each batch and copies it on to the others.
    """
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
    sampler = EpochBatchSampler(len(split.dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                rank=rank, world_size=world_size)
    if cache:
        return CachedLoader(split, sampler, device, finish, workers)
    shape = split.pipeline.sample_shape
    check_shared_memory(batch_size * sample_bytes(split), workers, prefetch_factor)
    extra = ({"persistent_workers": True, "prefetch_factor": prefetch_factor, "worker_init_fn": _worker_init}
             if workers > 0 else {})
    collate = Collate(shape, encoded=split.dataset.encoded)
    # uint8 batches bound for a GPU are pinned by the DataLoader's own thread, beside the training loop
    pin = workers > 0 and not split.dataset.encoded and any(d.type == "cuda" for d in device_slots(device)[0])
    dataloader = DataLoader(split.dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                            pin_memory=pin, **extra)
    return Loader(split, dataloader, sampler, device, finish)
