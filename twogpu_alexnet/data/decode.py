"""Bytes to 8-bit RGB pixels, and the paper's one-time geometry (shorter side to S, centre crop S x S).

Every image the package reads from a user's files goes through :func:`decode_rgb` (or, for batches
of JPEGs decoded on a GPU, :func:`decode_jpeg_batch`, which applies the same checks):

1. The header's width x height is checked before any pixel is decoded: an image above
   :func:`pixel_limit` (default :data:`MAX_PIXELS`, raised with the environment variable
   ``TWOGPU_ALEXNET_MAX_PIXELS``) is skipped, so a small "decompression bomb" file cannot take
   gigabytes of memory.
2. torchvision's libjpeg-turbo / libpng / libwebp decoders detect the real format from the bytes (a
   PNG behind a ``.JPEG`` name decodes as PNG) and turn grayscale, CMYK, palette and alpha images into
   RGB. 16-bit PNGs are decoded as they are and scaled to 8 bits here (65535 -> 255).
3. What torchvision cannot decode (BMP, TIFF, PPM, GIF -- first frame only) goes to PIL, with 16-bit
   and 32-bit integer modes scaled the same way (PIL's own ``convert("RGB")`` would clip them).

Anything that still fails raises :class:`CorruptImage` with a short reason; callers skip and report it.
"""
from __future__ import annotations

import io
import os
import struct
import warnings

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from ..errors import UserError

MAX_PIXELS = 100_000_000           # width x height; a 100-megapixel photo decodes to 300 MB of RGB
MAX_PIXELS_ENV = "TWOGPU_ALEXNET_MAX_PIXELS"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8"


class CorruptImage(Exception):
    """An image file that cannot be decoded; ``str(exc)`` is the reason shown to the user."""


def pixel_limit() -> int:
    """The largest width x height decoded: ``$TWOGPU_ALEXNET_MAX_PIXELS`` when set, else :data:`MAX_PIXELS`."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(
            f"{MAX_PIXELS_ENV}={text!r} is not a positive whole number of pixels; set it to e.g. 300000000 "
            f"(width x height of the largest image to decode) or unset it for the default {MAX_PIXELS:,}."
        )
    return value


def read_bytes(path) -> torch.Tensor:
    """The file's bytes as a 1-D uint8 tensor (what torchvision's decoders take)."""
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise CorruptImage("empty file")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


# ----------------------------------------------------------------------------------- headers

def _png_size(buf: memoryview) -> tuple[int, int] | None:
    if len(buf) < 24 or bytes(buf[12:16]) != b"IHDR":
        return None
    return struct.unpack_from(">II", buf, 16)


def _jpeg_size(buf: memoryview) -> tuple[int, int] | None:
    """(width, height) from the frame header (SOFn) that precedes the first scan; None if there is none."""
    i, n = 2, len(buf)
    while i + 9 <= n:
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:                                  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:      # markers without a length
            i += 2
        elif marker in (0xD9, 0xDA):                        # end of image / start of scan before any frame
            return None
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack_from(">HH", buf, i + 5)
            return (width, height) if height else None      # height 0: defined later (DNL), unknown here
        else:
            i += 2 + ((buf[i + 2] << 8) | buf[i + 3])
    return None


def _check_pixels(size: tuple[int, int] | None, limit: int) -> None:
    if size is None:
        return
    width, height = size
    if width == 0 or height == 0:
        raise CorruptImage(f"the header says {width} x {height} pixels (an empty image)")
    if width * height > limit:
        raise CorruptImage(
            f"{width} x {height} = {width * height:,} pixels is above the limit of {limit:,} (a decompression bomb?); "
            f"if the image is real, raise the limit with {MAX_PIXELS_ENV}"
        )


def _header_size(buf: memoryview) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header; None for other formats (PIL reads theirs)."""
    if buf[:8] == PNG_SIGNATURE:
        return _png_size(buf)
    if buf[:2] == JPEG_SIGNATURE:
        return _jpeg_size(buf)
    return None


def check_pixel_count(data: torch.Tensor, max_pixels: int | None = None) -> None:
    """Raise CorruptImage if the PNG or JPEG header of ``data`` announces more than the pixel limit."""
    _check_pixels(_header_size(memoryview(data.numpy())), pixel_limit() if max_pixels is None else max_pixels)


# ----------------------------------------------------------------------------------- decoding

def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    text = text[-1] if text else type(exc).__name__
    # torchvision prefixes C++ messages with "function, file:line, "; keep the human part
    return text.rsplit(".cpp:", 1)[-1].split(", ", 1)[-1].strip() or type(exc).__name__


