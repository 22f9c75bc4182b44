"""Bytes to 8-bit RGB pixels and back, and the paper's one-time geometry (shorter side to S, centre crop S x S).

Every image the package reads or writes goes through this module: :func:`read_bytes` (a file's bytes,
bounded), :func:`decode_rgb` (any image), :func:`decode_jpeg` (a store's own JPEGs),
:func:`decode_jpeg_batch` (a batch of them on a device) and :func:`encode_jpeg`. The codecs are
torchcodec's (libjpeg-turbo, libpng; nvJPEG on CUDA), which replace torchvision's deprecated image I/O
and give the same pixels and the same bytes.

1. A file is never read whole before its size is checked: a file larger than any image under the pixel
   limit could be is skipped unread, and a large one is read whole only when its header announces an
   image that could need that many bytes (:func:`read_bytes`).
2. The header's width x height is checked before any pixel is decoded: an image above
   :func:`pixel_limit` (default :data:`MAX_PIXELS`, raised with the environment variable
   ``TWOGPU_ALEXNET_MAX_PIXELS``) is skipped, so a small "decompression bomb" file cannot take
   gigabytes of memory. JPEG and PNG headers are read here (a few bytes; PIL's lazy ``Image.open``
   reads the same two numbers 30 times slower); other formats' by PIL's lazy open.
3. torchcodec's decoders detect the real format from the bytes (a PNG behind a ``.JPEG`` name decodes
   as PNG) and turn grayscale, CMYK, palette and alpha images into RGB. 16-bit PNGs are decoded as they
   are and scaled to 8 bits here (65535 -> 255).
4. What is not JPEG or PNG (BMP, TIFF, PPM, WebP, GIF -- first frame only) goes to PIL, with 16-bit
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

from ..errors import UserError

try:                # torchcodec: the maintained codecs (a dependency; absent on machines with only torch/torchvision)
    from torchcodec.decoders import decode_jpeg as _codec_decode_jpeg
    from torchcodec.decoders import decode_png as _codec_decode_png
    from torchcodec.encoders import JpegEncoder
    CODEC = "torchcodec"
except (ImportError, OSError, RuntimeError):       # missing, or its native library does not load
    CODEC = "torchvision.io"

MAX_PIXELS = 100_000_000           # width x height; a 100-megapixel photo decodes to 300 MB of RGB
MAX_PIXELS_ENV = "TWOGPU_ALEXNET_MAX_PIXELS"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8"
BYTES_PER_PIXEL = 8                # 16-bit RGBA stored uncompressed: more than any encoding of a pixel needs
METADATA_BYTES = 16 << 20          # room for EXIF, ICC profiles, thumbnails; also how much is read to find a header


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


def max_file_bytes(pixels: int) -> int:
    """The most bytes an image of ``pixels`` pixels can take on disk (uncompressed 16-bit RGBA plus metadata)."""
    return pixels * BYTES_PER_PIXEL + METADATA_BYTES


def read_bytes(path, max_pixels: int | None = None) -> torch.Tensor:
    """The file's bytes as a 1-D uint8 tensor (what the decoders take), read only if an image could be that big.

    A file larger than any image under the pixel limit could be is refused unread; one larger than
    :data:`METADATA_BYTES` has its first :data:`METADATA_BYTES` read first, and is refused when its header
    announces no image, or an image too small to need that many bytes. Raises CorruptImage (with the
    reason) or OSError (unreadable).
    """
    limit = pixel_limit() if max_pixels is None else max_pixels
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_file_bytes(limit):
            raise CorruptImage(
                f"{_mb(size)} is more than any image under the pixel limit of {limit:,} can take "
                f"({_mb(max_file_bytes(limit))}); not read"
            )
        data = bytearray(f.read(min(size, METADATA_BYTES)) if size > METADATA_BYTES else f.read())
        if size > METADATA_BYTES:
            pixels = _announced_pixels(memoryview(data), f, limit)
            if size > max_file_bytes(pixels):
                raise CorruptImage(
                    f"{_mb(size)} is more than an image of {pixels:,} pixels (as its header says) can take; not read"
                )
            data += f.read()
    if not data:
        raise CorruptImage("empty file")
    return torch.frombuffer(data, dtype=torch.uint8)


def _mb(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"


def _announced_pixels(head: memoryview, f, limit: int) -> int:
    """width x height from the header at the start of a large file (``head``: its first bytes; ``f``: the file,
    for PIL's lazy open of other formats); CorruptImage when it announces no image or one above ``limit``."""
    size = _header_size(head)
    if size is None:
        from PIL import Image, UnidentifiedImageError

        f.seek(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)    # the limit is checked below
                with Image.open(f) as im:
                    size = im.size
        except UnidentifiedImageError:
            raise CorruptImage("not an image (unrecognised file format); not read") from None
        except Exception as exc:  # PIL raises many kinds on a broken header
            raise CorruptImage(f"no readable image header ({type(exc).__name__}); not read") from None
        finally:
            f.seek(len(head))
    _check_pixels(size, limit)
    return size[0] * size[1]


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
    # the codecs prefix C++ messages with "function, file:line, "; keep the human part
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


def _decode_codec(data: torch.Tensor, buf: memoryview) -> torch.Tensor:
    """A JPEG or PNG (known from its header) decoded by torchcodec's decoder for that format."""
    if buf[:2] == JPEG_SIGNATURE:
        return _codec_decode_jpeg(data, mode="RGB")
    if len(buf) > 24 and buf[24] == 16:
        # 16-bit PNG: decoded as stored and brought to 8 bits by to_rgb8 (the high byte)
        return to_rgb8(_codec_decode_png(data, mode="UNCHANGED", output_dtype="auto"))
    return to_rgb8(_codec_decode_png(data, mode="RGB"))


def decode_jpeg(data: torch.Tensor) -> torch.Tensor:
    """A JPEG (a store's own records) to uint8 RGB 3 x H x W on the CPU, or CorruptImage with the reason."""
    try:
        return _codec_decode_jpeg(data, mode="RGB")
    except (RuntimeError, ValueError) as exc:
        raise CorruptImage(_reason(exc)) from None


def encode_jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    """uint8 RGB 3 x H x W to JPEG bytes (1-D uint8 tensor) at ``quality`` (1..100)."""
    return JpegEncoder(img.contiguous()).to_tensor(quality=quality)


if CODEC == "torchvision.io":   # the same libjpeg-turbo/libpng and the same pixels; its deprecation notice hidden
    import torchvision.io as _tvio

    def _quiet(fn, *args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return fn(*args, **kwargs)

    def _codec_decode_jpeg(data, mode="RGB", device="cpu"):
        return _quiet(_tvio.decode_jpeg, data, mode=_tvio.ImageReadMode.RGB, device=device)

    def _codec_decode_png(data, mode="RGB", output_dtype=None):
        read_mode = _tvio.ImageReadMode.RGB if mode == "RGB" else _tvio.ImageReadMode.UNCHANGED
        return _quiet(_tvio.decode_png, data, mode=read_mode)

    class JpegEncoder:
        def __init__(self, img):
            self.img = img

        def to_tensor(self, quality):
            return _quiet(_tvio.encode_jpeg, self.img, quality=quality)


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
            return _decode_codec(data, buf)
        except (RuntimeError, ValueError) as exc:
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
        decoded = _codec_decode_jpeg([datas[i] for i in todo], mode="RGB", device=device) if todo else []
        for i, img in zip(todo, decoded, strict=True):
            out[i] = img
        return out
    except (RuntimeError, ValueError):
        pass
    for i in todo:
        try:
            out[i] = _codec_decode_jpeg(datas[i], mode="RGB", device=device)
        except (RuntimeError, ValueError):
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
