"""The one decoder: any bit depth and colour mode becomes 8-bit RGB (or a skip with a reason), and the
header's pixel count is checked before anything is decoded."""
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from twogpu_alexnet.data.decode import (
    MAX_PIXELS,
    MAX_PIXELS_ENV,
    CorruptImage,
    decode_jpeg_batch,
    decode_rgb,
    pixel_limit,
)
from twogpu_alexnet.errors import UserError


def _tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _encoded(image: Image.Image, fmt: str, **kw) -> torch.Tensor:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return _tensor(buf.getvalue())


def _png(width, height, bit_depth, color_type, rows: bytes) -> bytes:
    """A PNG written by hand (PIL cannot write 16-bit colour): ``rows`` is the unfiltered pixel data."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    stride = len(rows) // height
    raw = b"".join(b"\x00" + rows[y * stride:(y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _values16(h, w, c, seed=0):
    return np.random.default_rng(seed).integers(0, 65536, size=(h, w, c), dtype=np.uint16)


@pytest.mark.parametrize("color_type,channels", [(0, 1), (2, 3), (4, 2), (6, 4)])
def test_16_bit_pngs_become_8_bit_rgb(color_type, channels):
    values = _values16(6, 5, channels)
    data = _tensor(_png(5, 6, 16, color_type, values.astype(">u2").tobytes()))
    img = decode_rgb(data)
    assert img.dtype == torch.uint8 and img.shape == (3, 6, 5)
    high = torch.from_numpy((values >> 8).astype(np.uint8)).permute(2, 0, 1)
    expected = high[:1].expand(3, -1, -1) if channels in (1, 2) else high[:3]
    assert torch.equal(img, expected)


def test_16_bit_gray_png_written_by_pil_keeps_its_range():
    values = np.array([[0, 257, 1000, 30000, 65535]], dtype=np.uint16)
    img = decode_rgb(_encoded(Image.fromarray(values), "PNG"))
    assert img.dtype == torch.uint8
    assert img[0, 0].tolist() == [0, 1, 3, 117, 255] and torch.equal(img[0], img[2])


def test_16_bit_tiff_is_scaled_not_clipped():
    values = np.array([[0, 257, 1000, 30000, 65535]], dtype=np.uint16)
    img = decode_rgb(_encoded(Image.fromarray(values), "TIFF"))    # PIL mode I;16
    assert img[:, 0].tolist() == [[0, 1, 3, 117, 255]] * 3


def test_float_tiff_is_skipped_with_a_reason():
    with pytest.raises(CorruptImage, match="floating-point"):
        decode_rgb(_encoded(Image.fromarray(np.ones((4, 4), np.float32)), "TIFF"))


@pytest.mark.parametrize("mode,fmt", [("P", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"), ("CMYK", "TIFF"), ("L", "BMP"),
                                      ("1", "PNG"), ("P", "GIF"), ("RGBA", "WEBP")])
def test_8_bit_modes_become_the_rgb_pil_gives(mode, fmt):
    rng = np.random.default_rng(1)
    base = Image.fromarray(rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)).convert(mode)
    kw = {"lossless": True} if fmt == "WEBP" else {}
    data = _encoded(base, fmt, **kw)
    img = decode_rgb(data)
    expected = np.asarray(Image.open(io.BytesIO(data.numpy().tobytes())).convert("RGB"))
    assert img.dtype == torch.uint8 and img.shape == (3, 7, 9)
    assert torch.equal(img, torch.from_numpy(expected.copy()).permute(2, 0, 1))


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    img = decode_rgb(_tensor(buf.getvalue()))
    assert img.shape == (3, 6, 8) and img[:, 0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"])
def test_images_above_the_pixel_limit_are_skipped_before_decoding(fmt, monkeypatch):
    data = _encoded(Image.new("RGB", (40, 30), (10, 20, 30)), fmt)
    assert decode_rgb(data).shape == (3, 30, 40)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1199")
    with pytest.raises(CorruptImage, match=r"40 x 30 = 1,200 pixels is above the limit of 1,199"):
        decode_rgb(data)
    assert decode_rgb(data, max_pixels=1200).shape == (3, 30, 40)


def test_a_bomb_header_is_refused_without_allocating():
    # 30000 x 30000 announced, 8 bytes of pixel data: decoding would allocate 2.7 GB
    data = _tensor(_png(30000, 30000, 8, 2, b"\x00" * 8 * 30000)[:200])
    with pytest.raises(CorruptImage, match="900,000,000 pixels is above the limit"):
        decode_rgb(data)
    jpeg = bytearray(_encoded(Image.new("RGB", (16, 16)), "JPEG").numpy().tobytes())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 30000, 30000)
    with pytest.raises(CorruptImage, match="above the limit"):
        decode_rgb(_tensor(bytes(jpeg)))
    assert decode_jpeg_batch([_tensor(bytes(jpeg))], "cpu") == [None]


def test_jpeg_batch_skips_images_above_the_limit(monkeypatch):
    small = _encoded(Image.new("RGB", (10, 10), (200, 0, 0)), "JPEG")
    big = _encoded(Image.new("RGB", (50, 50), (0, 200, 0)), "JPEG")
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    out = decode_jpeg_batch([small, big, small], "cpu")
    assert out[1] is None and out[0].shape == (3, 10, 10) and out[2].shape == (3, 10, 10)


def test_pixel_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    assert pixel_limit() == MAX_PIXELS
    monkeypatch.setenv(MAX_PIXELS_ENV, "300000000")
    assert pixel_limit() == 300_000_000
    for bad in ("lots", "-5", "0", "1.5"):
        monkeypatch.setenv(MAX_PIXELS_ENV, bad)
        with pytest.raises(UserError, match=MAX_PIXELS_ENV):
            pixel_limit()


def test_broken_files_give_a_reason():
    with pytest.raises(CorruptImage, match="not an image"):
        decode_rgb(_tensor(b"not an image at all"))
    with pytest.raises(CorruptImage, match="."):
        decode_rgb(_tensor(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30))


def test_16_bit_images_in_class_folders_train_and_validate(tmp_path, data_write_images):
    from twogpu_alexnet.data import DataOptions, open_split
    from twogpu_alexnet.data.loader import make_loader

    deep = Image.fromarray(np.full((40, 40), 50000, np.uint16))             # high byte 195
    plain = np.full((40, 40, 3), 195, np.uint8)
    for split in ("train", "val"):
        data_write_images(tmp_path / split, {"a/deep.png": deep, "b/plain.png": plain})
    train = open_split("imagefolder", tmp_path, "train", DataOptions(input_size=32))
    assert train.stats.channel_mean.tolist() == [195.0, 195.0, 195.0]      # not 50000
    val = open_split("imagefolder", tmp_path, "val", DataOptions(input_size=32), train=False)
    images, labels, skipped = next(iter(make_loader(val, batch_size=2, shuffle=False, workers=0)))
    assert skipped == 0 and labels.tolist() == [0, 1] and torch.equal(images[0], images[1])


FALLBACK_SCRIPT = r"""
import builtins, sys, warnings
real = builtins.__import__
def no_torchcodec(name, *args, **kwargs):
    if name.startswith("torchcodec"):
        raise ImportError("torchcodec is not installed")
    return real(name, *args, **kwargs)