def to_rgb8(img: torch.Tensor) -> torch.Tensor:
    """Any decoded C x H x W image (uint8 or uint16; 1 to 4 channels; frames first if 4-D) -> uint8 RGB 3 x H x W.

    16 bits become 8 by keeping the high byte (torchvision's ``to_dtype(..., scale=True)``: 65535 -> 255,
    257 * v -> v); gray is repeated to three channels; alpha is dropped.
    """
    if img.dim() == 4:                                     # animated image: the first frame
        img = img[0]
    if img.dtype != torch.uint8:
        img = F.to_dtype(img, torch.uint8, scale=True)
    channels = img.shape[0]
    if channels in (1, 2):                                 # gray, gray + alpha
        return img[:1].expand(3, -1, -1).contiguous()
    if channels == 4:                                      # RGB + alpha
        return img[:3]
    if channels != 3:
        raise CorruptImage(f"{channels} colour channels (expected 1 to 4)")
    return img          # as decoded (H, W, C memory: the fast layout for resize_center_crop)


def _decode_torchvision(data: torch.Tensor, buf: memoryview) -> torch.Tensor:
    if buf[:8] == PNG_SIGNATURE and len(buf) > 24 and buf[24] == 16:
        # torchvision's conversion to RGB fails on 16-bit PNGs; decode as stored and convert here
        return to_rgb8(decode_image(data, mode=ImageReadMode.UNCHANGED))
    return to_rgb8(decode_image(data, mode=ImageReadMode.RGB))


def _decode_pil(buf: memoryview, limit: int) -> torch.Tensor:
    """Decode with PIL: header size checked first; 16/32-bit integer modes scaled like :func:`to_rgb8`."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)    # the limit is checked here
        with Image.open(io.BytesIO(buf)) as im:
            _check_pixels(im.size, limit)
            if im.mode == "F":
                raise CorruptImage("floating-point pixels (mode F) have no fixed range; save the image with 8 bits")
            if im.mode.startswith("I"):                    # I;16, I;16B, I (32-bit): taken as 0..65535
                gray = np.asarray(im).astype(np.int64).clip(0, 65535).astype(np.uint16)
                return to_rgb8(torch.from_numpy(gray)[None])
            rgb = np.asarray(im.convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def decode_rgb(data: torch.Tensor, max_pixels: int | None = None) -> torch.Tensor:
    """Decode encoded image bytes (1-D uint8) to a uint8 RGB tensor 3 x H x W, or raise CorruptImage.

    ``max_pixels``: largest width x height to decode (default :func:`pixel_limit`), checked on the
    header before any pixel is decoded.
    """
    if data.numel() == 0:
        raise CorruptImage("empty file")
    limit = pixel_limit() if max_pixels is None else max_pixels
    buf = memoryview(data.numpy())
    size = _header_size(buf)
    first_error = None
    if size is not None:                                   # PNG or JPEG
        _check_pixels(size, limit)
        try:
            return _decode_torchvision(data, buf)
        except RuntimeError as exc:
            first_error = exc
    from PIL import Image, UnidentifiedImageError

    # not PNG/JPEG (BMP, TIFF, GIF, WEBP, PPM, ...) or a broken one: PIL, which reads the header lazily
    try:
        return _decode_pil(buf, limit)
    except UnidentifiedImageError:
        if first_error is None:
            raise CorruptImage("not an image (unrecognised file format)") from None
        raise CorruptImage(_reason(first_error)) from None
    except Image.DecompressionBombError:
        raise CorruptImage(
            f"larger than PIL's own limit of {2 * Image.MAX_IMAGE_PIXELS:,} pixels (a decompression bomb?)"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error) as exc:  # truncated / broken
        prefix = "" if first_error is None else f"{_reason(first_error)}; "
        raise CorruptImage(f"{prefix}PIL: {exc}") from None


def decode_jpeg_batch(datas: list[torch.Tensor], device) -> list[torch.Tensor | None]:
    """Decode a list of JPEG byte tensors on ``device`` (nvJPEG on CUDA); None where one fails.

    Images above the pixel limit are None without decoding; non-JPEG or broken entries fall back to
    :func:`decode_rgb` on the CPU, then move to ``device``.
    """
    limit = pixel_limit()
    out: list[torch.Tensor | None] = [None] * len(datas)
    todo = []
    for i, data in enumerate(datas):
        try:
            check_pixel_count(data, limit)
            todo.append(i)
        except CorruptImage:
            pass
    try:
        decoded = decode_jpeg([datas[i] for i in todo], mode=ImageReadMode.RGB, device=device) if todo else []
        for i, img in zip(todo, decoded):
            out[i] = img
        return out
    except RuntimeError:
        pass
    for i in todo:
        try:
            out[i] = decode_jpeg(datas[i], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            try:
                out[i] = decode_rgb(datas[i], limit).to(device)
            except CorruptImage:
                out[i] = None
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
