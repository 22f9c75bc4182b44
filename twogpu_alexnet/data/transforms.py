"""The paper's transforms: random crops, reflections, fancy-PCA colour noise, mean subtraction, 10 views.

Two parts, two places: the geometric part (:meth:`Pipeline.__call__`: crop, reflection, padding, the
10 views) runs in the loader's workers on uint8 pixels and returns the view with a row of parameters
(crop top, left, reflection, colour offset); the arithmetic part (:meth:`Pipeline.finish`: mean image,
colour offset, pixel scale) runs once per batch on the training device. Every draw is a pure function
of (seed, epoch, index). The exact parameters -- geometry per input size, 10-view order, mean image,
both colour-noise forms, pixel scale, crop groups -- are in ``docs/data.md`` ("Transforms").
"""
from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as F

from ..errors import UserError
from .stats import Stats

COLOR_NOISE = ("paper", "original", "none")
PARAMS = 6               # per-sample parameter row: top, left, flip, colour offset R, G, B
ALPHA_STD = 0.1          # the paper's sigma for alpha_i
ORIGINAL_COEFF = 0.1     # the original code's color_noise coefficient (then divide by 1 + coeff)


@dataclass(frozen=True)
class Geometry:
    """Sizes: the network input, the stored image, and the zero padding used for random crops."""

    input_size: int
    image_size: int
    pad: int

    @property
    def max_offset(self) -> int:
        return self.image_size + 2 * self.pad - self.input_size


