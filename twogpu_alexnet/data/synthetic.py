"""A built-in dataset with no files: images are a pure function of (seed, split, index).

Colour classes (the first ``num_classes // 2``) share one blob texture and differ ONLY in the hue of a
colour cast; shape classes (the rest: stripes, checkerboard, rings, plaid, then the same at higher
frequency) have a random hue and differ ONLY in the pattern. Every pattern is its own mirror image, so
flip augmentation keeps the class. Gaussian pixel noise (std 24) everywhere; ``label = index %
num_classes``, so any prefix of a split is balanced. docs/data.md ("Synthetic") has the details.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as nnf

DEFAULT_IMAGES = {"train": 4000, "val": 1000}
DEFAULT_CLASSES = 10
SPLIT_IDS = {"train": 1, "val": 2}
NOISE_STD = 24.0
CAST = 55.0        # colour cast amplitude (0..255 scale)
PATTERN = 60.0     # luminance pattern amplitude
STATS_IMAGES = {32: 1000}   # images used for the synthetic training-set statistics, by size
STATS_IMAGES_LARGE = 256    # ... for larger sizes


def hue_to_rgb(hue: torch.Tensor) -> torch.Tensor:
    """Fully saturated colours (values in [0, 1]) for hues in [0, 1); shape (..., 3)."""
    h = (hue % 1.0).unsqueeze(-1) * 6.0
    k = torch.tensor([3.0, 2.0, 4.0], dtype=h.dtype)
    rgb = (h - k).abs()
    return torch.stack([rgb[..., 0] - 1, 2 - rgb[..., 1], 2 - rgb[..., 2]], dim=-1).clamp(0, 1)


PATTERNS = ("vertical", "horizontal", "checker", "rings", "plaid")


def class_names(num_classes: int = DEFAULT_CLASSES) -> list[str]:
    """Names in index order; they sort in index order too."""
    n_colour = num_classes // 2
    names = []
    for c in range(num_classes):
        if c < n_colour:
            names.append(f"{c:02d}-colour-hue{round(360 * c / n_colour):03d}")
        else:
            k = c - n_colour
            band = k // len(PATTERNS)
            names.append(f"{c:02d}-shape-{PATTERNS[k % len(PATTERNS)]}" + (f"-f{band}" if band else ""))
    return names


def _generator(seed: int, split: str, index: int) -> np.random.Generator:
    """numpy's PCG64 seeded with the full (seed, split, index) key (torch's CPU generator keeps only 32 bits)."""
    return np.random.default_rng([seed % 2**64, SPLIT_IDS[split], index % 2**64])


def synthetic_images(
    seed: int, split: str, indices, size: int, num_classes: int = DEFAULT_CLASSES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8, N x 3 x size x size) and labels (int64, N) at ``indices`` of a split.

    Each image's random numbers come from its own generator seeded by (seed, split, index), so an
    image does not depend on which other indices are generated with it.
    """
    if num_classes < 2:
        raise ValueError("the synthetic dataset needs at least 2 classes")
    indices = [int(i) for i in indices]
    n = len(indices)
    u = np.empty((n, 8))
    coarse = np.empty((n, 1, 4, 4))
    noise = np.empty((n, 3, size, size), dtype=np.float32)
    for row, index in enumerate(indices):
        g = _generator(seed, split, index)
        u[row] = g.random(8)
        coarse[row] = g.standard_normal((1, 4, 4))
        noise[row] = g.standard_normal((3, size, size), dtype=np.float32)
    u, coarse, noise = torch.from_numpy(u), torch.from_numpy(coarse), torch.from_numpy(noise)
    labels = torch.tensor(indices, dtype=torch.int64) % num_classes
    n_colour = num_classes // 2
    is_colour = labels < n_colour
    coords = torch.linspace(-1.0, 1.0, size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    # colour classes: smooth isotropic blobs, unit std, clipped at 2 std
    blobs = nnf.interpolate(coarse.float(), size=(size, size), mode="bicubic", align_corners=True)[:, 0]
    blobs = blobs / blobs.std(dim=(1, 2), keepdim=True).clamp_min(1e-6)
    blobs = blobs.clamp(-2, 2) * (math.sqrt(2) / 2)
    grating = _shape_patterns(u, (labels - n_colour).clamp_min(0), xx, yy)
    pattern = torch.where(is_colour.view(-1, 1, 1), blobs, grating)
    hue = torch.where(is_colour, labels / n_colour + (u[:, 0] - 0.5) * 0.04, u[:, 0])
    colour = hue_to_rgb(hue)
    cast = CAST * 2 * (colour - colour.mean(dim=1, keepdim=True))     # zero-mean colour direction
    brightness = 128.0 + 30.0 * (u[:, 4] - 0.5)
    base = (brightness.view(-1, 1) + cast).float().view(-1, 3, 1, 1)
    img = noise.mul_(NOISE_STD).add_(base).add_(PATTERN * pattern.unsqueeze(1))
    return img.clamp_(0, 255).add_(0.5).floor_().to(torch.uint8), labels   # round half up


def _shape_patterns(u: torch.Tensor, k: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    """The shape classes' luminance patterns (N x S x S): kind k % 5, 2..3 periods (+1 per frequency band),
    random phase and tilt from the image's uniforms ``u``."""
    kind, band = k % len(PATTERNS), (k // len(PATTERNS)).to(torch.float64)
    tilt = ((u[:, 1] - 0.5) * math.radians(8)).view(-1, 1, 1).float()
    cycles = (2.0 + u[:, 2] + band).view(-1, 1, 1).float()
    phase = (2 * math.pi * u[:, 3]).view(-1, 1, 1).float()
    phase2 = (2 * math.pi * u[:, 5]).view(-1, 1, 1).float()
    xr = xx * tilt.cos() + yy * tilt.sin()             # slightly tilted axes
    yr = yy * tilt.cos() - xx * tilt.sin()
    w = math.pi * cycles
    cx, cy = (0.3 * (u[:, 6:8] - 0.5)).float().T.reshape(2, -1, 1, 1)   # ring centre within +-0.15
    diag = math.sqrt(0.5)
    shapes = torch.stack([
        torch.sin(w * xr + phase) * math.sqrt(2),                                   # vertical stripes
        torch.sin(w * yr + phase) * math.sqrt(2),                                   # horizontal stripes
        torch.sin(w * xr + phase) * torch.sin(w * yr + phase2) * 2,                 # checkerboard
        torch.sin(w * ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt() + phase) * math.sqrt(2),   # rings
        torch.sin(w * diag * (xr + yr) + phase) + torch.sin(w * diag * (xr - yr) + phase2),               # plaid
    ])                                                                              # 5 x N x S x S
    return shapes[kind, torch.arange(len(k))]


def synthetic_image(
    seed: int, split: str, index: int, size: int, num_classes: int = DEFAULT_CLASSES
) -> tuple[torch.Tensor, int]:
    """One image (uint8, 3 x size x size) and its label; the same as row ``index`` of any batch."""
    images, labels = synthetic_images(seed, split, [index], size, num_classes)
    return images[0], int(labels[0])


def stats_indices(size: int) -> range:
    """Which training indices the synthetic statistics are computed from (a fixed prefix)."""
    return range(STATS_IMAGES.get(size, STATS_IMAGES_LARGE))
