"""``data.cache = "gpu"``: a small dataset decoded once and kept on the training device as uint8, augmented there.

Imagenette's 9,469 training images at 256 x 256 are 1.9 GB; a prepared store is read once (with the
loader's workers), and every epoch after that is a gather on the device: each batch's crops are picked
from the cached images by their parameter rows (the same rows, from the same (seed, epoch, index), the
workers draw), then finished by the same arithmetic. Batches are identical to the worker path's.
The loader that serves them is ``loader.CachedLoader``; :func:`device_views` also cuts the views of
images decoded on the device (``data.decode = "gpu"``).
"""
from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as F
from torch.utils.data import DataLoader

from ..errors import UserError
from .decode import CorruptImage
from .split import Split
from .transforms import ten_views


class _Stored(torch.utils.data.Dataset):
    """index -> (stored uint8 image as H x W x C, readable?)."""

    def __init__(self, split: Split):
        self.source, self.size = split.dataset.source, split.pipeline.geometry.image_size

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        try:
            return self.source.image(i).movedim(0, -1).contiguous(), True
        except (CorruptImage, OSError):
            return torch.zeros(self.size, self.size, 3, dtype=torch.uint8), False


def fill_cache(split: Split, device, workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Every stored image of ``split`` on ``device``: (N x P x P x 3 uint8, zero-padded by the geometry's pad;
    N bools, readable)."""
    g = split.pipeline.geometry
    side = g.image_size + 2 * g.pad
    need = len(split.dataset) * side * side * 3
    device = torch.device(device)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        if need > free // 2:
            raise UserError(f"data.cache=gpu needs {need / 2**30:.1f} GiB for {len(split.dataset)} images but "
                            f"{device} has {free / 2**30:.1f} GiB free; set data.cache=none for data this large.")
    images = torch.zeros(len(split.dataset), side, side, 3, dtype=torch.uint8, device=device)
    readable = torch.zeros(len(split.dataset), dtype=torch.bool)
    loader = DataLoader(_Stored(split), batch_size=64, num_workers=workers)
    lo, p = 0, g.pad
    for batch, ok in loader:
        images[lo:lo + len(batch), p:p + g.image_size, p:p + g.image_size] = batch.to(device)
        readable[lo:lo + len(batch)] = ok
        lo += len(batch)
    return images, readable


def device_views(images: torch.Tensor, index: torch.Tensor, params: torch.Tensor, pipe) -> torch.Tensor:
    """The uint8 views (N x 3 x s x s, or N x 10 x 3 x s x s) of ``images[index]`` (padded H x W x C images on a
    device), as the workers make them: training crops by the parameter rows, else the evaluation views."""
    s = pipe.geometry.input_size
    if pipe.train:
        return _crops(images, index, params, s)
    if not len(index):
        return torch.empty((0, *pipe.sample_shape), dtype=torch.uint8, device=images.device)
    return torch.stack([_eval_views(images[i], pipe) for i in index.tolist()])


def _crops(images: torch.Tensor, index: torch.Tensor, params: torch.Tensor, s: int) -> torch.Tensor:
    """The training crops (N x 3 x s x s, channels_last uint8) at the rows' positions, reflected where they say."""
    span = torch.arange(s, device=images.device)
    rows = params[:, 0].long()[:, None] + span
    cols = params[:, 1].long()[:, None] + torch.where(params[:, 2:3] > 0, s - 1 - span, span)
    return images[index[:, None, None], rows[:, :, None], cols[:, None, :]].movedim(-1, 1)


def _eval_views(padded_hwc: torch.Tensor, pipe) -> torch.Tensor:
    """The evaluation view(s) of one cached image, as the workers make them."""
    g, s = pipe.geometry, pipe.geometry.input_size
    img = padded_hwc.movedim(-1, 0)
    if pipe.views == 10:
        return ten_views(img, s)
    return img[:, g.pad:g.pad + s, g.pad:g.pad + s] if g.pad else F.center_crop(img, [s, s])