def geometry_for(input_size: int) -> Geometry:
    """224 -> 256 x 256 images (crops 224); small inputs (<= 64) keep their size and pad by 1/8."""
    if not isinstance(input_size, int) or input_size < 8:
        raise UserError(f"input_size {input_size!r} is not a usable network input size; use 224 (paper) or 32 (cifar).")
    if input_size <= 64:
        return Geometry(input_size, input_size, input_size // 8)
    return Geometry(input_size, input_size * 8 // 7, 0)


@dataclass(frozen=True)
class AugmentParams:
    """Everything random about one training view of one image."""

    top: int
    left: int
    flip: bool
    z: tuple[float, float, float]   # standard normals for the colour noise


def _uniforms(*key: int) -> list[float]:
    digest = hashlib.blake2b(struct.pack(f"<{len(key)}q", *key), digest_size=32).digest()
    return [(k + 0.5) / 4294967296.0 for k in struct.unpack("<8I", digest)]


def augment_params(seed: int, epoch: int, index: int, geometry: Geometry, group: int | None = None) -> AugmentParams:
    """The augmentation of image ``index`` in ``epoch``: a pure function of (seed, epoch, index).

    Counter-based: BLAKE2b of (seed, epoch, index) gives eight 32-bit uniforms u; top and left are
    floor(u * (max_offset + 1)), flip is u < 0.5, and z comes from Box-Muller on two more pairs.
    With a crop ``group`` k, top, left and flip come from (seed, epoch, k, 1) instead (z stays the image's).
    """
    u = _uniforms(seed, epoch, index)
    where = u if group is None else _uniforms(seed, epoch, group, 1)
    span = geometry.max_offset + 1
    r1, r2 = math.sqrt(-2.0 * math.log(u[3])), math.sqrt(-2.0 * math.log(u[5]))
    z = (r1 * math.cos(2 * math.pi * u[4]), r1 * math.sin(2 * math.pi * u[4]), r2 * math.cos(2 * math.pi * u[6]))
    return AugmentParams(min(int(where[0] * span), span - 1), min(int(where[1] * span), span - 1), where[2] < 0.5, z)


def color_offset_matrix(stats: Stats, form: str) -> torch.Tensor:
    """M (float64, 3 x 3) such that the colour noise adds M z to every pixel (before the 1/1.1 of ``original``)."""
    vecs, vals = stats.eigenvectors, stats.eigenvalues
    if form == "paper":
        return vecs * (ALPHA_STD * vals / 255.0)       # P diag(0.1 lambda / 255)
    if form == "original":
        return vecs * (ORIGINAL_COEFF * stats.pca_stdevs)   # 0.1 P diag(sqrt(lambda))
    if form == "none":
        return torch.zeros(3, 3, dtype=torch.float64)
    raise UserError(
        f"color_noise {form!r} is not one of {', '.join(COLOR_NOISE)}; set data.color_noise to one of them."
    )


def color_offset(z, stats: Stats, form: str) -> torch.Tensor:
    """The RGB shift (float64, 3) that colour noise adds to every pixel, before the 1/1.1 of ``original``.

    paper: P (0.1 z * lambda) / 255;  original: 0.1 P (z * sqrt(lambda)).
    """
    return color_offset_matrix(stats, form) @ torch.as_tensor(z, dtype=torch.float64)


def ten_views(img: torch.Tensor, size: int) -> torch.Tensor:
    """The 10 views of ``img`` (C x H x W) as V x C x size x size, in torchvision's ten_crop order."""
    return torch.stack([v.movedim(-3, -1) for v in F.ten_crop(img, [size, size])]).movedim(-1, -3)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (... x C x H x W) with its memory in H, W, C order, as JPEG decoders produce pixels.

    Samples and batches keep this layout (4-D batches are ``torch.channels_last``) because every
    step from the decoder to the mean subtraction is then a straight pass over memory.
    """
    moved = x.movedim(-3, -1)
    return x if moved.is_contiguous() else moved.contiguous().movedim(-1, -3)


def pixel_scale_for(stats: Stats, geometry: Geometry) -> float:
    """The default output scale (see the module docstring): 1 for 224 inputs, 1/sigma for small ones."""
    if geometry.input_size > 64:
        return 1.0
    return float(1.0 / (stats.covariance.diagonal().sum() / 3).clamp_min(1e-6).sqrt())


class Pipeline:
    """A stored uint8 image (3 x image_size x image_size) -> the network input, in two parts (module docstring).

    ``__call__`` (workers): the uint8 view(s) and a float64 row of PARAMS parameters.
    ``finish`` (the batch's device): N uint8 views and their N parameter rows -> normalized ``dtype`` input.
    """

    def __init__(self, stats: Stats, geometry: Geometry, *, train: bool, color_noise: str = "paper",
                 views: int = 1, seed: int = 0, crop_group: int = 0, pixel_scale: float | None = None):
        _check(stats, geometry, train, color_noise, views, crop_group)
        self.stats, self.geometry = stats, geometry
        self.train, self.color_noise, self.views = train, color_noise, views
        self.seed, self.crop_group = seed, crop_group
        scale = pixel_scale_for(stats, geometry) if pixel_scale is None else float(pixel_scale)
        self.pixel_scale = scale
        self.scale = scale / (1.0 + ORIGINAL_COEFF) if train and color_noise == "original" else scale
        self.noisy = train and color_noise != "none"
        self._pca = color_offset_matrix(stats, color_noise).tolist()   # offset = M z (see color_offset)
        self._means: dict = {}

    @property
    def sample_shape(self) -> tuple[int, ...]:
        s = self.geometry.input_size
        return (10, 3, s, s) if self.views == 10 else (3, s, s)

    # ----- in the workers: geometry on uint8 pixels ------------------------------------------------
    def __call__(self, img: torch.Tensor, index: int = 0, epoch: int = 0, slot: int | None = None):
        """(uint8 view(s), float64 parameter row) of image ``index`` at position ``slot`` of ``epoch``'s order."""
        g, s = self.geometry, self.geometry.input_size
        img = channels_last(img)
        if not self.train:
            row = torch.zeros(PARAMS, dtype=torch.float64)
            if self.views == 10:
                return ten_views(F.pad(img, [g.pad] * 4, fill=0) if g.pad else img, s), row
            return (img if g.pad else F.center_crop(img, [s, s])), row
        row = self.params(index, epoch, slot)
        top, left, flip = int(row[0]), int(row[1]), bool(row[2])
        view = F.crop(F.pad(img, [g.pad] * 4, fill=0) if g.pad else img, top, left, s, s).movedim(-3, -1)
        # a view into the image (the collate copies it once); a reflection is one copy, kept in H, W, C order
        return (view.flip(-2) if flip else view).movedim(-1, -3), row

    def params(self, index: int, epoch: int, slot: int | None = None) -> torch.Tensor:
        """The parameter row of a training view: crop top, left, reflection, colour offset (float64; 0 in eval)."""
        if not self.train:
            return torch.zeros(PARAMS, dtype=torch.float64)
        group = None if not self.crop_group else (index if slot is None else slot) // self.crop_group
        p = augment_params(self.seed, epoch, index, self.geometry, group)
        offset = [sum(self._pca[c][i] * p.z[i] for i in range(3)) for c in range(3)] if self.noisy else [0.0] * 3
        return torch.tensor([p.top, p.left, float(p.flip), *offset], dtype=torch.float64)

    # ----- on the batch's device: the arithmetic, once per batch -----------------------------------
    def finish(self, x: torch.Tensor, params: torch.Tensor | None = None, dtype=torch.float32) -> torch.Tensor:
        """uint8 views (N x 3 x s x s, or N x 10 x 3 x s x s) -> ``(x - mean + offset) * scale`` in ``dtype``.

        Training batches need their parameter rows (N x PARAMS); evaluation views are at fixed positions.
        """
        x = x.movedim(-3, -1).contiguous()              # H, W, C memory: rows of W * 3 values
        if not self.train or self.geometry.pad == 0:    # fixed mean: for 224 crops the centre (not reflected)
            out = x.to(dtype).sub_(self._mean(x.device, dtype))
            if self.noisy:                              # one offset per image along each row (W * 3 values)
                w = x.shape[-2]
                out.view(len(x), -1, w * 3).add_(params[:, 3:].to(x.device, dtype).repeat(1, w)[:, None])
        else:                                           # the mean moves with the crop; padding stays 0
            mean, inside = self._moving_mean(params.to(x.device), dtype)
            out = x.to(dtype).sub_(mean)
            if self.noisy:
                out.add_(params[:, 3:].to(x.device, dtype)[:, None, None] * inside)
        out = out if self.scale == 1.0 else out.mul_(self.scale)
        return out.movedim(-1, -3)

    def _mean(self, device, dtype) -> torch.Tensor:
        """The fixed mean (3 x s x s, or 10 x 3 x s x s for padded 10 views) on ``device``, cached."""
        key = (str(device), dtype, "fixed")
        if key not in self._means:
            g, s = self.geometry, self.geometry.input_size
            mean = self.stats.mean_image.to(dtype)
            if g.pad and self.views == 10:
                mean = ten_views(F.pad(mean, [g.pad] * 4, fill=0.0), s)
            elif not g.pad:
                mean = F.center_crop(mean, [s, s])
            self._means[key] = channels_last(mean).to(device)
        return self._means[key].movedim(-3, -1)

    def _moving_mean(self, params: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample: the zero-padded mean image and a 0/1 inside-the-image mask at the sample's crop."""
        key = (str(params.device), dtype, "padded")
        if key not in self._means:
            pad = [self.geometry.pad] * 4
            mean = self.stats.mean_image.to(dtype)
            self._means[key] = torch.cat([F.pad(mean, pad, fill=0.0), F.pad(torch.ones_like(mean[:1]), pad)])
            self._means[key] = self._means[key].to(params.device)
        both = self._means[key]                                                  # 4 x P x P
        s, span = self.geometry.input_size, torch.arange(self.geometry.input_size, device=params.device)
        rows = params[:, 0].long()[:, None] + span                               # N x s
        cols = params[:, 1].long()[:, None] + torch.where(params[:, 2:3] > 0, s - 1 - span, span)
        picked = both[:, rows[:, :, None], cols[:, None, :]].movedim(0, -1)     # N x s x s x 4
        return picked[..., :3], picked[..., 3:]

    def __getstate__(self):          # device copies of the mean stay in the process that made them
        state = dict(self.__dict__)
        state["_means"] = {}
        return state


def _check(stats: Stats, geometry: Geometry, train: bool, color_noise: str, views: int, crop_group: int) -> None:
    if color_noise not in COLOR_NOISE:
        raise UserError(
            f"color_noise {color_noise!r} is not one of {', '.join(COLOR_NOISE)}; set data.color_noise to one of them."
        )
    if views not in (1, 10):
        raise UserError(f"views={views!r} is not supported; use 1 (centre crop) or 10 (the paper's 10 views).")
    if train and views != 1:
        raise UserError("the 10 test views are for evaluation; open the split with train=False to use views=10.")
    if not isinstance(crop_group, int) or isinstance(crop_group, bool) or crop_group < 0:
        raise UserError(f"data.crop_group {crop_group!r} is not a whole number >= 0; use 0 (off) or 32 (2012 code).")
    if stats.size != geometry.image_size:
        raise UserError(
            f"the mean image is {stats.size}x{stats.size} but input_size {geometry.input_size} needs "
            f"{geometry.image_size}x{geometry.image_size} images; recompute the statistics for this size."
        )
