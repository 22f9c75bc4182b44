"""Reading is bounded: files larger than any image could be are skipped unread, over-long paths and names that are
not UTF-8 are skipped with a reason, `prepare --json` stays valid JSON, and a write that fails in prepare's worker
pool is one sentence with no temporary files left. Decoding and encoding go through torchcodec, with the pixels
and bytes torchvision's deprecated codecs gave, and print no deprecation warning."""
import errno
import io
import json
import os
import resource
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from twogpu_alexnet.cli import main
from twogpu_alexnet.data import decode
from twogpu_alexnet.data.folders import list_split
from twogpu_alexnet.data.store import prepare_store
from twogpu_alexnet.errors import UserError


def _png(h=8, w=8, seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(h=8, w=8, seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_a_sparse_multi_gigabyte_file_is_skipped_unread(tmp_path, data_write_images):
    data_write_images(tmp_path / "src", {"a/ok.png": _png(), "b/ok.png": _png(seed=1)})
    with open(tmp_path / "src" / "a" / "huge.JPEG", "wb") as f:
        f.truncate(3 << 30)                                        # 3 GiB of holes: costs no disk
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    result = prepare_store(tmp_path / "src", tmp_path / "store", size=8, workers=1)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before          # KiB
    assert result["written"] == 2 and time.perf_counter() - start < 30 and grown < 512 * 1024
    (skip,) = result["skipped"]
    assert skip["path"].endswith("huge.JPEG") and "more than any image under the pixel limit" in skip["reason"]


def test_a_small_header_in_front_of_a_large_file_is_skipped_unread(tmp_path):
    path = tmp_path / "padded.jpg"
    with open(path, "wb") as f:
        f.write(_jpeg(8, 8))                                       # an 8 x 8 JPEG ...
        f.truncate(decode.METADATA_BYTES + (4 << 20))             # ... followed by 20 MiB nothing
    with pytest.raises(decode.CorruptImage, match="more than an image of 64 pixels"):
        decode.read_bytes(path)
    with open(path, "wb") as f:
        f.write(b"not an image at all")
        f.truncate(decode.METADATA_BYTES + 1)
    with pytest.raises(decode.CorruptImage, match="not an image"):
        decode.read_bytes(path)
    small = tmp_path / "small.png"
    small.write_bytes(_png())
    assert torch.equal(decode.read_bytes(small), torch.frombuffer(bytearray(_png()), dtype=torch.uint8))


def test_names_that_are_not_utf8_and_paths_over_path_max_are_skipped_with_a_reason(tmp_path, data_write_images,
                                                                                    capsys):
    src = tmp_path / "src"
    data_write_images(src, {"a/ok.png": _png(), "b/ok.png": _png(seed=1)})
    with open(os.path.join(os.fsencode(src / "a"), b"caf\xe9.png"), "wb") as f:      # Latin-1 bytes: not UTF-8
        f.write(_png(seed=2))
    os.mkdir(os.path.join(os.fsencode(src), b"\xff\xfe-class"))
    # a folder chain deeper than PATH_MAX (made relative to an open folder: the full path is too long to use)
    fd = os.open(src / "b", os.O_RDONLY)
    for _ in range(4200 // 250 + 1):
        os.mkdir("d" * 250, dir_fd=fd)
        fd2 = os.open("d" * 250, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = fd2
    with os.fdopen(os.open("deep.png", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as f:
        f.write(_png(seed=3))
    os.close(fd)

    listing = list_split(src)
    assert listing.files == ["a/ok.png", "b/ok.png"]
    reasons = {s["path"].rsplit("/", 1)[-1][:10]: s["reason"] for s in listing.skipped}
    assert "not valid UTF-8" in reasons["caf\udce9.png"] and "not valid UTF-8" in reasons["\udcff\udcfe-class"]
    assert any("longer than this system's limit" in r for r in reasons.values())

    assert main(["prepare", "--data", str(src), "--out", str(tmp_path / "store"), "--size", "8", "--workers", "1",
                 "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out)                                       # valid JSON, stray bytes escaped as \udcXX
    assert out.isascii() and result["written"] == 2 and len(result["skipped"]) == 3
    assert any(s["path"].endswith("caf\udce9.png") for s in result["skipped"])
    assert main(["prepare", "--data", str(src), "--out", str(tmp_path / "store"), "--size", "8"]) == 0
    assert "caf\\udce9.png: the name is not valid UTF-8" in capsys.readouterr().out


def test_a_worker_that_cannot_write_is_one_sentence_and_leaves_no_temporary_files(tmp_path, data_write_images,
                                                                                   monkeypatch):
    rng = np.random.default_rng(0)
    data_write_images(tmp_path / "src", {f"{c}/{i}.png": rng.integers(0, 255, (8, 8, 3)) for c in "ab"
                                         for i in range(4)})
    from twogpu_alexnet.data import store as store_module

    real = store_module._JpegShard.add

    def full_disk(self, img):
        if self.position > 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, img)

    monkeypatch.setattr(store_module._JpegShard, "add", full_disk)
    for workers in (1, 2):
        out = tmp_path / f"store{workers}"
        with pytest.raises(UserError, match=r"No space left on device|the disk is full"):
            prepare_store(tmp_path / "src", out, size=8, workers=workers, chunk_size=2)
        assert not [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.setattr(store_module._JpegShard, "add", real)
    assert prepare_store(tmp_path / "src", tmp_path / "store2", size=8, workers=2, chunk_size=2)["written"] == 8


def test_a_worker_that_dies_is_one_sentence(tmp_path, data_write_images, monkeypatch):
    rng = np.random.default_rng(0)
    data_write_images(tmp_path / "src", {f"{c}/{i}.png": rng.integers(0, 255, (8, 8, 3)) for c in "ab"
                                         for i in range(4)})
    from twogpu_alexnet.data import store as store_module

    def killed(self, img):        # as a SIGBUS on a mapped page of a full disk, or the OOM killer, would end it
        os._exit(1)

    monkeypatch.setattr(store_module._JpegShard, "add", killed)
    with pytest.raises(UserError, match="a worker writing the store .* died"):
        prepare_store(tmp_path / "src", tmp_path / "store", size=8, workers=2, chunk_size=2)
    assert not [p.name for p in (tmp_path / "store").rglob("*") if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------ the codecs

def _photo_like(h, w, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([128 + 90 * np.sin(7 * x + seed), 128 + 90 * np.cos(5 * y), 255 * x * y], -1)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def _torchvision_codecs():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchvision.io import ImageReadMode, decode_image, encode_jpeg
    return ImageReadMode, decode_image, encode_jpeg


@pytest.mark.parametrize("fmt,mode", [("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGB"),
                                      ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "LA")])
def test_decoding_gives_the_pixels_torchvision_gave(fmt, mode):
    """The JPEG decoder is libjpeg-turbo in both: within JPEG decoder tolerance means here: identical."""
    ImageReadMode, tv_decode, _ = _torchvision_codecs()
    for seed, (h, w) in enumerate([(375, 500), (31, 17)]):
        buf = io.BytesIO()
        Image.fromarray(_photo_like(h, w, seed)).convert(mode).save(buf, fmt, **({"quality": 90} if fmt == "JPEG"
                                                                                  else {}))
        data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            before = tv_decode(data, mode=ImageReadMode.RGB)
        assert torch.equal(decode.decode_rgb(data), before)


def test_encoding_gives_the_bytes_torchvision_gave():
    _, _, tv_encode = _torchvision_codecs()
    img = torch.from_numpy(_photo_like(256, 256, 0)).permute(2, 0, 1).contiguous()
    for quality in (50, 90, 95):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            before = tv_encode(img, quality=quality)
        assert torch.equal(decode.encode_jpeg(img, quality), before)
        assert torch.equal(decode.decode_jpeg(decode.encode_jpeg(img, quality)),
                           decode.decode_rgb(decode.encode_jpeg(img, quality)))


def test_our_codecs_and_a_prepare_raise_no_warning(tmp_path, data_write_images):
    data_write_images(tmp_path / "src", {"a/x.jpg": _photo_like(40, 50, 1), "b/y.png": _photo_like(30, 20, 2)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = decode.decode_rgb(decode.read_bytes(tmp_path / "src" / "a" / "x.jpg"))
        decode.decode_jpeg(decode.encode_jpeg(img, 90))
        decode.decode_jpeg_batch([decode.encode_jpeg(img, 90)], "cpu")
        prepare_store(tmp_path / "src", tmp_path / "store", size=16, workers=1)
        from twogpu_alexnet.data.split import StoreSource

        StoreSource(tmp_path / "store").image(0)


def test_bench_decoder_rows_measure_the_same_pixels(tmp_path, data_write_images):
    from twogpu_alexnet.bench_data import decoder_rates

    data_write_images(tmp_path / "src", {f"{c}/{i}.jpg": _photo_like(30, 40, i) for c in "ab" for i in range(2)})
    result = decoder_rates(tmp_path / "src", images=4, seconds=0.02)
    assert result["images"] == 4 and (result["mean_height"], result["mean_width"]) == (30, 40)
    for name in ("decode_rgb", "torchcodec", "torchvision_io", "pil"):
        assert result[f"{name}_decode_img_s"] > 0
    assert result["torchcodec_max_diff"] == result["torchvision_io_max_diff"] == 0
    assert result["pil_max_diff"] <= 2          # PIL's libjpeg may round its colour conversion differently


def test_bench_decoder_leaves_out_unreadable_files(tmp_path, data_write_images):
    from twogpu_alexnet.bench_data import decoder_rates

    data_write_images(tmp_path / "src", {f"a/{i}.jpg": _photo_like(30, 40, i) for i in range(2)})
    (tmp_path / "src" / "a" / "empty.jpg").write_bytes(b"")
    assert decoder_rates(tmp_path / "src", images=3, seconds=0.02)["images"] == 2
    (tmp_path / "only" / "a").mkdir(parents=True)
    (tmp_path / "only" / "a" / "empty.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="none of the images chosen from .* could be decoded"):
        decoder_rates(tmp_path / "only", images=3, seconds=0.02)
