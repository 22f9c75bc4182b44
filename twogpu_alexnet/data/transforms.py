"""The paper's transforms: random crops, reflections, fancy-PCA colour noise, mean subtraction, 10 views.

Pixel scale (``pixel_scale``): the output is (pixel - mean [+ colour noise]) * scale, pixels in 0..255.
* input 224 (paper, original presets): scale 1 -- the 0..255 scale of the original code, which the
  paper's initialization (weights std 0.01) assumes.
* inputs <= 64 (the cifar preset): scale 1 / sigma, sigma = sqrt(trace(RGB covariance) / 3) of the
  training set, so inputs have unit variance -- what the cifar preset's sqrt(2 / fan_in) initialization
  assumes (0..255 inputs make its first loss ~50 and training diverges).
The scale is a pure function of the statistics and the input size, so evaluation with a checkpoint's
statistics reproduces it. All statistics (mean image, eigenvalues) stay in the 0..255 scale.

Geometry (``geometry_for``):
* input 224: stored images are 256 x 256; training takes a random 224 x 224 crop (top and left
  uniform in 0..32) and reflects it with p = 0.5; evaluation takes the centre crop, or 10 views.
* input 32 (CIFAR-style): images stay 32 x 32; training pads the mean-subtracted image with 4 zeros
  on every side (zero = the mean, after subtraction) and takes a random 32 x 32 crop of the 40 x 40
  result (top and left uniform in 0..8), then reflects with p = 0.5; evaluation uses the image
  itself; 10 views are the five crops of the padded image.

10 views: torchvision's ``ten_crop`` order -- top-left, top-right, bottom-left, bottom-right, centre,
then the same five crops of the horizontally reflected image (so view 5 is the reflection of view 1,
view 6 of view 0, view 7 of view 3, view 8 of view 2, view 9 of view 4). Softmax averaging does not
depend on the order.

Mean image: ``mean_crop="center"`` (default) subtracts the centre crop of the mean image from every
crop and view, exactly as Krizhevsky's data provider does (its ``data_mean_crop``);
``mean_crop="aligned"`` subtracts the mean image at the crop's own position (and reflected with it).
For a 32 input the mean is the image size, so it is always aligned.

Colour noise (one draw per image each time it is used; z ~ N(0, 1)^3 from the image's seed):
* ``paper``: add  P (alpha * lambda)  with alpha = 0.1 z, written on [0, 1] intensities as in the
  paper; in the 0..255 scale used here that is  P (0.1 z * lambda) / 255  (lambda: eigenvalues of the
  0..255 covariance). Without the 1/255 the formula would shift pixels by hundreds of grey levels.
* ``original``: (x - mean + 0.1 * P (z * sqrt(lambda))) / 1.1  -- the original code's form.
* ``none``: no noise.
"""
from __future__ import annotations

import copy
import hashlib
import math
import struct
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as F

from ..errors import UserError
from .stats import Stats

COLOR_NOISE = ("paper", "original", "none")
MEAN_CROP = ("center", "aligned")
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


def augment_params(seed: int, epoch: int, index: int, geometry: Geometry) -> AugmentParams:
    """The augmentation of image ``index`` in ``epoch``: a pure function of (seed, epoch, index).

    Counter-based: BLAKE2b of (seed, epoch, index) gives eight 32-bit uniforms u; top and left are
    floor(u * (max_offset + 1)), flip is u < 0.5, and z comes from Box-Muller on two more pairs.
    """
    digest = hashlib.blake2b(struct.pack("<qqq", seed, epoch, index), digest_size=32).digest()
    u = [(k + 0.5) / 4294967296.0 for k in struct.unpack("<8I", digest)]
    span = geometry.max_offset + 1
    r1, r2 = math.sqrt(-2.0 * math.log(u[3])), math.sqrt(-2.0 * math.log(u[5]))
    z = (r1 * math.cos(2 * math.pi * u[4]), r1 * math.sin(2 * math.pi * u[4]), r2 * math.cos(2 * math.pi * u[6]))
    return AugmentParams(min(int(u[0] * span), span - 1), min(int(u[1] * span), span - 1), u[2] < 0.5, z)


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


