"""The one training step and the one validation pass: what the trainer runs per batch, and what
``bench model`` times.

A step is queued on the device and never waits for it: the batch in the model's memory layout,
forward under autocast, float32 cross-entropy, backward and the SGD update (through the gradient
scaler, which is a no-op unless fp16). The loss stays on the device; the caller reads it when it
chooses (the trainer: once per log point).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.loader import TowerInputs
from . import distributed
from .distributed import DistContext
from .metrics import topk_correct

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # speed.amp / bench --amp


def train_step(forward, optimizer, scaler, images, labels, *, device: torch.device, amp_dtype=None,
               channels_last: bool = False, keep=None) -> torch.Tensor | None:
    """batch -> forward/loss -> backward -> SGD update, all queued on the device.

    ``images``: a batch on the training device(s) (a :class:`TowerInputs` per tower in two-tower mode);
    ``labels`` anywhere (copied to the head device without waiting). ``keep(loss)``, when given, may veto
    the update after the backward is queued (train.nonfinite=skip; it reads the loss: one host sync).
    Returns the loss (detached, still on the device), or None when ``keep`` vetoed the update.
    """
    optimizer.zero_grad(set_to_none=True)  # before the forward: the old gradients' memory is free for it
    x = model_layout(images, device, channels_last)
    loss = forward_loss(forward, x, labels, amp_dtype, device.type)
    scaler.scale(loss).backward()
    if keep is not None and not keep(loss):
        return None
    scaler.step(optimizer)  # fp16: skips the update when a gradient overflowed (reads one flag: a sync)
    scaler.update()
    return loss.detach()


def forward_loss(forward, images, labels, amp_dtype, device_type: str) -> torch.Tensor:
    """Cross-entropy of the logits (on the head device) in float32."""
    with autocast(device_type, amp_dtype):
        logits = forward(images)
    return F.cross_entropy(logits.float(), labels.to(logits.device, non_blocking=True))


@torch.no_grad()
def validate(forward, loader, dataset_size: int, device: torch.device, amp_dtype, channels_last: bool,
             ctx: DistContext, stopping=None, on_batch=None) -> tuple[float, float, int] | None:
    """(top-1 error, top-5 error, images) of one centre view per image, summed over ranks.

    ``stopping()`` is asked before each batch (every rank gets the same answer); when it says so the
    pass ends at once and returns None. ``on_batch(done, batches)`` follows each batch.
    """
    forward.eval()
    try:
        # each rank sees every world_size-th image; the sampler pads the last ones with repeats: drop those
        limit = len(range(ctx.rank, dataset_size, ctx.world_size))
        seen, counts = 0, [0.0, 0.0, 0.0]
        for i, (images, labels, skipped) in enumerate(rng_neutral_iter(loader)):
            if stopping is not None and stopping():
                return None
            keep = max(0, min(len(labels), limit - seen))
            seen += len(labels) + skipped
            if keep > 0:
                x = model_layout(first_rows(images, keep), device, channels_last)
                with autocast(device.type, amp_dtype):
                    logits = forward(x)
                top1, top5 = topk_correct(logits.float(), labels[:keep].to(logits.device, non_blocking=True))
                counts = [counts[0] + top1, counts[1] + top5, counts[2] + keep]
            if on_batch is not None:
                on_batch(i + 1, len(loader))
    finally:
        forward.train()
    top1, top5, n = distributed.sum_across(counts, ctx)  # the pass's one host read
    if n == 0:
        return math.nan, math.nan, 0
    return 1 - top1 / n, 1 - top5 / n, int(n)


def autocast(device_type: str, amp_dtype):
    """torch.autocast for ``amp_dtype`` (an :data:`AMP_DTYPES` value); off for None."""
    return torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)


def model_layout(images, device: torch.device, channels_last: bool):
    """A batch (already on the training device: the loader put it there) in the model's memory layout.

    A per-tower batch (``TowerInputs``: two-tower mode on two devices) is laid out tower by tower, each on
    its own tower's device, and passed on as a plain tuple.
    """
    if isinstance(images, TowerInputs):
        return tuple(images.map(lambda x: _layout(x, channels_last)))
    return _layout(images.to(device, non_blocking=True), channels_last)


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def first_rows(images, keep: int):
    """The first ``keep`` images of a batch (of each tower's, for a per-tower batch)."""
    return images.map(lambda x: x[:keep]) if isinstance(images, TowerInputs) else images[:keep]


def rng_neutral_iter(loader):
    """Iterate over ``loader`` without touching the global torch generator.

    A DataLoader iterator draws a worker base seed from the global generator when it starts; the
    data here does not use it (augmentation is a function of seed, epoch and index), but the draw
    would shift the dropout masks of a run resumed in mid-epoch. Restoring the state around the
    start keeps an interrupted-and-resumed run bit-identical to a straight one.
    """
    state = torch.get_rng_state()
    it = iter(loader)
    try:
        first = next(it)  # the DataLoader iterator starts here
    except StopIteration:
        return
    finally:
        torch.set_rng_state(state)
    yield first
    yield from it
