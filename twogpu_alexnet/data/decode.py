"""Bytes to RGB pixels, and the paper's one-time geometry (shorter side to S, centre crop S x S).

Every image the package reads goes through :func:`decode_rgb`: torchvision's libjpeg-turbo / libpng
decoders (``decode_image(..., mode=RGB)``) turn grayscale, CMYK, palette and alpha images into
3-channel RGB and detect the real format from the bytes, so a PNG behind a ``.JPEG`` name decodes
as PNG. Formats torchvision cannot decode (BMP, TIFF, PPM) fall back to PIL. Anything that still
fails raises :class:`CorruptImage` with a short reason; callers skip and report it.
"""
from __future__ import annotations

import io

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from torchvision.io import ImageReadMode, decode_image, decode_jpeg


class CorruptImage(Exception):
    """An image file that cannot be decoded; ``str(exc)`` is the reason shown to the user."""


def read_bytes(path) -> torch.Tensor:
    """The file's bytes as a 1-D uint8 tensor (what torchvision's decoders take)."""
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise CorruptImage("empty file")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    text = text[-1] if text else type(exc).__name__
    # torchvision prefixes C++ messages with "function, file:line, "; keep the human part
    return text.rsplit(".cpp:", 1)[-1].split(", ", 1)[-1].strip() or type(exc).__name__


def decode_rgb(data: torch.Tensor) -> torch.Tensor:
    """Decode encoded image bytes (1-D uint8) to a uint8 RGB tensor 3 x H x W."""
    if data.numel() == 0:
        raise CorruptImage("empty file")
    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        first_error = exc
    # Not a format torchvision decodes (or a broken file): PIL knows BMP, TIFF, PPM and more.
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
            im = im.convert("RGB")
            return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).contiguous()
    except UnidentifiedImageError:
        if "Unsupported image file" in str(first_error):
            raise CorruptImage("not an image (unrecognised file format)") from None
        raise CorruptImage(_reason(first_error)) from None
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's truncated / broken-file errors
        raise CorruptImage(f"{_reason(first_error)}; PIL: {exc}") from None


def decode_jpeg_batch(datas: list[torch.Tensor], device) -> list[torch.Tensor | None]:
    """Decode a list of JPEG byte tensors on ``device`` (nvJPEG on CUDA); None where one fails.

    Non-JPEG or broken entries fall back to :func:`decode_rgb` on the CPU, then move to ``device``.
    """
    try:
        return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    out: list[torch.Tensor | None] = []
    for data in datas:
        try:
            out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            try:
                out.append(decode_rgb(data).to(device))
            except CorruptImage:
                out.append(None)
    return out


def resize_center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """The paper's offline step: shorter side to ``size``, then the central ``size`` x ``size`` square.

    Implemented as "central square of side min(H, W), then an antialiased bilinear resize to
    size x size": the same pixels as resize-then-crop up to half a source pixel at the crop edge,
    and it resizes only the pixels that are kept. Works on any device.
    """
    h, w = img.shape[-2:]
    if h == size and w == size:
        return img
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    # H, W, C memory (as decoded) makes torch's uint8 antialiased resize take its vectorized path
    square = F.crop(img, top, left, side, side).movedim(0, -1).contiguous().movedim(-1, 0)
    if side == size:
        return square
    return F.resize(square, [size, size], antialias=True)