builtins.__import__ = no_torchcodec
warnings.simplefilter("error")                 # our own calls print no deprecation notice
import torch
from twogpu_alexnet.data import decode
assert decode.CODEC == "torchvision.io", decode.CODEC
data = torch.load(sys.argv[1])
out = {k: decode.decode_rgb(v, decode.pixel_limit()) for k, v in data["files"].items()}
out["encoded"] = decode.encode_jpeg(data["image"], 90)
out["store_record"] = decode.decode_jpeg(out["encoded"])
torch.save(out, sys.argv[2])
"""


def test_without_torchcodec_the_torchvision_codecs_give_the_same_pixels_and_bytes(tmp_path):
    """A machine with only torch and torchvision (a GPU image, say) decodes and encodes through
    torchvision.io: the same libjpeg-turbo and libpng, so the same pixels and the same JPEG bytes."""
    import os
    import subprocess
    import sys

    from twogpu_alexnet.data.decode import CODEC, decode_jpeg, decode_rgb, encode_jpeg, pixel_limit

    assert CODEC == "torchcodec"
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    files = {"jpeg": _encoded(rgb, "JPEG", quality=85), "png": _encoded(rgb, "PNG"),
             "png16": _tensor(_png(5, 6, 16, 2, _values16(6, 5, 3).astype(">u2").tobytes()))}
    image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()
    torch.save({"files": files, "image": image}, tmp_path / "in.pt")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                   check=True, env=env, timeout=120)
    out = torch.load(tmp_path / "out.pt")
    for name, data in files.items():
        assert torch.equal(out[name], decode_rgb(data, pixel_limit())), name
    assert torch.equal(out["encoded"], encode_jpeg(image, 90))
    assert torch.equal(out["store_record"], decode_jpeg(encode_jpeg(image, 90)))