def subtract(x: torch.Tensor, mean_hwc: torch.Tensor) -> torch.Tensor:
    """float32 ``x - mean`` for ``x`` (... x C x H x W, uint8 or float) and a mean stored as ... x H x W x C."""
    return torch.sub(x.movedim(-3, -1), mean_hwc).movedim(-1, -3)


def pixel_scale_for(stats: Stats, geometry: Geometry) -> float:
    """The default output scale (see the module docstring): 1 for 224 inputs, 1/sigma for small ones."""
    if geometry.input_size > 64:
        return 1.0
    return float(1.0 / (stats.covariance.diagonal().sum() / 3).clamp_min(1e-6).sqrt())


class Pipeline:
    """Turns a stored uint8 image (3 x image_size x image_size) into the network input.

    Two paths give the same numbers:
    * worker path (``uint8_batches`` False): ``__call__`` returns float32 normalized views.
    * device path (``uint8_batches`` True: evaluation, or training without colour noise with the
      centre mean): the worker returns uint8 crops and :meth:`finish` subtracts the mean on the
      batch's device.
    """

    def __init__(self, stats: Stats, geometry: Geometry, *, train: bool, color_noise: str = "paper",
                 views: int = 1, mean_crop: str = "center", seed: int = 0, pixel_scale: float | None = None):
        if color_noise not in COLOR_NOISE:
            raise UserError(
                f"color_noise {color_noise!r} is not one of {', '.join(COLOR_NOISE)}; set "
                f"data.color_noise to one of them."
            )
        if mean_crop not in MEAN_CROP:
            raise UserError(
                f"mean_crop {mean_crop!r} is not one of {', '.join(MEAN_CROP)}; use center (the "
                f"original code) or aligned."
            )
        if views not in (1, 10):
            raise UserError(f"views={views!r} is not supported; use 1 (centre crop) or 10 (the paper's 10 views).")
        if train and views != 1:
            raise UserError("the 10 test views are for evaluation; open the split with train=False to use views=10.")
        if stats.size != geometry.image_size:
            raise UserError(
                f"the mean image is {stats.size}x{stats.size} but input_size {geometry.input_size} needs "
                f"{geometry.image_size}x{geometry.image_size} images; recompute the statistics for this size."
            )
        self.stats, self.geometry = stats, geometry
        self.pixel_scale = pixel_scale_for(stats, geometry) if pixel_scale is None else float(pixel_scale)
        # colour noise as a 3x3 matrix M with offset = M z (see color_offset)
        self._pca = (color_offset_matrix(stats, color_noise)).tolist()
        self.train, self.color_noise, self.views, self.mean_crop, self.seed = train, color_noise, views, mean_crop, seed
        g = geometry
        mean_image = stats.mean_image.to(torch.float32)                              # 3 x S x S
        border = (g.image_size - g.input_size) // 2
        center_mean = F.crop(mean_image, border, border, g.input_size, g.input_size) if g.pad == 0 else mean_image
        self.aligned = g.pad > 0 or mean_crop == "aligned"
        self.uint8_batches = (not train) or (color_noise == "none" and not self.aligned)
        # means stored H x W x C (see channels_last)
        self.mean_hwc = mean_image.movedim(0, -1).contiguous()
        self.center_mean_hwc = center_mean.movedim(0, -1).contiguous()
        self.device_mean_hwc = (
            self._fixed_mean(mean_image, center_mean).movedim(-3, -1).contiguous() if self.uint8_batches else None
        )
        self._device_cache: dict = {}

    @property
    def sample_shape(self) -> tuple[int, ...]:
        s = self.geometry.input_size
        return (10, 3, s, s) if self.views == 10 else (3, s, s)

    @property
    def sample_dtype(self) -> torch.dtype:
        return torch.uint8 if self.uint8_batches else torch.float32

    # ----- the transform ------------------------------------------------------------------------
    def __call__(self, img: torch.Tensor, index: int = 0, epoch: int = 0) -> torch.Tensor:
        """One sample of image ``index`` in ``epoch``: uint8 views on the device path, else float32 normalized."""
        g = self.geometry
        img = channels_last(img)
        if not self.train:
            views = self._eval_views(img)
            return views if self.uint8_batches else self._scaled(subtract(views, self.device_mean_hwc))
        p = augment_params(self.seed, epoch, index, g)
        if not self.aligned:                              # crop the uint8 image, then subtract the centre mean
            view = F.crop(img, p.top, p.left, g.input_size, g.input_size)
            view = F.horizontal_flip(view) if p.flip else view
            if self.uint8_batches:
                return channels_last(view)
            return self._normalize(view, self.center_mean_hwc, p.z)
        full = self._normalize(img, self.mean_hwc, p.z)   # aligned: normalize the whole image, then crop
        if g.pad:
            full = F.pad(full, [g.pad] * 4, fill=0.0)
        view = F.crop(full, p.top, p.left, g.input_size, g.input_size)
        return channels_last(F.horizontal_flip(view) if p.flip else view)

    def _normalize(self, x_u8: torch.Tensor, mean_hwc: torch.Tensor, z) -> torch.Tensor:
        """(x - mean + colour offset), divided by 1.1 for the original form; float32."""
        out = subtract(x_u8, mean_hwc)
        scale = self.pixel_scale / (1.0 + ORIGINAL_COEFF) if self.color_noise == "original" else self.pixel_scale
        if self.color_noise == "none":
            return out if scale == 1.0 else out.mul_(scale)
        # the offset, in plain floats (same numbers as color_offset), added along rows of W*C values:
        # a broadcast over an innermost dim of 3 is several times slower
        offset = [sum(self._pca[c][i] * z[i] for i in range(3)) for c in range(3)]
        h, w = out.shape[-2:]
        offset = torch.tensor(offset, dtype=torch.float32, device=out.device)
        if h * w <= 4096:
            out.movedim(-3, -1).add_(offset)
        else:
            out.movedim(-3, -1).view(h, w * 3).add_(offset.repeat(w))
        return out if scale == 1.0 else out.mul_(scale)

    def _eval_views(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 view(s) for evaluation: the centre crop (the image itself for padded inputs) or the 10 views."""
        g = self.geometry
        if self.views == 1:
            return img if g.pad else channels_last(F.center_crop(img, [g.input_size, g.input_size]))
        return ten_views(F.pad(img, [g.pad] * 4, fill=0) if g.pad else img, g.input_size)

    def _fixed_mean(self, mean_image: torch.Tensor, center_mean: torch.Tensor) -> torch.Tensor:
        """The mean (C x H x W, or 10 x C x H x W) for uint8 views at fixed positions."""
        g = self.geometry
        if self.train or self.views == 1:
            return center_mean
        if not self.aligned:                              # the original code: centre mean for every view
            return center_mean.expand(10, *center_mean.shape)
        return ten_views(F.pad(mean_image, [g.pad] * 4, fill=0.0) if g.pad else mean_image, g.input_size)

    # ----- on the device ------------------------------------------------------------------------
    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Batch as yielded (on any device) -> float32 normalized. Float batches pass through."""
        if x.dtype != torch.uint8:
            return x if x.dtype == torch.float32 else x.float()
        return self._scaled(subtract(x, self.on(x.device).device_mean_hwc))

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.pixel_scale == 1.0 else x.mul_(self.pixel_scale)

    def on(self, device) -> "Pipeline":
        """This pipeline with its mean tensors on ``device`` (for finishing, decoding and transforming there)."""
        device = torch.device(device)
        if device.type == "cpu":
            return self
        moved = self._device_cache.get(str(device))
        if moved is None:
            moved = copy.copy(self)
            moved._device_cache = {}
            moved.mean_hwc = self.mean_hwc.to(device)
            moved.center_mean_hwc = self.center_mean_hwc.to(device)
            moved.device_mean_hwc = None if self.device_mean_hwc is None else self.device_mean_hwc.to(device)
            self._device_cache[str(device)] = moved
        return moved

    def __getstate__(self):          # the device cache stays in the process that made it
        state = dict(self.__dict__)
        state["_device_cache"] = {}
        return state
